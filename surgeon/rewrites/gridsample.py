"""The ``gridsample`` rule: GridSample as arithmetic and GatherElements, for targets
without GridSample (DETR-family deformable attention, optical flow warps).

For a 4-D input X [N, C, H, W] and grid [N, Ho, Wo, 2] of (x, y) in [-1, 1]: each
coordinate is unnormalised (``align_corners=1``: ``(g + 1) / 2 * (size - 1)``; ``0``:
``((g + 1) * size - 1) / 2``), the corner pixels are found with Floor (bilinear) or Round
(nearest, half to even like onnxruntime), their flat positions ``y * W + x`` gathered
from X reshaped to [N, C, H*W] with GatherElements, and summed with the bilinear weights.
``padding_mode=zeros``: a corner outside the image counts 0 (a mask multiplies its
weight); ``border``: the coordinate is clamped to the image first; ``reflection``: a
coordinate outside is reflected back in, as onnxruntime does (about the pixel centres
with ``align_corners=1``, the pixel edges with 0). The arithmetic is in
float32 (float64 when X and grid are float64), X cast to it and the result back.

"Unchanged": the same output within tolerance (not bit-identical: the weights are
computed in another order than onnxruntime's kernel, a few float32 ulps apart).
Refused, naming the attribute: ``mode=bicubic``/``cubic``, inputs that are not 4-D. NaN coordinates are not supported (onnxruntime's result for
them is not specified either). Nor are coordinates beyond about +-1e6: onnxruntime
1.32's own kernel then reads wrong pixels (border padding, a 3x4 image of 0..11, x=1e7:
it gives 14; x=1e8: 0), where the rewrite clamps as the operator defines.
"""

from __future__ import annotations

import numpy as np
import onnx

from surgeon.rewrites.graph import Match, RewriteGraph

_LINEAR = {"bilinear", "linear"}


class GridSampleRule:
    """GridSample (bilinear/nearest, any padding, any align_corners) -> GatherElements."""

    name = "gridsample"
    summary = "GridSample (bilinear/nearest, any padding) -> Floor/Round + GatherElements"
    exact = False

    def matches(self, graph: RewriteGraph) -> list[Match]:
        found = []
        for node in graph.nodes:
            if node.op_type != "GridSample" or node.domain not in ("", "ai.onnx"):
                continue
            mode = graph.attribute(node, "mode", "linear" if graph.opset >= 20 else "bilinear")
            padding = graph.attribute(node, "padding_mode", "zeros")
            corners = graph.attribute(node, "align_corners", 0)
            refusals = []
            if mode not in _LINEAR | {"nearest"}:
                refusals.append(f"attribute mode={mode} is not implemented (bilinear, nearest)")
            if padding not in ("zeros", "border", "reflection"):
                refusals.append(
                    f"attribute padding_mode={padding} is not implemented "
                    "(zeros, border, reflection)"
                )
            for tensor, what in ((node.input[0], "input X"), (node.input[1], "grid")):
                rank = graph.rank(tensor)
                if rank != 4:
                    refusals.append(
                        f"{what} `{tensor}` has rank {rank if rank is not None else 'unknown'}; "
                        "only 4-D GridSample is implemented"
                    )
            what = f"{mode}, {padding}, align_corners={corners}"
            key = graph.key(node)
            found.append(Match(key, (key,), what, "; ".join(refusals) or None))
        return found

    def apply(self, graph: RewriteGraph, match: Match) -> None:
        node = graph.node(match.node)
        x, grid = node.input[0], node.input[1]
        mode = graph.attribute(node, "mode", "linear" if graph.opset >= 20 else "bilinear")
        padding = graph.attribute(node, "padding_mode", "zeros")
        corners = graph.attribute(node, "align_corners", 0)
        x_type, grid_type = graph.elem_type(x), graph.elem_type(grid)
        double = x_type == grid_type == onnx.TensorProto.DOUBLE
        ctype = onnx.TensorProto.DOUBLE if double else onnx.TensorProto.FLOAT
        np_type = np.float64 if double else np.float32
        if grid_type != ctype:
            grid = graph.op("Cast", [grid], "gs_grid", to=ctype)
        data = x if x_type == ctype else graph.op("Cast", [x], "gs_x", to=ctype)

        height, width = graph.dim(x, 2, "gs_h"), graph.dim(x, 3, "gs_w")  # int64 [1]
        coords = []
        for axis, size in ((0, width), (1, height)):
            g = graph.op("Gather", [grid, graph.scalar(axis, np.int64, "gs_axis")], "gs_g", axis=3)
            size_f = graph.op("Cast", [size], "gs_size", to=ctype)
            one = graph.scalar(1, np_type, "gs_one")
            half = graph.scalar(0.5, np_type, "gs_half")
            shifted = graph.op("Add", [g, one], "gs_shift")
            if corners:
                span = graph.op("Sub", [size_f, one], "gs_span")
                c = graph.op("Mul", [graph.op("Mul", [shifted, half], "gs_unit"), span], "gs_c")
            else:
                scaled = graph.op("Mul", [shifted, size_f], "gs_scaled")
                c = graph.op("Mul", [graph.op("Sub", [scaled, one], "gs_off"), half], "gs_c")
            last = graph.op("Sub", [size_f, one], "gs_last")
            if padding == "border":
                zero = graph.scalar(0, np_type, "gs_zero")
                c = graph.op("Max", [graph.op("Min", [c, last], "gs_min"), zero], "gs_border")
            elif padding == "reflection":
                c = self._reflect(graph, c, size_f, corners, np_type)
            else:
                # Beyond [-2, size + 1] every corner is outside anyway; the bound keeps the
                # integer conversion of huge coordinates defined.
                low = graph.scalar(-2, np_type, "gs_low")
                high = graph.op("Add", [size_f, one], "gs_high")
                c = graph.op("Max", [graph.op("Min", [c, high], "gs_min"), low], "gs_bounded")
            coords.append(c)

        to_int = onnx.TensorProto.INT64
        axes = []  # per axis (x, then y): [(clamped int coordinate, weight, inside mask)]
        for c, size in zip(coords, (width, height), strict=True):
            top = graph.op("Sub", [size, graph.ints([1], "gs_i1")], "gs_top")
            zero_i = graph.scalar(0, np.int64, "gs_zi")
            if mode == "nearest":
                rounded = graph.op("Round", [c], "gs_round")  # half to even, as onnxruntime
                points = [(graph.op("Cast", [rounded], "gs_ni", to=to_int), None)]
            else:
                low_f = graph.op("Floor", [c], "gs_floor")
                frac = graph.op("Sub", [c, low_f], "gs_frac")  # the upper corner's weight
                one = graph.scalar(1, np_type, "gs_one")
                low_i = graph.op("Cast", [low_f], "gs_lo", to=to_int)
                high_i = graph.op("Add", [low_i, graph.scalar(1, np.int64, "gs_i1s")], "gs_hi")
                points = [(low_i, graph.op("Sub", [one, frac], "gs_wlo")), (high_i, frac)]
            corners_of_axis = []
            for v, weight in points:
                inside = None
                if padding == "zeros":
                    not_below = graph.op("Not", [graph.op("Less", [v, zero_i])], "gs_ge0")
                    inside = graph.op("And", [not_below, graph.op("Less", [v, size])], "gs_in")
                clamped = graph.op("Max", [graph.op("Min", [v, top]), zero_i], "gs_clamped")
                corners_of_axis.append((clamped, weight, inside))
            axes.append(corners_of_axis)

        # Every corner's flat position y * W + x, side by side: one GatherElements reads
        # them all from X as [N, C, H*W], and one ReduceSum adds them up.
        indices, factors = [], []
        for yc, wy, iy in axes[1]:
            for xc, wx, ix in axes[0]:
                index = graph.op("Add", [graph.op("Mul", [yc, width]), xc], "gs_index")
                indices.append(graph.op("Reshape", [index, graph.ints([0, 1, -1], "gs_row")]))
                factor = wy if wx is None else graph.op("Mul", [wy, wx], "gs_w")
                if iy is not None:
                    mask = graph.op("Cast", [graph.op("And", [iy, ix])], "gs_mask", to=ctype)
                    factor = mask if factor is None else graph.op("Mul", [factor, mask], "gs_wm")
                if factor is not None:
                    factors.append(graph.op("Reshape", [factor, graph.ints([0, 1, -1], "gs_row")]))
        count = len(indices)
        index = indices[0] if count == 1 else graph.op("Concat", indices, "gs_indices", axis=2)
        channels = graph.dim(x, 1, "gs_c")
        spread = graph.op(
            "Concat",
            [graph.ints([1], "gs_one_dim"), channels, graph.ints([1], "gs_one_dim")],
            "gs_spread_shape",
            axis=0,
        )
        index = graph.op("Expand", [index, spread], "gs_index_all")  # [N, C, count * L]
        flat = graph.op("Reshape", [data, graph.ints([0, 0, -1], "gs_flat_shape")], "gs_flat")
        total = graph.op("GatherElements", [flat, index], "gs_pixels", axis=2)
        if factors:
            factor = factors[0] if count == 1 else graph.op("Concat", factors, "gs_f", axis=2)
            total = graph.op("Mul", [total, factor], "gs_weighted")
        if count > 1:
            split = graph.ints([0, 0, count, -1], "gs_split_shape")
            total = graph.op("Reshape", [total, split], "gs_corners")  # [N, C, count, L]
            total = graph.reduce("ReduceSum", total, [2], 0, "gs_sum")
        out_shape = graph.op(
            "Concat",
            [
                graph.ints([0, 0], "gs_nc"),
                graph.dim(node.input[1], 1, "gs_ho"),
                graph.dim(node.input[1], 2, "gs_wo"),
            ],
            "gs_out_shape",
            axis=0,
        )
        if x_type == ctype:
            graph.op("Reshape", [total, out_shape], "gs_out", outputs=[node.output[0]])
        else:
            shaped = graph.op("Reshape", [total, out_shape], "gs_shaped")
            graph.op("Cast", [shaped], "gs_out", outputs=[node.output[0]], to=x_type)

    @staticmethod
    def _reflect(graph: RewriteGraph, c: str, size_f: str, corners: int, np_type) -> str:
        """Reflect a coordinate outside [low, high] back inside, as onnxruntime does:
        [0, size - 1] with align_corners, else [-0.5, size - 0.5]; d = the distance past
        the edge, n = floor(d / span), r = d - n * span, then the edge it lands on
        alternates with the parity of n. Inside, the coordinate stays as it is."""
        half = graph.scalar(0.5, np_type, "gs_rhalf")
        one = graph.scalar(1, np_type, "gs_rone")
        if corners:
            low = graph.scalar(0, np_type, "gs_rlow")
            high = graph.op("Sub", [size_f, one], "gs_rhigh")
        else:
            low = graph.scalar(-0.5, np_type, "gs_rlow")
            high = graph.op("Sub", [size_f, half], "gs_rhigh")
        span = graph.op("Sub", [high, low], "gs_rspan")
        below = graph.op("Less", [c, low], "gs_below")
        above = graph.op("Greater", [c, high], "gs_above")
        zero = graph.scalar(0, np_type, "gs_rzero")
        past = graph.op(
            "Where",
            [
                below,
                graph.op("Sub", [low, c]),
                graph.op("Where", [above, graph.op("Sub", [c, high]), zero]),
            ],
            "gs_past",
        )
        turns = graph.op("Floor", [graph.op("Div", [past, span])], "gs_turns")
        rest = graph.op("Sub", [past, graph.op("Mul", [turns, span])], "gs_rest")
        halves = graph.op("Floor", [graph.op("Mul", [turns, half])], "gs_halves")
        odd = graph.op(
            "Greater", [graph.op("Sub", [turns, graph.op("Add", [halves, halves])]), half], "gs_odd"
        )
        from_low = graph.op("Add", [low, rest], "gs_from_low")
        from_high = graph.op("Sub", [high, rest], "gs_from_high")
        # below: even turns land at low + r, odd at high - r; above the other way round
        lands_low = graph.op("Xor", [below, odd], "gs_lands_low")
        moved = graph.op("Where", [lands_low, from_low, from_high], "gs_moved")
        outside = graph.op("Or", [below, above], "gs_outside")
        return graph.op("Where", [outside, moved, c], "gs_reflected")
