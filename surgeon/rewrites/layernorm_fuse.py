"""The ``layernorm-fuse`` rule: the decomposed layer norm that exporters emit below opset
17, back into one LayerNormalization (for targets that have a fused kernel for it).

The pattern, from its first ReduceMean (the anchor ``--node`` names)::

    mean = ReduceMean(x)          over trailing axes, keepdims=1
    d    = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2))  or ReduceMean(Mul(d, d)), the same axes
    std  = Sqrt(Add(var, eps))    eps a constant scalar, either side of the Add
    n    = Div(d, std)            or Mul(d, Reciprocal(std))
    y    = Mul(n, scale)          optional, scale a constant that fits the normalised dims
    z    = Add(y, bias)           optional, bias likewise

Every intermediate tensor must be read only inside the pattern (else it is not fused).
Without a fitting Mul, the scale is ones (the Mul, if any, stays after the fused node).

"Unchanged": the same outputs within tolerance (the fused kernel accumulates in another
order). Refused: models below opset 17, which have no LayerNormalization (convert them
first with ``surgeon convert MODEL --opset 17``).
"""

from __future__ import annotations

import numpy as np
import onnx

from surgeon.rewrites.graph import Match, RewriteGraph


def _axes(graph: RewriteGraph, node: onnx.NodeProto) -> list[int] | None:
    """A ReduceMean's axes (attribute, or constant input from opset 18), negative."""
    axes = graph.attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    if not axes or graph.attribute(node, "keepdims", 1) != 1:
        return None
    rank = graph.rank(node.input[0])
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    axes = sorted(axes)
    return axes if axes == list(range(-len(axes), 0)) else None


def _other(node: onnx.NodeProto, tensor: str) -> str | None:
    """The other input of a two-input node that reads ``tensor`` once."""
    ins = list(node.input)
    if len(ins) != 2 or ins.count(tensor) != 1:
        return None
    return ins[1] if ins[0] == tensor else ins[0]


def _only(graph: RewriteGraph, tensor: str, op_type: str) -> onnx.NodeProto | None:
    """The single node reading ``tensor``, when it is of ``op_type``."""
    readers = {graph.key(n): n for n in graph.consumers(tensor)}
    if len(readers) != 1 or graph.is_output(tensor):
        return None
    node = next(iter(readers.values()))
    return node if node.op_type == op_type else None


class LayerNormFuseRule:
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] -> LayerNormalization."""

    name = "layernorm-fuse"
    summary = "decomposed layer norm (ReduceMean/Sub/Pow/Sqrt/Div/...) -> LayerNormalization"
    exact = False

    def matches(self, graph: RewriteGraph) -> list[Match]:
        found = []
        for node in graph.nodes:
            if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
                continue
            pattern = self._pattern(graph, node)
            if pattern is None:
                continue
            refusal = None
            if graph.opset < 17:
                refusal = (
                    f"the model's opset is {graph.opset}; LayerNormalization needs opset 17: "
                    "convert it first: `surgeon convert MODEL --opset 17 -o MODEL17.onnx`"
                )
            key = graph.key(node)
            nodes = tuple(graph.key(n) for n in pattern["nodes"])
            what = f"axis={pattern['axis']}, epsilon={pattern['epsilon']:g}"
            what += ", scale" if pattern["scale"] is not None else ""
            what += ", bias" if pattern["bias"] is not None else ""
            found.append(Match(key, nodes, what, refusal))
        return found

    def _pattern(self, graph: RewriteGraph, mean: onnx.NodeProto) -> dict | None:
        x = mean.input[0]
        axes = _axes(graph, mean)
        if axes is None:
            return None
        sub = _only(graph, mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            return None
        d = sub.output[0]
        readers = {graph.key(n): n for n in graph.consumers(d)}
        if len(readers) != 2 or graph.is_output(d):
            return None
        square = divide = None
        for n in readers.values():
            if n.op_type == "Pow" and n.input[0] == d:
                power = graph.constant(n.input[1])
                if power is not None and power.size == 1 and float(power.reshape(-1)[0]) == 2.0:
                    square = n
            elif n.op_type == "Mul" and list(n.input) == [d, d]:
                square = n
            elif n.op_type in ("Div", "Mul"):
                divide = n
        if square is None or divide is None:
            return None
        var = _only(graph, square.output[0], "ReduceMean")
        if var is None or _axes(graph, var) != axes:
            return None
        add = _only(graph, var.output[0], "Add")
        eps = _other(add, var.output[0]) if add is not None else None
        eps_value = graph.constant(eps) if eps else None
        if eps_value is None or eps_value.size != 1:
            return None
        sqrt = _only(graph, add.output[0], "Sqrt")
        if sqrt is None:
            return None
        nodes = [mean, sub, square, var, add, sqrt]
        if divide.op_type == "Div":
            if list(divide.input) != [d, sqrt.output[0]]:
                return None
            if _only(graph, sqrt.output[0], "Div") is None:
                return None
        else:
            recip = _only(graph, sqrt.output[0], "Reciprocal")
            if recip is None or _other(divide, d) != recip.output[0]:
                return None
            if _only(graph, recip.output[0], "Mul") is None:
                return None
            nodes.append(recip)
        nodes.append(divide)
        last = divide.output[0]
        normalised = self._normalised_dims(graph, x, axes)
        scale = bias = None
        mul = _only(graph, last, "Mul")
        if mul is not None:
            scale = self._fits(graph, _other(mul, last), normalised)
        if scale is not None:
            nodes.append(mul)
            last = mul.output[0]
            add_bias = _only(graph, last, "Add")
            if add_bias is not None:
                bias = self._fits(graph, _other(add_bias, last), normalised)
            if bias is not None:
                nodes.append(add_bias)
                last = add_bias.output[0]
        return {
            "x": x,
            "axis": axes[0],
            "epsilon": float(eps_value.reshape(-1)[0]),
            "scale": scale,
            "bias": bias,
            "normalised": normalised,
            "nodes": nodes,
            "output": last,
        }

    @staticmethod
    def _normalised_dims(graph: RewriteGraph, x: str, axes: list[int]) -> tuple | None:
        shape = graph.shape(x)
        if shape is None or len(shape) < len(axes):
            return None
        dims = shape[len(shape) - len(axes) :]
        return tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    @staticmethod
    def _fits(graph: RewriteGraph, tensor: str | None, normalised: tuple | None):
        """The constant ``tensor`` as an array of the normalised dims, or None when it is
        not a constant that broadcasts only along them."""
        if not tensor:
            return None
        value = graph.constant(tensor)
        if value is None or normalised is None:
            return None
        shape = list(value.shape)
        while shape and shape[0] == 1 and len(shape) > len(normalised):
            shape.pop(0)
        if len(shape) > len(normalised):
            return None
        try:
            return np.broadcast_to(value.reshape(shape), normalised)
        except ValueError:
            return None

    def apply(self, graph: RewriteGraph, match: Match) -> None:
        pattern = self._pattern(graph, graph.node(match.node))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.elem_type(pattern["x"]) or 1)
        scale = pattern["scale"]
        if scale is None:
            normalised = pattern["normalised"]
            # onnxruntime broadcasts a [1] scale; the normalised dims are better when known
            scale = np.ones(normalised if normalised is not None else (1,), dtype)
        inputs = [pattern["x"], graph.const(np.ascontiguousarray(scale, dtype), "ln_scale")]
        if pattern["bias"] is not None:
            inputs.append(graph.const(np.ascontiguousarray(pattern["bias"], dtype), "ln_bias"))
        graph.op(
            "LayerNormalization",
            inputs,
            "ln_fused",
            outputs=[pattern["output"]],
            name=graph.node(match.node).name or None,  # the anchor's name: --node found it so
            axis=pattern["axis"],
            epsilon=pattern["epsilon"],
        )
