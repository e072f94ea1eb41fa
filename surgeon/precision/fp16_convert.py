"""surgeon's float16 converter: float32 computed in float16, except a block list of nodes.

:func:`convert_float16` returns a new ModelProto in which every node that can run in
float16 does, and every other node runs in float32 exactly as before, with a Cast at each
float16 <-> float32 boundary. What stays float32, and why (each reason is reported):

* the nodes of the caller's block list;
* nodes whose ONNX schema (at the model's opset) has no float16 for the input, nodes of
  other domains (custom ops), nodes holding If/Loop/Scan bodies (the bodies and the
  values they read from the outer graph stay float32);
* nodes reading a weight, or Constants holding a value, beyond float16's range (kept
  rather than clipped: a clipped weight is a different model);
* nodes whose tensor types shape inference cannot tell.

The graph's inputs and outputs keep their float32 types (Casts at the edges); a tensor the
outputs or a subgraph needs in float32 keeps its name in float32, and its float16 twin is
renamed. Casts already in the model are never re-typed: a Cast's output keeps the type
its ``to`` says (re-typing them is what makes onnxconverter-common's magika conversion fail
to load with "Type (tensor(float16)) of output arg ... does not match"). Initializers that
old IR models also list as graph inputs are taken out of the inputs (and the IR version
raised to 4, the first that allows it), so they are no longer inputs a caller may override
with float32 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from surgeon.precision.pairing import holds_subgraph, node_label

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_F16 = "tensor(float16)"
# Inputs that stay float32 although the schema allows float16: Resize's roi (onnxruntime's
# Resize reads it as float whatever the data's type).
_FLOAT32_INPUTS = {("Resize", 1)}


@dataclass
class Conversion:
    """A float16 conversion and what it kept in float32.

    Attributes:
        proto: The converted model.
        float16_nodes: Labels of the nodes that now run in float16.
        kept: Label -> why the node stays float32 (only nodes with float tensors).
        casts: How many Casts were inserted.
    """

    proto: onnx.ModelProto
    float16_nodes: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    casts: int = 0


def fits_float16(value: np.ndarray) -> bool:
    """Whether every finite value of ``value`` is finite in float16 (Inf/NaN stay what
    they are; an overflow to Inf is what must not happen)."""
    finite = value[np.isfinite(value)]
    return finite.size == 0 or float(np.abs(finite).max()) <= FLOAT16_MAX


def known_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor onnx's shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        inferred = proto  # custom ops or odd models: what the file declares
    g = inferred.graph
    types = {}
    for v in [*g.input, *g.value_info, *g.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return last if last is not None and last.option == variadic else None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
            return numpy_helper.to_array(a.t)
        if node.op_type == "Constant" and a.name == "value_float":
            return np.array(a.f, np.float32)
        if node.op_type == "Constant" and a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
    return None


class _Plan:
    """Which inputs and outputs of each node turn float16, or why the node stays float32."""

    def __init__(self, proto: onnx.ModelProto, block: set[str]):
        self.types = known_types(proto)
        self.opset = _opset(proto)
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.block = block
        self.kept: dict[str, str] = {}
        # node index -> (converted input indexes, converted output indexes)
        self.converted: dict[int, tuple[set[int], set[int]]] = {}
        for i, node in enumerate(proto.graph.node):
            self._decide(i, node)

    def _float_slots(self, names) -> list[int]:
        return [k for k, n in enumerate(names) if n and self.types.get(n) == FLOAT]

    def _decide(self, i: int, node: onnx.NodeProto) -> None:
        label = node_label(node)
        f_in, f_out = self._float_slots(node.input), self._float_slots(node.output)
        if node.op_type in ("Constant", "ConstantOfShape"):
            value = _constant_value(node)
            if value is None:
                return
            if label in self.block:
                self.kept[label] = "block list"
            elif not fits_float16(value):
                self.kept[label] = "value beyond float16 range"
            else:
                self.converted[i] = (set(), {0})
            return
        if not f_in and not f_out:
            return
        reason = self._blocked(node, label)
        if reason is None:
            reason, ins, outs = self._by_schema(node, f_in, f_out)
        if reason is not None:
            self.kept[label] = reason
        elif ins:
            self.converted[i] = (ins, outs)

    def _blocked(self, node: onnx.NodeProto, label: str) -> str | None:
        if label in self.block:
            return "block list"
        if node.domain not in ("", "ai.onnx"):
            return f"custom domain `{node.domain}`"
        if holds_subgraph(node):
            return f"{node.op_type} body kept float32"
        unknown = [n for n in [*node.input, *node.output] if n and n not in self.types]
        if unknown:
            return f"type of `{unknown[0]}` unknown"
        for name in node.input:
            init = self.inits.get(name)
            if init is not None and init.data_type == FLOAT:
                if not fits_float16(numpy_helper.to_array(init)):
                    return f"weight `{name}` beyond float16 range"
        return None

    def _by_schema(self, node, f_in, f_out):
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except onnx.defs.SchemaError:
            return f"no ONNX schema for {node.op_type} at opset {self.opset}", set(), set()
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        ins, variables = set(), set()
        for k in f_in:
            param = _formal(schema.inputs, k)
            if (
                param is None
                or param.type_str not in allowed
                or (node.op_type, k) in _FLOAT32_INPUTS
            ):
                continue  # a fixed tensor(float) input (Resize's scales) stays float32
            if _F16 not in allowed[param.type_str]:
                where = f"{node.op_type}-{schema.since_version}"
                return f"no float16 for input {k} in the ONNX schema of {where}", set(), set()
            ins.add(k)
            variables.add(param.type_str)
        outs = set()
        for k in f_out:
            param = _formal(schema.outputs, k)
            if param is not None and param.type_str in variables:
                outs.add(k)
        return None, ins, outs


class _Rewriter:
    """Builds the converted graph: twins of tensors in the other precision, made once."""

    def __init__(self, proto: onnx.ModelProto, plan: _Plan):
        self.g = proto.graph
        self.plan = plan
        self.used = {n for node in self.g.node for n in [*node.input, *node.output]}
        self.used |= {v.name for v in [*self.g.input, *self.g.output]} | set(plan.inits)
        self.f16: dict[str, str] = {}  # tensor -> name of its float16 version
        self.f32: dict[str, str] = {}  # tensor -> name of its float32 version
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.casts = 0
        self.float32_names = {v.name for v in self.g.output} | outer_scope_reads(self.g)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def cast(self, src: str, dst_base: str, to: int) -> str:
        dst = self.fresh(dst_base)
        self.nodes.append(helper.make_node("Cast", [src], [dst], name=dst, to=to))
        self.casts += 1
        return dst

    def as_float16(self, name: str) -> str:
        if name not in self.f16:
            init = self.plan.inits.get(name)
            if init is not None:
                value = numpy_helper.to_array(init).astype(np.float16)
                twin = self.fresh(f"{name}__fp16")
                self.new_inits.append(numpy_helper.from_array(value, twin))
                self.f16[name] = twin
            else:
                self.f16[name] = self.cast(self.f32.get(name, name), f"{name}__to_fp16", FLOAT16)
        return self.f16[name]

    def as_float32(self, name: str) -> str:
        if name in self.f16 and name not in self.f32:
            self.f32[name] = self.cast(self.f16[name], f"{name}__to_fp32", FLOAT)
        return self.f32.get(name, name)

    def rewrite(self) -> None:
        for i, node in enumerate(list(self.g.node)):
            ins, outs = self.plan.converted.get(i, (set(), set()))
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for k, name in enumerate(node.input):
                if not name or self.plan.types.get(name) != FLOAT:
                    continue
                new.input[k] = self.as_float16(name) if k in ins else self.as_float32(name)
            renamed = []
            for k in outs:
                name = node.output[k]
                if name in self.float32_names:  # outputs and subgraph reads stay float32
                    twin = self.fresh(f"{name}__fp16")
                    new.output[k] = twin
                    self.f16[name] = twin
                    renamed.append(name)
                else:
                    self.f16[name] = name
            if i in self.plan.converted and node.op_type in ("Constant", "ConstantOfShape"):
                _to_float16_attributes(new)
            self.nodes.append(new)
            for name in renamed:
                self.f32[name] = name
                self.nodes.append(
                    helper.make_node(
                        "Cast", [self.f16[name]], [name], name=self.fresh(f"{name}__cast"), to=FLOAT
                    )
                )
                self.casts += 1


def _to_float16_attributes(node: onnx.NodeProto) -> None:
    value = _constant_value(node)
    keep = [a for a in node.attribute if a.name not in ("value", "value_float", "value_floats")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(
        helper.make_attribute("value", numpy_helper.from_array(value.astype(np.float16)))
    )


def outer_scope_reads(graph: onnx.GraphProto) -> set[str]:
    """Names the If/Loop/Scan bodies of ``graph`` read from outside themselves."""
    reads: set[str] = set()

    def walk(g: onnx.GraphProto, defined: set[str]) -> None:
        local = set(defined) | {v.name for v in g.input} | {t.name for t in g.initializer}
        for node in g.node:
            reads.update(n for n in node.input if n and n not in local)
            for a in node.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sub, local)
            local.update(node.output)
        reads.update(v.name for v in g.output if v.name not in local)

    for node in graph.node:
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                walk(sub, set())
    return reads


def convert_float16(proto: onnx.ModelProto, block=()) -> Conversion:
    """A float16 copy of ``proto`` with the nodes of ``block`` (node labels: names, or
    ``Op->first output`` for unnamed nodes) and the nodes that cannot run in float16 kept
    in float32. ``proto`` is not modified.

    Returns:
        The :class:`Conversion`: the new proto, the nodes now in float16 and every node
        kept in float32 with its reason.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    inits = {t.name for t in g.initializer}
    if any(v.name in inits for v in g.input):
        kept_inputs = [v for v in g.input if v.name not in inits]
        del g.input[:]
        g.input.extend(kept_inputs)
        out.ir_version = max(out.ir_version, 4)
    plan = _Plan(out, set(block))
    rewriter = _Rewriter(out, plan)
    rewriter.rewrite()
    del g.node[:]
    g.node.extend(rewriter.nodes)
    g.initializer.extend(rewriter.new_inits)
    _drop_unused_initializers(g)
    for v in g.value_info:  # declared types must follow, or onnxruntime refuses the model
        if rewriter.f16.get(v.name) == v.name and v.type.HasField("tensor_type"):
            v.type.tensor_type.elem_type = FLOAT16
    float16_nodes = [node_label(proto.graph.node[i]) for i in sorted(plan.converted)]
    return Conversion(out, float16_nodes, plan.kept, rewriter.casts)


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    read = {n for node in g.node for n in node.input} | outer_scope_reads(g)
    read |= {v.name for v in g.output}
    kept = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
