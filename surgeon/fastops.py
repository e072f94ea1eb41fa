"""surgeon's fused measurement kernels: an onnxruntime custom-op library built from
``_fastops.c`` when surgeon is installed (domain ``ai.surgeon``).

``TensorStats`` measures a tensor and ``ComparePair`` compares two in one pass each,
where the equivalent ONNX nodes (:mod:`surgeon.statistics.in_graph`,
:mod:`surgeon.compare.in_graph`) take about a dozen passes and float64 copies of every
activation. They give the same numbers: counts and extremes identical, sums pairwise
(numpy's order, not onnxruntime's), so equal to the last bits.

The library is optional. Without a C compiler at install time, or with
``SURGEON_FASTOPS=0`` in the environment, :func:`available` is False and the ONNX nodes
are used. Before its first use the library is checked once per process on a tiny model
against numbers computed here: a library that loads but computes wrong (an onnxruntime
whose C API moved) is never used.
"""

from __future__ import annotations

import functools
import math
import os

from surgeon.fastops_library import (
    COMPARE,
    COMPARE_TYPES,
    DOMAIN,
    MEASURE,
    STATS,
    STATS_TYPES,
    STORED,
    library,
)

# The measuring runs (debug's statistics run and its merged --ref run) use onnxruntime's
# memory arena where these kernels measure and the weights are small: there is no float64
# copy of an activation for the arena to grow to (the ONNX nodes made one per tensor, so
# those runs went without it), and the activations' buffers are reused instead of mapped
# and faulted in afresh (this machine, YOLOv8n-size, 6 alternated runs: --ref 1.47 ->
# 1.33 s median, peak 174 -> 203 MB; --tap all 0.87 -> 0.83 s, 134 -> 152 MB). Large
# weights stay out of it: onnxruntime copies lent weights into its allocator.
ARENA_WEIGHTS = 64 * 2**20


def measuring_arena(*models) -> bool:
    """Whether a run measuring ``models`` (surgeon.model.Model) takes the arena."""
    from surgeon.protos import weight_bytes

    return available() and sum(weight_bytes(m.proto) for m in models) <= ARENA_WEIGHTS


def plain_arena(weight_bytes: int) -> bool:
    """Whether debug's plain run (the tap check's) of a model with these weights takes
    the arena: by measuring_arena's rule, without waiting for the library's check (the
    run starts before it; a library that fails it costs memory only)."""
    return _wanted() and library() is not None and weight_bytes <= ARENA_WEIGHTS


def available() -> bool:
    """Whether the kernels can be used in this process (see the module docstring)."""
    return _wanted() and _checked()


def _wanted() -> bool:
    return os.environ.get("SURGEON_FASTOPS", "1") != "0"


@functools.cache
def _checked() -> bool:
    return library() is not None and _self_test()


def _self_test() -> bool:
    """Run both kernels on a small float32 pair with a NaN, an Inf and a zero, and on
    finite values (the fast paths), against numbers computed in numpy here."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from surgeon.errors import SurgeonError
    from surgeon.model import Model
    from surgeon.runner import Session

    nodes = [
        helper.make_node(STATS, ["x"], ["stats", "shape"], domain=DOMAIN),
        helper.make_node(COMPARE, ["x", "y", "tol"], ["cmp", "sx", "sy"], domain=DOMAIN),
        helper.make_node(
            MEASURE, ["x", "y", "tol"], ["both", "bx", "by", "both_stats"], domain=DOMAIN
        ),
    ]
    doubles = ("stats", "cmp", "both", "both_stats")
    outs = [
        helper.make_tensor_value_info(
            n, TensorProto.DOUBLE if n in doubles else TensorProto.INT64, None
        )
        for n in ("stats", "shape", "cmp", "sx", "sy", "both", "bx", "by", "both_stats")
    ]
    graph = helper.make_graph(
        nodes,
        "fastops_check",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        ],
        outs,
        [onnx.numpy_helper.from_array(np.array([0.5, 0.25]), "tol")],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)]
    )
    x = np.array([[1.0, -2.0, 0.0, 4.0], [8.0, 0.5, -3.0, 2.0]], np.float32)
    y = np.array([[1.0, -2.5, 0.0, 5.0], [8.0, 0.5, 3.0, 2.25]], np.float32)
    x_bad, y_bad = x.copy(), y.copy()
    x_bad[0, 0], y_bad[0, 1] = np.nan, np.inf
    names = ["stats", "shape", "cmp", "sx", "sy", "both", "both_stats"]
    try:
        # through surgeon's runner, which registers the library for the domain
        session = Session(Model(proto))
        got = session.run({"x": x, "y": y}, names)
        finite = [got[n] for n in names]
        got = session.run({"x": x_bad, "y": y_bad}, names)
        general = [got[n] for n in names]
    except SurgeonError:
        return False
    d = x.astype(np.float64)
    expected_stats = [d.min(), d.max(), d.mean(), ((d - d.mean()) ** 2).sum(), 1, 0, 0]
    a, b = d.ravel(), y.astype(np.float64).ravel()
    diff = np.abs(a - b)
    limit = 0.25 * np.abs(b) + 0.5
    expected_cmp = [
        0, 0, 0, 0,
        int((diff > limit).sum()), 8, 7,
        diff.max(), (diff[b != 0] / np.abs(b[b != 0])).max(),
        (a * b).sum(), (a * a).sum(), (b * b).sum(),
        (diff / limit).max(), 0,
    ]  # fmt: skip
    stats, shape, cmp, sx, sy, both, both_stats = finite
    # MeasurePair: ComparePair's numbers and TensorStats' of the candidate, both passes
    same = [(both, cmp), (both_stats, stats), (general[5], general[2]), (general[6], general[0])]
    ok = all(np.array_equal(a, b, equal_nan=True) for a, b in same)
    ok = ok and (
        _close(stats, expected_stats)
        and _close(cmp, expected_cmp)
        and shape.tolist() == [2, 4]
        and sx.tolist() == sy.tolist() == [2, 4]
    )
    stats, _, cmp, _, _, _, _ = general
    # NaN at x[0]: ignored by min/max, counted; Inf at y[1]: one mismatch more.
    ok = ok and stats[5] == 1 and stats[6] == 0 and stats[0] == -3.0 and math.isnan(stats[2])
    # born: the NaN at x[0] where y is finite
    ok = ok and cmp[0] == 1 and cmp[3] == 1 and cmp[5] == 6 and cmp[13] == 1
    return bool(ok)


def _close(got, expected) -> bool:
    return len(got) == len(expected) and all(
        math.isclose(float(g), float(e), rel_tol=1e-12, abs_tol=1e-300)
        for g, e in zip(got, expected, strict=True)
    )


__all__ = [
    "ARENA_WEIGHTS",
    "COMPARE",
    "COMPARE_TYPES",
    "DOMAIN",
    "MEASURE",
    "STATS",
    "STATS_TYPES",
    "STORED",
    "available",
    "library",
    "measuring_arena",
    "plain_arena",
]
