"""The graph a rewrite rule reads and writes: :class:`RewriteGraph`, and :class:`Match`.

A rule never edits protobuf lists itself. It reads the graph (nodes, constants, inferred
shapes and dtypes, the opset) and, inside :meth:`Rule.apply`, adds the nodes of the
replacement with :meth:`RewriteGraph.op` (and the opset-aware helpers :meth:`unsqueeze`,
:meth:`reduce`, ...). The driver (:mod:`surgeon.rewrites.apply`) then removes the matched
nodes and puts the new ones where the last of them was, which keeps the node order
topological: the new nodes read only what the matched nodes could read, and everything
that read the matched nodes' outputs comes after them.

Nodes are named by their *key*: the name of their first output, unique in an SSA graph
(node names may be empty or repeated); :meth:`RewriteGraph.label` is what a person sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from surgeon.dims import Dim
from surgeon.protos import iter_graphs


@dataclass(frozen=True)
class Match:
    """One place a rule can rewrite, or a reason it cannot.

    Attributes:
        node: Key (first output name) of the node the match is anchored on: the node
            ``--node`` selects and reports name.
        nodes: Keys of every node the rewrite replaces (the anchor among them).
        what: A short description for the report (``"bilinear, zeros, align_corners=0"``).
        refusal: Why this node cannot be rewritten (an unsupported mode, naming the
            attribute); None when it can.
    """

    node: str
    nodes: tuple[str, ...]
    what: str = ""
    refusal: str | None = None


def _opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


class RewriteGraph:
    """The main graph of a ModelProto, read and extended by rewrite rules.

    Args:
        proto: The model; the driver owns it (a copy of the user's model) and changes it
            in place.
    """

    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        self.opset = _opset(proto)
        self._pending: list[onnx.NodeProto] | None = None
        self._counter = 0
        self.refresh()

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Re-read the graph after a change: producers, names in use, inferred types."""
        g = self.proto.graph
        self._names = {t.name for t in g.initializer} | {v.name for v in g.input}
        self._producers: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            self._names.update(node.output)
            self._names.add(node.name)
            for out in node.output:
                if out:
                    self._producers[out] = node
            for name in node.input:
                self._consumers.setdefault(name, []).append(node)
            # An If/Loop/Scan body may read this graph's tensors by name: the node that
            # holds the body counts as their reader, so no rule removes them from under it.
            for attr in node.attribute:
                bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs
                for body in bodies:
                    for sub in iter_graphs(body):
                        for inner in sub.node:
                            for name in inner.input:
                                self._consumers.setdefault(name, []).append(node)
        self._initializers = {t.name: t for t in g.initializer}
        self._types: dict[str, onnx.TypeProto] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self._skeleton(), data_prop=True).graph
            infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        # ValueError: above protobuf's 2 GB limit; then only declared types are known
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
            infos = list(g.value_info) + list(g.input) + list(g.output)
        for info in infos:
            self._types.setdefault(info.name, info.type)
        for t in g.initializer:
            self._types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))

    def _skeleton(self) -> onnx.ModelProto:
        """The model without its large weights (their dims and types stay): inference needs
        no more, and the graph is inferred again after every rewritten node, so copying
        every weight each time (or passing protobuf's 2 GB limit) is avoided. Small
        constants keep their values for data propagation (shape arithmetic)."""
        skeleton = onnx.ModelProto()
        for field in ("ir_version", "producer_name", "domain"):
            setattr(skeleton, field, getattr(self.proto, field))
        skeleton.opset_import.extend(self.proto.opset_import)
        skeleton.functions.extend(self.proto.functions)
        source, g = self.proto.graph, skeleton.graph
        g.name = source.name
        g.node.extend(source.node)
        for part in ("input", "output", "value_info"):
            getattr(g, part).extend(getattr(source, part))
        for t in source.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL or t.ByteSize() > 1024:
                g.initializer.add(name=t.name, data_type=t.data_type, dims=list(t.dims))
            else:
                g.initializer.append(t)
        return skeleton

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        """The main graph's nodes, in order (read only)."""
        return list(self.proto.graph.node)

    def key(self, node: onnx.NodeProto) -> str:
        """The key of a node: its first output's name."""
        return node.output[0]

    def node(self, key: str) -> onnx.NodeProto:
        """The node whose first output is ``key``."""
        return self._producers[key]

    def label(self, node: onnx.NodeProto) -> str:
        """How a person names a node: its name, else its op type and first output."""
        return node.name or f"{node.op_type} -> {node.output[0]}"

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self._producers.get(tensor)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return list(self._consumers.get(tensor, ()))

    def is_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.proto.graph.output)

    def used_only_by(self, tensor: str, nodes: Sequence[onnx.NodeProto]) -> bool:
        """True when nothing but ``nodes`` reads ``tensor`` (and it is no graph output):
        the condition for removing its producer with them."""
        keys = {self.key(n) for n in nodes}
        readers = self._consumers.get(tensor, ())
        return not self.is_output(tensor) and all(self.key(n) in keys for n in readers)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None otherwise."""
        if tensor in self._initializers:
            t = self._initializers[tensor]
            if t.data_location == onnx.TensorProto.EXTERNAL and self.proto_has_no_data(t):
                return None
            return numpy_helper.to_array(t)
        node = self._producers.get(tensor)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.array(helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.array(helper.get_attribute_value(a))
        return None

    @staticmethod
    def proto_has_no_data(t: onnx.TensorProto) -> bool:
        return not t.raw_data and not t.float_data and not t.int64_data and not t.int32_data

    def shape(self, tensor: str) -> tuple[Dim, ...] | None:
        """Inferred or declared dims (ints, dim names, None for unknown); None: unknown rank."""
        t = self._types.get(tensor)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return tuple(dims)

    def rank(self, tensor: str) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def elem_type(self, tensor: str) -> int:
        """The ONNX element type (onnx.TensorProto.FLOAT, ...); 0 when not known."""
        t = self._types.get(tensor)
        if t is None or not t.HasField("tensor_type"):
            return 0
        return t.tensor_type.elem_type

    @staticmethod
    def attribute(node: onnx.NodeProto, name: str, default=None):
        """An attribute's value (bytes decoded to str), or ``default``."""
        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return default

    # ------------------------------------------------------------------ building
    def fresh(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        while True:
            self._counter += 1
            name = f"{hint}__rw{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def const(self, value, hint: str = "const") -> str:
        """Add an initializer holding ``value`` (a numpy array); its name."""
        name = self.fresh(hint)
        self.proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        hint: str | None = None,
        *,
        outputs: int | Sequence[str] = 1,
        domain: str = "",
        name: str | None = None,
        **attributes,
    ):
        """Add a node of the replacement (only inside :meth:`Rule.apply`).

        Args:
            op_type: The operator.
            inputs: Input tensor names ("" for an omitted optional input).
            hint: A prefix for the new tensor and node names.
            outputs: How many fresh outputs, or the exact output names (the matched
                nodes' outputs, which the replacement must produce).
            domain: The operator's domain (default: ONNX).
            name: The node's name (a replaced node's name is free again); None: a fresh one.
            attributes: The node's attributes.

        Returns:
            The output name, or the list of names when there are several.
        """
        if self._pending is None:
            raise RuntimeError("RewriteGraph.op is only called from a rule's apply()")
        hint = hint or op_type.lower()
        if isinstance(outputs, int):
            names = [self.fresh(hint) for _ in range(outputs)]
        else:
            names = list(outputs)
        node = helper.make_node(
            op_type, list(inputs), names, name=name or self.fresh(hint), domain=domain, **attributes
        )
        self._pending.append(node)
        return names[0] if len(names) == 1 else names

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        """A constant int64 vector."""
        return self.const(np.asarray(list(values), np.int64), hint)

    def scalar(self, value, dtype, hint: str = "scalar") -> str:
        """A constant scalar of ``dtype`` (a numpy dtype)."""
        return self.const(np.array(value, dtype), hint)

    def unsqueeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        """Unsqueeze with ``axes`` as an attribute before opset 13, an input from 13."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes, "axes")], hint)
        return self.op("Unsqueeze", [x], hint, axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes, "axes")], hint)
        return self.op("Squeeze", [x], hint, axes=list(axes))

    def reduce(
        self, op_type: str, x: str, axes: Sequence[int], keepdims: int, hint: str | None = None
    ) -> str:
        """A Reduce* node; its axes became an input at opset 13 (ReduceSum) or 18 (others)."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, [x, self.ints(axes, "axes")], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=keepdims)

    def slice(self, x: str, starts, ends, axes, hint: str | None = None) -> str:
        """Slice along ``axes`` (constant bounds; ``ends`` may name a tensor)."""
        end = ends if isinstance(ends, str) else self.ints(ends, "ends")
        return self.op(
            "Slice", [x, self.ints(starts, "starts"), end, self.ints(axes, "axes")], hint
        )

    def dim(self, tensor: str, axis: int, hint: str = "dim") -> str:
        """Dim ``axis`` of ``tensor`` as an int64 vector of one element: a constant when
        the dim is static, else read with Shape at run time."""
        shape = self.shape(tensor)
        if shape is not None and isinstance(shape[axis], int) and shape[axis] > 0:
            return self.ints([shape[axis]], hint)
        full = self.op("Shape", [tensor], f"{hint}_shape")
        size = len(shape) if shape is not None else None
        stop = axis + 1 if axis >= 0 else (axis + 1 if axis < -1 else np.iinfo(np.int64).max)
        if size is not None:
            axis, stop = axis % size, axis % size + 1
        return self.slice(full, [axis], [stop], [0], hint)

    # ------------------------------------------------------------------ driver side
    def begin(self) -> None:
        self._pending = []

    def end(self) -> list[onnx.NodeProto]:
        nodes, self._pending = self._pending or [], None
        return nodes
