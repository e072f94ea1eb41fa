"""The ``layernorm-decompose`` rule: LayerNormalization as the elementary ops the ONNX
specification defines it with, for targets that predate opset 17.

Over the axes ``[axis, rank)``: ``mean = ReduceMean(x)``, ``d = x - mean``, ``var =
ReduceMean(d * d)``, ``inv = 1 / Sqrt(var + epsilon)``, ``y = d * inv * scale + bias``;
computed in the ``stash_type`` precision (float32) when x is float16/bfloat16, as the
specification says, then cast back. The optional Mean and InvStdDev outputs are produced
when the graph reads them. Lower the opset afterwards with ``surgeon convert``.

"Unchanged": the same outputs within tolerance (onnxruntime's fused kernel accumulates in
another order: the last bits differ). Refused: a positive ``axis`` on an input of unknown
rank (the reduced axes are then unknown).
"""

from __future__ import annotations

import onnx
from onnx import helper

from surgeon.rewrites.graph import Match, RewriteGraph

_LOW = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def reduced_axes(axis: int, rank: int | None) -> list[int] | None:
    """The axes LayerNormalization normalises over, negative so the rank need not be known."""
    if axis < 0:
        return list(range(axis, 0))
    if rank is None:
        return None
    return list(range(axis - rank, 0))


class LayerNormDecomposeRule:
    """LayerNormalization -> ReduceMean/Sub/Mul/Add/Sqrt/Reciprocal."""

    name = "layernorm-decompose"
    summary = "LayerNormalization -> ReduceMean/Sub/Mul/Sqrt/Reciprocal/Add (for opset < 17)"
    exact = False

    def matches(self, graph: RewriteGraph) -> list[Match]:
        found = []
        for node in graph.nodes:
            if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
                continue
            axis = graph.attribute(node, "axis", -1)
            epsilon = graph.attribute(node, "epsilon", 1e-5)
            refusal = None
            if reduced_axes(axis, graph.rank(node.input[0])) is None:
                refusal = f"attribute axis={axis} on an input of unknown rank"
            key = graph.key(node)
            found.append(Match(key, (key,), f"axis={axis}, epsilon={epsilon:g}", refusal))
        return found

    def apply(self, graph: RewriteGraph, match: Match) -> None:
        node = graph.node(match.node)
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 else ""
        outputs = list(node.output) + ["", ""]
        y, mean_out, inv_out = outputs[0], outputs[1], outputs[2]
        axes = reduced_axes(graph.attribute(node, "axis", -1), graph.rank(x))
        epsilon = graph.attribute(node, "epsilon", 1e-5)
        stash = graph.attribute(node, "stash_type", onnx.TensorProto.FLOAT)
        x_type = graph.elem_type(x)
        ctype = stash if x_type in _LOW else x_type
        np_type = helper.tensor_dtype_to_np_dtype(ctype or onnx.TensorProto.FLOAT)
        data = graph.op("Cast", [x], "ln_x", to=ctype) if ctype != x_type else x
        mean = graph.reduce("ReduceMean", data, axes, 1, "ln_mean")
        diff = graph.op("Sub", [data, mean], "ln_diff")
        var = graph.reduce("ReduceMean", graph.op("Mul", [diff, diff], "ln_sq"), axes, 1, "ln_var")
        eps = graph.scalar(epsilon, np_type, "ln_epsilon")
        std = graph.op("Sqrt", [graph.op("Add", [var, eps], "ln_var_eps")], "ln_std")
        inv = graph.op("Reciprocal", [std], "ln_inv")
        normalised = graph.op("Mul", [diff, inv], "ln_normalised")
        if ctype != x_type:
            normalised = graph.op("Cast", [normalised], "ln_back", to=x_type)
        if bias:
            scaled = graph.op("Mul", [normalised, scale], "ln_scaled")
            graph.op("Add", [scaled, bias], "ln_y", outputs=[y])
        else:
            graph.op("Mul", [normalised, scale], "ln_y", outputs=[y])
        # Mean and InvStdDev are in the stash type, with the reduced axes kept as 1.
        if mean_out:
            graph.op("Identity", [mean], "ln_mean_out", outputs=[mean_out])
        if inv_out:
            graph.op("Identity", [inv], "ln_inv_out", outputs=[inv_out])
