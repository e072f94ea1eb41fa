"""Node-at-a-time opset conversion: what each node needs to live at another opset.

onnx's version converter walks the whole model one opset step at a time and stops at
the first node whose op changed at a step and has no adapter for it. Going down, most
steps have none, even where the newer version only widened the types (Relu 13 and 14,
Flatten 13, Gather 13 added bfloat16 or integer types), so an opset-17 CNN does not
convert to 11. Here each node is judged on its own:

- ``keep``: the op's schema is the same at both opsets, or the newer one differs only in
  ways this node does not touch (:func:`same_meaning`), so the node is valid as it is;
- ``adapt``: a one-node model of it converts with onnx's converter (its constant inputs
  travel along, so an ``axes`` input can become an attribute); the converted nodes
  replace it (:func:`splice`);
- ``fill``: the older op requires an input the node omits, and takes an empty tensor
  there to mean "not given" (:data:`EMPTY_MEANS_UNSET`: Resize's ``roi`` and ``scales``
  before opset 13, which exporters leave out); the node is kept with empty constants
  in those places (:func:`fill_omitted_inputs`);
- ``transpose``: a Softmax, LogSoftmax or Hardmax on another axis than the last, going
  below 13 (where these ops flatten every axis from ``axis`` on into one, and onnx's
  adapter keeps the axis as it is, which changes the values): the axis is transposed to
  the last place and back (:func:`last_axis_rewrite`);
- ``block``: none of these; the reason and what it would need are kept for the error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from surgeon.edits.opsets import DEFAULT_DOMAINS

# Constant inputs up to this size travel into a probe as values: adapters read small
# ones (axes, scales, pads, split sizes); larger ones (weights) travel as typed inputs,
# so nodes that differ only in their weights share one probe.
CONSTANT_PROBE_ELEMENTS = 64

# (op, input) pairs an older version requires and takes as an empty tensor meaning "not
# given", with the element type of that empty tensor. Resize 11/12: roi "only takes
# effect when coordinate_transformation_mode is tf_crop_and_resize", and scales "must be
# an empty tensor" when sizes is given; Resize 13 lets a node leave both out, which
# torch's exporter does (Resize(x, "", scales)), and onnx has no adapter down from 13.
EMPTY_MEANS_UNSET = {
    ("Resize", "roi"): onnx.TensorProto.FLOAT,
    ("Resize", "scales"): onnx.TensorProto.FLOAT,
}


def type_string(elem_type: int) -> str:
    """``tensor(float)`` for TensorProto.FLOAT: the spelling of schemas' type constraints."""
    return f"tensor({onnx.TensorProto.DataType.Name(elem_type).lower()})"


def _allowed(schema, type_str: str) -> set[str]:
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}  # a literal type, e.g. tensor(int64)


def _attr_signature(attr) -> tuple:
    return attr.type, attr.required, attr.default_value.SerializeToString()


def _type_misfit(old, formals_old, names, elem_types) -> str | None:
    """The first tensor whose known type ``old`` does not take, as text, or None."""
    for i, name in enumerate(names):
        if not name or not formals_old:
            continue
        old_formal = formals_old[min(i, len(formals_old) - 1)]
        known = elem_types.get(name)
        # An unknown type (inside a subgraph, where shape inference writes none) passes:
        # a type the older op lacks makes onnxruntime refuse the converted model when the
        # verification loads it, so it cannot pass unnoticed.
        if known and type_string(known) not in _allowed(old, old_formal.type_str):
            return f"`{name}` is {type_string(known)}"
    return None


def type_problem(node: onnx.NodeProto, old, elem_types: Mapping[str, int]) -> str | None:
    """Why ``node``'s tensor types do not fit schema ``old``, or None."""
    for formals, names in ((old.inputs, node.input), (old.outputs, node.output)):
        misfit = _type_misfit(old, list(formals), list(names), elem_types)
        if misfit:
            return (
                f"{misfit}, a type {node.op_type} takes only from opset "
                f"{_first_with_type(node.op_type, misfit, old.since_version)}"
            )
    return None


def _first_with_type(op: str, misfit: str, after: int) -> str:
    wanted = misfit.split(" is ")[-1]
    for version in range(after + 1, onnx.defs.onnx_opset_version() + 1):
        schema = onnx.defs.get_schema(op, version, "")
        if any(wanted in c.allowed_type_strs for c in schema.type_constraints):
            return str(schema.since_version)
    return "a later version"


def omitted_required(names, formals_old) -> list[int]:
    """Positions of inputs the older op requires (single, not optional) that the node
    leaves empty or out."""
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    return [
        i
        for i, formal in enumerate(formals_old)
        if formal.option == single and (i >= len(names) or not names[i])
    ]


def _arity_fits(names, formals_new, formals_old) -> bool:
    used = max((i + 1 for i, n in enumerate(names) if n), default=0)
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    if used > len(formals_old) and not (formals_old and formals_old[-1].option == variadic):
        return False
    # The same formal parameter at each position (Split's `split` moved from an
    # attribute to input 1 at opset 13: a node that uses input 1 is not the older op).
    for i in range(min(used, len(formals_old), len(formals_new))):
        if names[i] and formals_new[i].name != formals_old[i].name:
            return False
    return True


def same_meaning(node: onnx.NodeProto, new, old, elem_types: Mapping[str, int]) -> bool:
    """Whether ``node`` (valid under schema ``new``) means the same under ``old``.

    Every attribute the node sets exists in ``old`` with the same type; every attribute
    both versions have keeps its default (Softmax's axis default moved from 1 to -1 at
    13, so a Softmax never qualifies); an attribute only ``new`` has is unset or holds its
    default (ONNX adds attributes whose default is the older behaviour; such a default is
    then dropped, :func:`drop_default_attributes`); ``old`` requires nothing the node
    lacks; the inputs and outputs it uses are the same formal parameters; and each
    input's and output's known type is one ``old`` allows.
    """
    new_attrs, old_attrs = new.attributes, old.attributes
    for a in node.attribute:
        if a.name not in old_attrs:
            if not is_default(a, new_attrs.get(a.name)):
                return False
        elif old_attrs[a.name].type != new_attrs[a.name].type:
            return False
    for name, attr in new_attrs.items():
        if name in old_attrs and _attr_signature(attr)[2] != _attr_signature(old_attrs[name])[2]:
            return False
    set_names = {a.name for a in node.attribute if a.name in old_attrs}
    for name, attr in old_attrs.items():
        if name not in new_attrs and (attr.required or name in set_names):
            return False
        if attr.required and name not in set_names:
            return False
    inputs, outputs = list(node.input), list(node.output)
    if not _arity_fits(inputs, list(new.inputs), list(old.inputs)):
        return False
    if omitted_required(inputs, list(old.inputs)):
        return False  # Resize 13's empty roi is no Resize 11 (see fill_omitted_inputs)
    if not _arity_fits(outputs, list(new.outputs), list(old.outputs)):
        return False
    return type_problem(node, old, elem_types) is None


def fill_omitted_inputs(
    node: onnx.NodeProto, old
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]] | None:
    """``node`` with an empty constant in each input the older op (schema ``old``)
    requires and the node omits, and those constants; None when it omits none, or one
    that an empty tensor does not stand for (not in :data:`EMPTY_MEANS_UNSET`)."""
    formals = list(old.inputs)
    missing = omitted_required(list(node.input), formals)
    if not missing or any(
        (node.op_type, formals[i].name) not in EMPTY_MEANS_UNSET for i in missing
    ):
        return None
    filled = onnx.NodeProto()
    filled.CopyFrom(node)
    while len(filled.input) < max(missing) + 1:
        filled.input.append("")
    tensors = []
    for i in missing:
        formal = formals[i].name
        name = f"{node.name or node.output[0]}/{formal}"
        tensors.append(helper.make_tensor(name, EMPTY_MEANS_UNSET[(node.op_type, formal)], [0], []))
        filled.input[i] = name
    return filled, tensors


# Before opset 13 these ops coerce their input to 2-D at ``axis`` (one softmax over all
# axes from ``axis`` on); from 13 they work along ``axis`` alone.
COERCING_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def last_axis_rewrite(
    node: onnx.NodeProto, rank: int | None, schema
) -> tuple[list[onnx.NodeProto], str | None]:
    """Nodes that compute a Softmax/LogSoftmax/Hardmax of opset >= 13 with the older op:
    along the last axis the two agree (the axis is written out, as the defaults differ);
    along another, Transpose it last, apply, Transpose back. ([], why) when the rank is
    unknown."""
    axis = next(
        (a.i for a in node.attribute if a.name == "axis"), schema.attributes["axis"].default_value.i
    )
    if rank is None:
        return (
            [],
            f"{node.op_type} along axis {axis} needs a known rank to convert below opset 13 (the older op flattens the axes from `axis` on)",
        )
    if not -rank <= axis < rank:
        return [], f"{node.op_type} along axis {axis} of a rank-{rank} input: no such axis"
    axis = axis + rank if axis < 0 else axis
    last = onnx.NodeProto()
    last.CopyFrom(node)
    del last.attribute[:]
    last.attribute.append(helper.make_attribute("axis", rank - 1))
    if axis == rank - 1:
        return [last], None
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    base = node.name or node.output[0]
    moved, result = f"{base}/moved", f"{base}/moved_out"
    before = helper.make_node(
        "Transpose", [node.input[0]], [moved], name=f"{base}/to_last", perm=perm
    )
    last.input[0], last.output[0] = moved, result
    after = helper.make_node(
        "Transpose", [result], [node.output[0]], name=f"{base}/back", perm=perm
    )
    return [before, last, after], None


def constants_of(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Small constant tensors of a graph by name: initializers and Constant outputs."""
    found = {}
    for t in graph.initializer:
        if int(np.prod(t.dims)) <= CONSTANT_PROBE_ELEMENTS and not t.data_location:
            found[t.name] = t
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and n.output:
            for a in n.attribute:
                if a.name == "value" and int(np.prod(a.t.dims)) <= CONSTANT_PROBE_ELEMENTS:
                    t = onnx.TensorProto()
                    t.CopyFrom(a.t)
                    t.name = n.output[0]
                    found[n.output[0]] = t
    return found


def known_types(
    graph: onnx.GraphProto, inferred: onnx.GraphProto
) -> dict[str, onnx.ValueInfoProto]:
    """The type of every tensor of ``graph`` that is declared, inferred (``inferred`` is
    the same graph after shape inference), an initializer or a Constant's value."""
    found = {}
    for t in graph.initializer:
        found[t.name] = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and n.output:
            for a in n.attribute:
                if a.name == "value":
                    found[n.output[0]] = helper.make_tensor_value_info(
                        n.output[0], a.t.data_type, list(a.t.dims)
                    )
    for v in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            found.setdefault(v.name, v)
    return found


def _guess_type(schema, position: int) -> int:
    """An element type the op takes at input ``position``: float where allowed."""
    formals = list(schema.inputs)
    formal = formals[min(position, len(formals) - 1)]
    allowed = sorted(_allowed(schema, formal.type_str))
    choice = "tensor(float)" if "tensor(float)" in allowed else (allowed or ["tensor(float)"])[0]
    name = choice.removeprefix("tensor(").removesuffix(")").upper()
    return getattr(onnx.TensorProto, name, onnx.TensorProto.FLOAT)


def probe_model(
    node: onnx.NodeProto,
    types: Mapping[str, onnx.ValueInfoProto],
    constants: Mapping[str, onnx.TensorProto],
    proto: onnx.ModelProto,
    schema,
) -> tuple[onnx.ModelProto, list[str]]:
    """A model of ``node`` alone, and the inputs whose type was guessed (unknown to shape
    inference, e.g. inside a subgraph: a type the op takes, float where it can)."""
    inputs, inits, guessed = [], [], []
    for position, name in enumerate(node.input):
        if not name or any(v.name == name for v in inputs) or any(t.name == name for t in inits):
            continue
        if name in constants:
            inits.append(constants[name])
        elif name in types:
            inputs.append(types[name])
        else:
            guessed.append(name)
            inputs.append(helper.make_tensor_value_info(name, _guess_type(schema, position), None))
    outputs = [types.get(o) or onnx.ValueInfoProto(name=o) for o in node.output if o]
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    graph = helper.make_graph([probe], "probe", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return model, guessed


def is_default(attr: onnx.AttributeProto, schema_attr) -> bool:
    """Whether ``attr`` holds the default of ``schema_attr`` (an OpSchema.Attribute)."""
    if schema_attr is None or not schema_attr.default_value.name:
        return False
    value = onnx.AttributeProto()
    value.CopyFrom(schema_attr.default_value)
    value.name = attr.name
    return value.SerializeToString() == attr.SerializeToString()


def drop_default_attributes(nodes, source: int, target: int) -> None:
    """Remove attributes the target opset's op does not know, where they hold the value
    that is the default at the source opset (the older op behaves that way without
    them): Reshape 14's ``allowzero=0``, or what ReduceSum 13's adapter to 12 keeps;
    ``noop_with_empty_axes`` goes too where the axes are given, since it only decides
    what empty axes mean."""
    for n in nodes:
        if n.domain not in DEFAULT_DOMAINS:
            continue
        try:
            old = onnx.defs.get_schema(n.op_type, target, "")
            new = onnx.defs.get_schema(n.op_type, source, "")
        except onnx.defs.SchemaError:
            continue
        has_axes = any(a.name == "axes" and len(a.ints) for a in n.attribute)
        keep = [
            a
            for a in n.attribute
            if a.name in old.attributes
            or not (
                is_default(a, new.attributes.get(a.name))
                or (a.name == "noop_with_empty_axes" and has_axes)
            )
        ]
        if len(keep) != len(n.attribute):
            del n.attribute[:]
            n.attribute.extend(keep)


def splice(
    graph: onnx.GraphProto,
    index: int,
    probe: onnx.ModelProto,
    converted: onnx.ModelProto,
    taken: set[str],
) -> None:
    """Replace ``graph.node[index]`` by the nodes of its converted ``probe`` (made of this
    node or of one like it).

    A constant input the adapter left as it was is read where it was (an initializer or
    a Constant node's output); a constant it made or changed, and every tensor between
    the nodes it made, gets a name no other tensor has (``taken``, which grows). The
    node's inputs and outputs keep their names.
    """
    # Nodes that share a probe (same op, attributes, types and small constants) read and
    # write other names than the node the probe was made of: rename to this node's.
    node = graph.node[index]
    mapping = {a: b for a, b in zip(probe.graph.node[0].input, node.input, strict=True) if a}
    mapping.update(zip(probe.graph.node[0].output, node.output, strict=True))
    probe, converted = _rebind(probe, mapping), _rebind(converted, mapping)
    put_in = {t.name: t.SerializeToString() for t in probe.graph.initializer}
    renames: dict[str, str] = {}

    def fresh(name: str) -> str:
        candidate, k = f"{name}__opset", 0
        while candidate in taken:
            k += 1
            candidate = f"{name}__opset{k}"
        taken.add(candidate)
        return candidate

    added = []
    for t in converted.graph.initializer:
        if put_in.get(t.name) == t.SerializeToString():
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = renames[t.name] = fresh(t.name)
        added.append(copy)
    boundary = {v.name for v in probe.graph.input} | {v.name for v in probe.graph.output}
    boundary |= set(put_in)
    for n in converted.graph.node:
        for o in n.output:
            if o and o not in boundary and o not in renames:
                renames[o] = fresh(o)
    nodes = []
    for k, n in enumerate(converted.graph.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        # The node keeps its name; nodes an adapter added get names derived from it.
        same = n.op_type == node.op_type and not any(x.name == node.name for x in nodes)
        copy.name = node.name if same or not node.name else f"{node.name}__opset{k}"
        for i, name in enumerate(copy.input):
            copy.input[i] = renames.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = renames.get(name, name)
        nodes.append(copy)
    read = {i for n in nodes for i in n.input}
    graph.initializer.extend(t for t in added if t.name in read)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(rest[:index] + nodes + rest[index + 1 :])


def _rebind(model: onnx.ModelProto, mapping: Mapping[str, str]) -> onnx.ModelProto:
    """A copy of a probe with its tensors renamed by ``mapping``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for items in (g.input, g.output, g.initializer):
        for v in items:
            v.name = mapping.get(v.name, v.name)
    for n in g.node:
        for i, name in enumerate(n.input):
            n.input[i] = mapping.get(name, name)
        for i, name in enumerate(n.output):
            n.output[i] = mapping.get(name, name)
    return out
