"""surgeon.compare.in_graph: the numbers of a pair compared inside onnxruntime equal
compare_arrays's on the same arrays (the cosine to 1e-12: onnxruntime sums in its order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from surgeon.compare import Tolerance, compare_arrays
from surgeon.compare.in_graph import (
    add_comparison,
    add_fast_comparison,
    diff_from_outputs,
    in_graph_comparable,
    needs_general,
)

_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def _in_graph(a: np.ndarray, b: np.ndarray, tolerance: Tolerance, build=add_comparison, **extra):
    import onnxruntime as ort

    ta, tb = _TYPES[a.dtype.type], _TYPES[b.dtype.type]
    graph = helper.make_graph(
        [],
        "g",
        [
            helper.make_tensor_value_info("a", ta, None),
            helper.make_tensor_value_info("b", tb, None),
        ],
        [],
    )
    outs = build(graph, "a", ta, "b", tb, tolerance, "cmp/", **extra)
    for o in outs.names():
        graph.output.append(helper.make_empty_tensor_value_info(o))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(outs.names(), session.run(outs.names(), {"a": a, "b": b}), strict=True))
    if build is add_fast_comparison and needs_general(outs, got):
        return None
    return diff_from_outputs(outs, got, tolerance, name="t", reference="t")


def _expected(a, b, tolerance):
    if a.dtype != b.dtype:
        with np.errstate(over="ignore"):
            a = a.astype(b.dtype)  # as the layer comparison casts the candidate
    return compare_arrays(a, b, tolerance, name="t", reference="t")


def _same(got, want):
    g, w = got.to_dict(), want.to_dict()
    gc, wc = g.pop("cosine", None), w.pop("cosine", None)
    assert g == w
    if wc is None or gc is None:
        assert gc == wc
    else:
        assert math.isclose(gc, wc, rel_tol=1e-12, abs_tol=1e-12)


def _random_pair(rng, dtypes):
    shape = tuple(int(d) for d in rng.integers(0, 5, size=rng.integers(0, 4)))
    scale = 10.0 ** rng.integers(-30, 4)
    b = np.asarray(rng.standard_normal(shape) * scale).astype(dtypes[1])
    noise = rng.standard_normal(shape) * scale * 10.0 ** rng.integers(-8, 0)
    a = np.asarray(b.astype(np.float64) + noise).astype(dtypes[0])
    for x in (a, b):
        flat = x.reshape(-1)
        if flat.size and rng.random() < 0.4:
            k = rng.integers(0, flat.size, size=rng.integers(1, 3))
            flat[k] = rng.choice([np.nan, np.inf, -np.inf, 0.0], size=k.size)
    if a.size and rng.random() < 0.2:
        a.reshape(-1)[:] = b.reshape(-1).astype(a.dtype)  # equal, NaNs included
    if rng.random() < 0.1:
        a = a.reshape(-1)  # a shape mismatch (when the rank was not 1)
    return a, b


# (candidate, reference) dtypes compared in the graph (test_fastops takes them too)
DTYPE_PAIRS = [
    (np.float32, np.float32),
    (np.float16, np.float16),
    (np.float16, np.float32),
    (np.float32, np.float16),
]


def _random_tolerance(rng) -> Tolerance:
    return Tolerance(
        atol=float(10.0 ** rng.integers(-9, 0)), rtol=float(10.0 ** rng.integers(-6, 0))
    )


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS)
def test_numbers_equal_compare_arrays(dtypes):
    rng = np.random.default_rng(7)
    for _ in range(25):
        a, b = _random_pair(rng, dtypes)
        tolerance = _random_tolerance(rng)
        _same(_in_graph(a, b, tolerance), _expected(a, b, tolerance))


def test_edge_cases():
    t = Tolerance(atol=1e-5, rtol=1e-3)
    cases = [
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)),
        (np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)),
        (np.full(4, np.nan, np.float32), np.full(4, np.nan, np.float32)),
        (np.array([np.inf, 1], np.float32), np.array([-np.inf, 1], np.float32)),
        (np.array([3.0e38, -3.0e38], np.float32), np.array([-3.0e38, 3.0e38], np.float32)),
        (np.array([1e-45, 0], np.float32), np.array([0, 1e-45], np.float32)),
        (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
        (np.zeros((3, 2), np.float32), np.zeros((2, 3), np.float32)),
        (np.zeros((2,), np.float32), np.zeros((3,), np.float32)),
        (np.array(2.5, np.float32), np.array(2.5, np.float32)),
        (np.array([70000.0], np.float32), np.array([1.0], np.float16)),
    ]
    for a, b in cases:
        _same(_in_graph(a, b, t), _expected(a, b, t))


def test_refused_pairs():
    assert in_graph_comparable(TensorProto.FLOAT16, TensorProto.FLOAT, Tolerance())
    assert not in_graph_comparable(TensorProto.FLOAT, TensorProto.FLOAT, Tolerance(exact=True))
    assert not in_graph_comparable(TensorProto.INT64, TensorProto.INT64, Tolerance())
    assert not in_graph_comparable(TensorProto.DOUBLE, TensorProto.DOUBLE, Tolerance())


@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float16, np.float32)])
def test_fast_nodes_equal_compare_arrays_or_defer(dtypes):
    """The finite-only nodes give compare_arrays's numbers, or defer (NaN/Inf present)."""
    rng = np.random.default_rng(11)
    deferred = 0
    for _ in range(30):
        a, b = _random_pair(rng, dtypes)
        if a.shape != b.shape or a.size == 0:
            continue  # the fast nodes are only built for equal, known, non-empty shapes
        tolerance = Tolerance(atol=1e-4, rtol=float(10.0 ** rng.integers(-6, 0)))
        # every other pair with its size: the mismatches counted in float32
        extra = {"size": a.size, "rank": a.ndim} if rng.random() < 0.5 else {}
        got = _in_graph(a, b, tolerance, add_fast_comparison, **extra)
        finite = np.isfinite(a.astype(np.float64)).all() and np.isfinite(b).all()
        if got is None:
            assert not finite
            deferred += 1
        else:
            assert finite
            _same(got, _expected(a, b, tolerance))
    assert deferred


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fast_nodes_relative_error_at_zero_tiny_and_huge_references(dtype):
    """max_rel leaves zero references out (the denominator is inf there) and divides by
    every other |b| exactly, down to the smallest subnormal and up to the largest value."""
    info = np.finfo(dtype)
    tiny = np.array(info.smallest_subnormal, dtype)
    cases = [
        (np.array([1.0, 0.0, 5.0], dtype), np.array([0.0, 0.0, 4.0], dtype)),
        (np.array([2 * tiny, 3.0], dtype), np.array([tiny, 3.0], dtype)),
        (np.array([info.max, -info.max], dtype), np.array([info.max / 2, -info.max], dtype)),
        (np.array([tiny, 0.0], dtype), np.array([0.0, tiny], dtype)),
        (np.zeros(3, dtype), np.zeros(3, dtype)),
    ]
    t = Tolerance(atol=1e-5, rtol=1e-3)
    for a, b in cases:
        got = _in_graph(a, b, t, add_fast_comparison)
        assert got is not None
        _same(got, _expected(a, b, t))


@pytest.mark.parametrize("count_in_float32", [False, True])
def test_fast_nodes_count_and_cosine_on_large_and_lopsided_pairs(count_in_float32):
    """The fast nodes against compare_arrays: a mismatch count in the millions (in float32
    when the size is given), exact; the cosine of tensors far apart in size (a copy
    scaled by 2**-70 included), of opposite directions and of near twins, within 1e-12."""
    rng = np.random.default_rng(3)
    b = rng.standard_normal(3_000_000).astype(np.float32)
    a = b.copy()
    a[::2] += np.float32(1.0)  # 1.5M mismatches, none at the tolerance's edge
    t = Tolerance(atol=1e-4, rtol=1e-3)
    extra = {"size": a.size} if count_in_float32 else {}
    got = _in_graph(a, b, t, add_fast_comparison, **extra)
    assert got.mismatches == 1_500_000
    _same(got, _expected(a, b, t))
    small = rng.standard_normal(1000).astype(np.float32)
    for a, b in [
        (small * np.float32(1e4), small + rng.standard_normal(1000).astype(np.float32)),
        (small * np.float32(2.0**-70), small),
        (-small, small),
        (small + np.float32(1e-6), small),
        (small, small * np.float32(1e-4)),
    ]:
        _same(_in_graph(a, b, t, add_fast_comparison, size=a.size), _expected(a, b, t))


def test_a_float32_count_planned_below_2_24_elements_that_ran_above_is_compared_again():
    """The float32 mismatch count is exact below 2**24 elements only: a pair planned
    below and run above (a planned shape that did not hold) defers to the general nodes."""
    b = np.zeros(2**24 + 1, np.float32)
    a = b.copy()
    a[::2] = 1.0
    t = Tolerance(atol=1e-4, rtol=1e-3)
    assert _in_graph(a, b, t, add_fast_comparison, size=10) is None  # planned: 10
    assert _in_graph(a, b, t, add_fast_comparison).mismatches == 2**23 + 1  # float64 count
