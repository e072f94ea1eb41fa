"""The ``topk`` rule: TopK without TopK, for targets that lack it.

Each element's place in the sorted order is counted, not sorted for: along the axis,
``rank_i`` = the number of elements j that come before i, where j comes before i when
its value is better (greater for ``largest=1``, smaller for ``largest=0``) or equal with
j < i. That is exactly onnxruntime's order (checked by experiment with onnxruntime
1.32: ties go to the lower index for largest and smallest alike, NaN counts as greater
than every number, ``-0.0`` equals ``0.0``). The ranks are a permutation, so one
ScatterElements of the positions by rank gives the sorted order; its first k entries are
the indices, and GatherElements of the input at those indices the values.

"Unchanged": values and indices equal TopK's exactly (bit-identical: nothing is
computed, only compared and gathered). The cost is an L x L comparison per row along the
axis (L its length): boolean L x L tables and a 32-bit count, a peak of about 16 bytes
a pair as measured (onnxruntime 1.32, one row of L = 3,000: 140 MB more than TopK and
280 ms against TopK's 0.4 ms), so about 1.3 GB for L = 9,100. Refused: ``sorted=0`` (TopK's order is then
unspecified, so no rewrite can promise equal outputs), an axis other than the last on an
input of unknown rank, and opsets before 11.
"""

from __future__ import annotations

import numpy as np
import onnx

from surgeon.rewrites.graph import Match, RewriteGraph

_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


class TopKRule:
    """TopK -> pairwise ranks, ScatterElements, Slice, GatherElements (exact)."""

    name = "topk"
    summary = "TopK -> rank counting + ScatterElements/GatherElements (exact; L x L memory)"
    exact = True

    def matches(self, graph: RewriteGraph) -> list[Match]:
        found = []
        for node in graph.nodes:
            if node.op_type != "TopK" or node.domain not in ("", "ai.onnx"):
                continue
            axis = graph.attribute(node, "axis", -1)
            largest = graph.attribute(node, "largest", 1)
            rank = graph.rank(node.input[0])
            refusal = None
            if graph.opset < 11:
                refusal = f"opset {graph.opset}: the rewrite needs opset 11 or later"
            elif not graph.attribute(node, "sorted", 1):
                refusal = (
                    "attribute sorted=0: TopK's order is then unspecified, so no rewrite can "
                    "promise the same outputs"
                )
            elif rank is None and axis != -1:
                refusal = f"attribute axis={axis} on an input of unknown rank"
            elif graph.elem_type(node.input[0]) == 0:
                refusal = "the input's dtype is not known"
            what = f"axis={axis}, largest={largest}"
            found.append(Match(graph.key(node), (graph.key(node),), what, refusal))
        return found

    def apply(self, graph: RewriteGraph, match: Match) -> None:
        node = graph.node(match.node)
        x, k = node.input[0], node.input[1]
        values, indices = node.output[0], node.output[1]
        largest = graph.attribute(node, "largest", 1)
        axis = graph.attribute(node, "axis", -1)
        rank = graph.rank(x)
        perm = None
        if rank is not None and axis % rank != rank - 1:
            axis %= rank
            perm = [a for a in range(rank) if a != axis] + [axis]
            x = graph.op("Transpose", [x], "topk_last", perm=perm)
        length = graph.dim(x, -1, "topk_length")
        shape = graph.shape(x)
        if shape is not None and isinstance(shape[-1], int) and shape[-1] > 0:
            positions = graph.ints(range(shape[-1]), "topk_positions")
        else:
            scalar = graph.op("Reshape", [length, graph.ints([], "scalar_shape")], "topk_len")
            zero, one = graph.scalar(0, np.int64, "zero"), graph.scalar(1, np.int64, "one")
            positions = graph.op("Range", [zero, scalar, one], "topk_positions")
        mine = graph.unsqueeze(x, [-1], "topk_i")  # [..., L, 1]: element i
        other = graph.unsqueeze(x, [-2], "topk_j")  # [..., 1, L]: element j
        better = graph.op("Greater" if largest else "Less", [other, mine], "topk_better")
        tie = graph.op("Equal", [other, mine], "topk_tie")
        if graph.elem_type(node.input[0]) in _FLOATS:
            # onnxruntime puts NaN above every number: first when largest, last when not.
            nan_j = graph.op("IsNaN", [other], "topk_nan_j")
            nan_i = graph.op("IsNaN", [mine], "topk_nan_i")
            winner, loser = (nan_j, nan_i) if largest else (nan_i, nan_j)
            nan_wins = graph.op(
                "And", [winner, graph.op("Not", [loser], "topk_not_nan")], "topk_nan_wins"
            )
            better = graph.op("Or", [better, nan_wins], "topk_better_nan")
            tie = graph.op("Or", [tie, graph.op("And", [nan_j, nan_i])], "topk_tie_nan")
        lower = graph.op(
            "Less",
            [
                graph.unsqueeze(positions, [0], "topk_pj"),
                graph.unsqueeze(positions, [1], "topk_pi"),
            ],
            "topk_lower",
        )  # [L, L]: j < i
        before = graph.op(
            "Or", [better, graph.op("And", [tie, lower], "topk_tie_lower")], "topk_before"
        )
        counted = graph.op("Cast", [before], "topk_count", to=onnx.TensorProto.INT32)
        ranks = graph.reduce("ReduceSum", counted, [-1], 0, "topk_rank")  # [..., L]
        ranks = graph.op("Cast", [ranks], "topk_rank64", to=onnx.TensorProto.INT64)
        spread = graph.op(
            "Expand", [positions, graph.op("Shape", [ranks], "topk_rank_shape")], "topk_spread"
        )
        # The ranks are a permutation: every slot of `order` is written exactly once.
        order = graph.op("ScatterElements", [spread, ranks, spread], "topk_order", axis=-1)
        if perm is None:
            top = graph.slice(order, [0], k, [-1], "topk_top")
            graph.op("Identity", [top], "topk_indices", outputs=[indices])
            graph.op("GatherElements", [x, top], "topk_values", outputs=[values], axis=-1)
            return
        top = graph.slice(order, [0], k, [-1], "topk_top")
        picked = graph.op("GatherElements", [x, top], "topk_picked", axis=-1)
        back = [perm.index(a) for a in range(len(perm))]
        graph.op("Transpose", [top], "topk_indices", outputs=[indices], perm=back)
        graph.op("Transpose", [picked], "topk_values", outputs=[values], perm=back)
