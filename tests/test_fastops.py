"""surgeon.fastops: the kernel library's ComparePair and TensorStats give the numbers
compare_arrays, surgeon.precision's severity and numpy give (independent references), on
random, hostile and large tensors; the library is built where CI asks for it, checked
before use, and can be switched off."""

from __future__ import annotations

import math
import os

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_compare_in_graph import (
    DTYPE_PAIRS,
    _expected,
    _random_pair,
    _random_tolerance,
    _same,
)
from test_ref_speed_isolated import _arrays, _excess_and_born
from test_statistics import check

from surgeon import fastops
from surgeon.compare import Tolerance, as_reference_dtype, compare_arrays
from surgeon.compare.in_graph import (
    add_fused_comparison,
    diff_from_outputs,
    needs_general,
    severity_from_outputs,
)
from surgeon.model import Model
from surgeon.runner import RunOptions, run
from surgeon.statistics.definition import stats_from_array
from surgeon.statistics.in_graph import _stats_from_numbers

pytestmark = pytest.mark.skipif(
    not fastops.available(), reason="surgeon's kernel library is not built here"
)

_ELEM = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16,
}


def _model(nodes, inputs, outputs, initializers=()) -> Model:
    graph = helper.make_graph(nodes, "fastops", inputs, [], list(initializers))
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(fastops.DOMAIN, 1)],
    )
    proto.ir_version = 8
    return Model(proto)


def _compare(a: np.ndarray, b: np.ndarray, tolerance: Tolerance, severity: bool = False):
    graph = helper.make_graph(
        [],
        "g",
        [
            helper.make_tensor_value_info("a", _ELEM[a.dtype], None),
            helper.make_tensor_value_info("b", _ELEM[b.dtype], None),
        ],
        [],
    )
    out = add_fused_comparison(
        graph, "a", _ELEM[a.dtype], "b", _ELEM[b.dtype], tolerance, "c/", severity=severity
    )
    model = _model(list(graph.node), list(graph.input), out.names(), graph.initializer)
    got = run(model, {"a": a, "b": b}, options=RunOptions())
    assert not needs_general(out, got)
    return out, got


def _diff(a, b, tolerance):
    out, got = _compare(a, b, tolerance)
    return diff_from_outputs(out, got, tolerance, name="t", reference="t")


def test_the_library_is_built_where_ci_asks_for_it():
    # .ci/run sets SURGEON_REQUIRE_FASTOPS=1: a build that silently fell back to the
    # ONNX nodes (no compiler found) fails there instead of only running slower.
    if os.environ.get("SURGEON_REQUIRE_FASTOPS") != "1":
        pytest.skip("SURGEON_REQUIRE_FASTOPS is not set")
    assert fastops.library() is not None and fastops.available()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SURGEON_FASTOPS", "0")
    assert not fastops.available()
    monkeypatch.setenv("SURGEON_FASTOPS", "1")
    assert fastops.available()


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS)
def test_comparison_equals_compare_arrays(dtypes):
    rng = np.random.default_rng(11)
    for _ in range(60):
        a, b = _random_pair(rng, dtypes)
        tolerance = _random_tolerance(rng)
        _same(_diff(a, b, tolerance), _expected(a, b, tolerance))


def test_comparison_edge_cases():
    t = Tolerance(atol=1e-5, rtol=1e-3)
    f32, f16 = np.float32, np.float16
    cases = [
        (np.zeros((2, 3), f32), np.zeros((2, 3), f32)),
        (np.zeros((2, 3), f32), np.ones((2, 3), f32)),
        (np.full(4, np.nan, f32), np.full(4, np.nan, f32)),
        (np.array([np.inf, 1], f32), np.array([-np.inf, 1], f32)),
        (np.array([np.inf, -np.inf], f32), np.array([np.inf, -np.inf], f32)),
        (np.array([3.0e38, -3.0e38], f32), np.array([-3.0e38, 3.0e38], f32)),
        (np.array([1e-45, 0, -0.0], f32), np.array([0, 1e-45, 0.0], f32)),
        (np.zeros((0, 3), f32), np.zeros((0, 3), f32)),
        (np.zeros((3, 2), f32), np.zeros((2, 3), f32)),
        (np.zeros((2,), f32), np.zeros((3,), f32)),
        (np.array([np.nan, 1, 2], f32), np.array([1, 2], f32)),  # other sizes: NaN still counted
        (np.array(2.5, f32), np.array(2.5, f32)),
        (np.array([70000.0, 65519.0, 65520.0], f32), np.array([1.0, 2.0, 3.0], f16)),
        (np.array([65504.0, -65504.0], f16), np.array([65504.0, 65504.0], f16)),
        (np.array([6e-8, 0.0], f16), np.array([0.0, 6e-8], f16)),
    ]
    for a, b in cases:
        _same(_diff(a, b, t), _expected(a, b, t))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_difference_equal_to_the_limit_is_within(dtype):
    # |a - b| == atol + rtol * |b| exactly (every number here is exact in binary)
    t = Tolerance(atol=0.5, rtol=0.25)
    b = np.array([2.0, 2.0, -4.0, 0.0, 8.0] * 4, dtype)
    a = np.array([3.0, 1.0, -2.5, 0.5, 10.5] * 4, dtype)
    diff = _diff(a, b, t)
    assert diff.mismatches == 0 == _expected(a, b, t).mismatches
    a[-1] = np.nextafter(a[-1], dtype(np.inf))  # one ulp beyond: one mismatch
    diff = _diff(a, b, t)
    assert diff.mismatches == 1 == _expected(a, b, t).mismatches


@pytest.mark.parametrize("size", [1, 7, 8, 127, 128, 129, 1000, 128 * 1024 + 3])
def test_comparison_at_block_and_lane_boundaries(size):
    # The kernel sums in blocks of 128 elements over 8 lanes: sizes around those.
    rng = np.random.default_rng(size)
    b = (rng.standard_normal(size) * 100).astype(np.float32)
    a = (b + rng.standard_normal(size).astype(np.float32) * 1e-3).astype(np.float32)
    a[size // 2] = b[size // 2] + 1  # one clear mismatch, in the middle
    for t in (Tolerance(1e-4, 1e-4), Tolerance(0.0, 0.0)):
        _same(_diff(a, b, t), _expected(a, b, t))
        with_nan = a.copy()
        with_nan[-1] = np.nan  # the last element, in the tail
        _same(_diff(with_nan, b, t), _expected(with_nan, b, t))


def test_float32_rounded_to_float16_as_numpy_rounds():
    """A float32 candidate against a float16 reference is rounded to float16 first, by
    the kernel's own conversion: every value numpy rounds to the reference compares
    equal (atol = rtol = 0), over random bit patterns and the boundary cases."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32)
    a = bits.view(np.float32)
    a = a[~np.isnan(a)]
    h = np.float16
    edges = [65504.0, 65519.996, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001]
    edges += [2.0**-14, 2.0**-14 - 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2049.0, 2051.0]
    edges += [float(np.nextafter(np.float32(x), np.float32(np.inf))) for x in edges]
    a = np.concatenate([a, np.array(edges + [-e for e in edges], np.float32)])
    with np.errstate(over="ignore"):
        b = a.astype(h)
    diff = _diff(a, b, Tolerance(0.0, 0.0))
    assert diff.mismatches == 0 and diff.max_abs == 0.0


@pytest.mark.parametrize("kind", ["finite", "nonfinite", "float16", "wider", "overflow"])
@pytest.mark.parametrize("tolerance", [Tolerance(1e-4, 1e-4), Tolerance(1e-2, 0.0)], ids=str)
def test_severity_equals_numpys(kind, tolerance):
    with np.errstate(over="ignore"):
        actual, expected = _arrays(np.random.default_rng(3), kind)
    out, got = _compare(actual, expected, tolerance, severity=True)
    assert severity_from_outputs(out, got) == _excess_and_born(actual, expected, tolerance)
    want = compare_arrays(as_reference_dtype(actual, expected)[0], expected, tolerance)
    _same(diff_from_outputs(out, got, tolerance, name="", reference=""), want)


def _stats(x: np.ndarray):
    node = helper.make_node(fastops.STATS, ["x"], ["s", "shape"], domain=fastops.DOMAIN)
    model = _model(
        [node], [helper.make_tensor_value_info("x", _ELEM[x.dtype], None)], ["s", "shape"]
    )
    got = run(model, {"x": x}, options=RunOptions())
    return _stats_from_numbers(
        "x", "n", "Identity", 0, got["s"].tolist(), got["shape"], x.dtype.name
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("size", [0, 1, 9, 128, 1031, 40_000])
def test_statistics_equal_numpy(dtype, size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 3 + 1).astype(dtype)
    if size > 8:
        x[::7] = 0
        x[3], x[5] = np.nan, -np.inf
    check(_stats(x), x)
    check(_stats(x[: size // 2 * 2].reshape(2, -1)), x[: size // 2 * 2].reshape(2, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
def test_statistics_of_hostile_values(dtype):
    info = ml_dtypes.finfo(dtype)
    values = [
        [np.nan] * 5,
        [np.inf, -np.inf],
        [float(info.max), float(info.max)],  # float64: the sum overflows, the counts not
        [float(info.smallest_subnormal), -float(info.smallest_subnormal), 0.0, -0.0],
        [-8.764] * 300,
        [1000.0 + i * 0.01 for i in range(1000)],
    ]
    for items in values:
        with np.errstate(over="ignore"):
            x = np.array(items, np.float64).astype(dtype)
        check(_stats(x), x)
        assert _stats(x).flags == stats_from_array("x", "n", "Identity", 0, x).flags


def test_statistics_of_a_large_offset_tensor_keep_numpys_std():
    # Two passes (mean, then squared deviations): no cancellation far from zero.
    x = (1000.0 + np.random.default_rng(1).standard_normal(300_000) * 0.01).astype(np.float32)
    s = _stats(x)
    v = x.astype(np.float64)
    assert s.mean == pytest.approx(float(v.mean()), rel=1e-14)
    assert s.std == pytest.approx(float(v.std()), rel=1e-9)
    assert math.isfinite(s.std)


def test_threads_do_not_change_the_numbers():
    # Spans of 2**16 elements are combined in their order, whatever thread ran them.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(5 * 2**16 + 11) * 10 + 3).astype(np.float32)
    y = (x + rng.standard_normal(x.size).astype(np.float32) * 1e-3).astype(np.float32)
    tol = onnx.numpy_helper.from_array(np.array([1e-4, 1e-4]), "tol")
    got = []
    for threads in (1, 2, 3, 8):
        nodes = [
            helper.make_node(
                fastops.STATS, ["x"], ["s", "shape"], domain=fastops.DOMAIN, threads=threads
            ),
            helper.make_node(
                fastops.COMPARE,
                ["x", "y", "tol"],
                ["c", "cs", "ys"],
                domain=fastops.DOMAIN,
                threads=threads,
                severity=1,
            ),
        ]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "y")]
        model = _model(nodes, inputs, ["s", "c"], [tol])
        values = run(model, {"x": x, "y": y}, options=RunOptions())
        got.append((values["s"].tobytes(), values["c"].tobytes()))
    assert len(set(got)) == 1
    s = np.frombuffer(got[0][0])
    v = x.astype(np.float64)
    assert s[2] == pytest.approx(v.mean(), rel=1e-14)


@pytest.mark.parametrize("order", ["rising", "falling", "one_ulp_late"])
def test_maxima_of_quotients_equal_dividing_every_element(order):
    """max_rel and the excess (maxima kept per lane and span, combined at the end) equal
    compare_arrays's and the severity's whether a new maximum comes in every block, never
    after the first, or once, late, by one ulp."""
    n = 40 * 128 + 5
    b = np.linspace(1.0, 2.0, n).astype(np.float32)
    if order == "one_ulp_late":
        a = (b * np.float32(1.0 + 2.0**-10)).astype(np.float32)
        k = n - 700
        a[k] = np.nextafter(a[k], np.float32(np.inf))  # its quotient: one step above
    else:
        step = np.linspace(1e-4, 1e-2, n) if order == "rising" else np.linspace(1e-2, 1e-4, n)
        a = (b * (1 + step)).astype(np.float32)
    t = Tolerance(atol=1e-3, rtol=1e-3)
    out, got = _compare(a, b, t, severity=True)
    diff = diff_from_outputs(out, got, t, name="t", reference="t")
    want = compare_arrays(a, b, t, name="t", reference="t")
    assert diff.max_rel == want.max_rel and diff.max_abs == want.max_abs
    assert severity_from_outputs(out, got) == _excess_and_born(a, b, t)


@pytest.mark.parametrize(
    "dtypes",
    [(np.float32, np.float32), (np.float16, np.float16), (np.float16, np.float32)]
    + [(np.float32, np.float16)],
)
def test_measure_pair_is_compare_pair_and_tensor_stats_in_one(dtypes):
    """MeasurePair gives ComparePair's outputs and TensorStats' numbers of the candidate,
    bit for bit, whichever passes run (fast, general, other sizes)."""
    rng = np.random.default_rng(2)
    tol = onnx.numpy_helper.from_array(np.array([1e-3, 1e-3]), "tol")
    for _ in range(30):
        a, b = _random_pair(rng, dtypes)
        if rng.random() < 0.3:  # large: several spans and threads
            b = (rng.standard_normal(3 * 2**16 + 9) * 4).astype(dtypes[1])
            a = (b.astype(np.float64) * 1.001).astype(dtypes[0])
        nodes = [
            helper.make_node(fastops.STATS, ["a"], ["s", "sa0"], domain=fastops.DOMAIN),
            helper.make_node(
                fastops.COMPARE, ["a", "b", "tol"], ["c", "sa1", "sb1"], domain=fastops.DOMAIN
            ),
            helper.make_node(
                fastops.MEASURE,
                ["a", "b", "tol"],
                ["m", "sa2", "sb2", "ms"],
                domain=fastops.DOMAIN,
            ),
        ]
        inputs = [
            helper.make_tensor_value_info("a", _ELEM[a.dtype], None),
            helper.make_tensor_value_info("b", _ELEM[b.dtype], None),
        ]
        got = run(
            _model(nodes, inputs, ["s", "c", "m", "ms", "sa1", "sa2", "sb1", "sb2"], [tol]),
            {"a": a, "b": b},
            options=RunOptions(),
        )
        assert np.array_equal(got["m"], got["c"], equal_nan=True)
        assert np.array_equal(got["ms"], got["s"], equal_nan=True)
        assert got["sa1"].tolist() == got["sa2"].tolist() == list(a.shape)
        assert got["sb1"].tolist() == got["sb2"].tolist() == list(b.shape)
