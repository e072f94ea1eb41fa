"""compare_arrays and DiffReport, checked against numbers computed here with numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surgeon.compare import (
    EXACT,
    DiffReport,
    TensorDiff,
    Tolerance,
    compare_arrays,
    compare_named,
    extra,
    missing,
)
from surgeon.errors import SurgeonError


def _pair(seed: int = 0, n: int = 1000):
    """A reference with some exact zeros, and a candidate with small and large errors."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(n).astype(np.float32)
    ref[::50] = 0.0
    cand = ref + rng.standard_normal(n).astype(np.float32) * 1e-4
    cand[7] += 0.5
    return cand, ref


@pytest.mark.parametrize("atol, rtol", [(1e-5, 1e-5), (1e-4, 1e-3), (0.0, 1e-2), (1e-3, 0.0)])
def test_numbers_match_numpy(atol, rtol):
    cand, ref = _pair()
    d = compare_arrays(cand, ref, Tolerance(atol, rtol), name="y")
    a, b = cand.astype(np.float64), ref.astype(np.float64)
    err = np.abs(a - b)
    nz = b != 0
    assert d.max_abs == pytest.approx(err.max(), rel=1e-12)
    assert d.max_rel == pytest.approx((err[nz] / np.abs(b[nz])).max(), rel=1e-12)
    assert d.mismatches == int(np.sum(err > atol + rtol * np.abs(b)))
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert d.cosine == pytest.approx(cosine, rel=1e-12)
    assert d.size == 1000 and d.shape == [1000] and d.dtype == "float32"
    assert d.status == ("mismatch" if d.mismatches else "ok")
    assert d.mismatches > 0  # the +0.5 element fails every tolerance above


def test_max_rel_ignores_zero_reference_elements():
    ref = np.array([0.0, 2.0, 4.0], np.float32)
    cand = np.array([1.0, 2.2, 4.0], np.float32)
    d = compare_arrays(cand, ref)
    assert d.max_abs == pytest.approx(1.0)
    assert d.max_rel == pytest.approx(0.1, rel=1e-6)  # 0.2 / 2, not 1 / 0


def test_identical_passes_and_is_truthy():
    _, ref = _pair()
    d = compare_arrays(ref.copy(), ref, name="y")
    assert d and d.passed and d.status == "ok"
    assert d.max_abs == 0 and d.max_rel == 0 and d.mismatches == 0
    assert d.cosine == pytest.approx(1.0)


def test_nan_and_inf_counted_on_each_side():
    cand = np.array([np.nan, np.nan, np.inf, 1.0, 2.0, 3.0], np.float32)
    ref = np.array([np.nan, 0.0, -np.inf, np.inf, np.inf, 3.5], np.float32)
    d = compare_arrays(cand, ref)
    assert (d.nan, d.reference_nan) == (2, 1)
    assert (d.inf, d.reference_inf) == (1, 3)
    # Errors are computed over the elements finite on both sides: only the last one.
    assert d.max_abs == pytest.approx(0.5)
    # NaN==NaN matches; the other five differ.
    assert d.mismatches == 5 and d.status == "mismatch"


def test_nan_matches_nan_and_inf_matches_same_inf():
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    d = compare_arrays(x.copy(), x)
    assert d.passed and d.mismatches == 0
    assert d.max_abs == 0.0


@pytest.mark.parametrize(
    "cand, ref",
    [
        (np.inf, -np.inf),  # |inf - -inf| <= atol + rtol*inf would wrongly hold
        (1.0, np.inf),
        (np.inf, 1.0),
        (np.nan, 1.0),
        (1.0, np.nan),
        (np.nan, np.inf),
    ],
)
def test_non_finite_must_match_exactly_even_with_a_loose_tolerance(cand, ref):
    d = compare_arrays(
        np.array([cand], np.float32), np.array([ref], np.float32), Tolerance(1.0, 1.0)
    )
    assert d.status == "mismatch" and d.mismatches == 1


def test_shape_mismatch():
    d = compare_arrays(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), name="y")
    assert d.status == "shape" and not d
    assert d.shape == [2, 3] and d.reference_shape == [3, 2]
    assert d.mismatches == d.size == 6
    assert "[2, 3]" in d.message and "[3, 2]" in d.message


def test_dtype_mismatch_fails_even_when_values_agree():
    x = np.arange(6, dtype=np.float32)
    d = compare_arrays(x.astype(np.float64), x)
    assert d.status == "dtype" and not d
    assert d.dtype == "float64" and d.reference_dtype == "float32"
    assert "float64" in d.message and "float32" in d.message
    assert d.max_abs == 0


def test_exact_is_bitwise_zero_signs():
    pos, neg = np.array([0.0], np.float32), np.array([-0.0], np.float32)
    assert compare_arrays(neg, pos).passed  # numerically equal
    d = compare_arrays(neg, pos, EXACT)
    assert d.status == "mismatch" and d.mismatches == 1


def test_exact_is_bitwise_nan_payloads():
    quiet = np.array([0x7FC00000], np.uint32).view(np.float32)
    payload = np.array([0x7FC00001], np.uint32).view(np.float32)
    assert np.isnan(quiet[0]) and np.isnan(payload[0])
    assert compare_arrays(payload, quiet).passed  # NaN matches NaN by value
    assert compare_arrays(quiet.copy(), quiet, EXACT).passed
    assert compare_arrays(payload, quiet, EXACT).mismatches == 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_exact_catches_one_ulp(dtype):
    x = np.linspace(-3, 3, 101).astype(dtype)
    y = x.copy()
    y[10] = np.nextafter(y[10], dtype(np.inf))
    assert compare_arrays(y, x, Tolerance(1e-2, 1e-2)).passed
    d = compare_arrays(y, x, EXACT)
    assert d.mismatches == 1 and not d


def test_exact_with_different_dtypes_is_a_dtype_failure():
    x = np.arange(4, dtype=np.int32)
    d = compare_arrays(x.astype(np.int64), x, EXACT)
    assert d.status == "dtype" and d.mismatches == 0


def test_exact_scalar_and_non_contiguous():
    assert compare_arrays(np.float32(2.5), np.float32(2.5), EXACT).passed
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert compare_arrays(x[:, ::2], np.ascontiguousarray(x[:, ::2]), EXACT).passed


def test_bool_tensors():
    ref = np.array([True, False, True, True])
    cand = np.array([True, True, True, False])
    d = compare_arrays(cand, ref)
    assert d.mismatches == 2 and d.dtype == "bool"
    assert compare_arrays(ref.copy(), ref, EXACT).passed


def test_int_tensors():
    ref = np.array([0, 5, -7, 2**40], np.int64)
    cand = ref.copy()
    cand[1] = 6
    d = compare_arrays(cand, ref)
    assert d.mismatches == 1 and d.max_abs == 1.0
    assert d.max_rel == pytest.approx(0.2)
    assert compare_arrays(cand, ref, EXACT).mismatches == 1


def test_str_tensors():
    ref = np.array(["cat", "dog", "cow"], dtype=object)
    assert compare_arrays(np.array(["cat", "dog", "cow"]), ref).passed  # <U3 vs object
    d = compare_arrays(np.array(["cat", "dig", "cow"], dtype=object), ref)
    assert d.status == "mismatch" and d.mismatches == 1
    d = compare_arrays(np.array(["cat"], dtype=object), ref)
    assert d.status == "shape" and d.mismatches == 3


def test_str_against_number_is_a_dtype_failure():
    d = compare_arrays(np.array(["1", "2"], dtype=object), np.array([1, 2], np.int64))
    assert d.status == "dtype"


def test_empty_tensors():
    d = compare_arrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert d.passed and d.size == 0
    assert (d.max_abs, d.max_rel, d.cosine) == (0.0, 0.0, 1.0)
    d = compare_arrays(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32))
    assert d.status == "shape"


def test_cosine_with_zero_vectors():
    z = np.zeros(4, np.float32)
    assert compare_arrays(z, z.copy()).cosine == 1.0
    assert compare_arrays(np.ones(4, np.float32), z, Tolerance(10, 0)).cosine == 0.0


@pytest.mark.parametrize("atol, rtol", [(-1e-5, 1e-5), (1e-5, -1.0), (float("nan"), 0.0)])
def test_unusable_tolerance_is_a_user_error(atol, rtol):
    with pytest.raises(SurgeonError, match="must be non-negative") as e:
        Tolerance(atol, rtol)
    assert e.value.exit_code == 2


def test_infinite_tolerance_accepts_finite_values_and_serialises():
    tol = Tolerance(float("inf"), 0.0)
    assert compare_arrays(np.array([1e30], np.float32), np.array([0.0], np.float32), tol).passed
    assert tol.to_dict() == {"atol": "inf", "rtol": 0.0, "exact": False, "cast": False}


def _report(tensors, tolerance=Tolerance()):
    return DiffReport(
        title="t", candidate="c.onnx", reference="r.onnx", tensors=tensors, tolerance=tolerance
    )


def test_report_truthiness_outputs_and_failures():
    ok = compare_arrays(np.ones(3), np.ones(3), name="a")
    bad = compare_arrays(np.zeros(3), np.ones(3), name="b")
    assert _report([ok])
    report = _report([ok, bad])
    assert not report and not report.passed
    assert report.outputs["b"].max_abs == 1.0
    assert [t.name for t in report.failures] == ["b"]


def test_a_report_that_compared_nothing_never_passes():
    # The rule sits in DiffReport, so every verification (diff, extract, tap, debug's tap
    # check, merge, rename, reshape-io) inherits it.
    empty = _report([])
    assert not empty and not empty.passed
    assert empty.summary().startswith("FAIL: no tensor was compared")
    assert empty.to_dict()["passed"] is False


def test_summary_lines():
    ok = compare_arrays(np.ones(3), np.ones(3), name="a")
    assert _report([ok]).summary() == (
        "PASS: 1 tensor(s) within atol=0.0001, rtol=0.0001 (equal values)"
    )
    near = compare_arrays(np.ones(3) + 1e-6, np.ones(3), name="a")
    assert _report([near]).summary() == (
        "PASS: 1 tensor(s) within atol=0.0001, rtol=0.0001 (max abs error 1e-06)"
    )
    assert _report([ok], EXACT).summary() == "PASS: 1 tensor(s) bit-identical"
    bad = [missing(f"m{i}", f"m{i}") for i in range(7)]
    text = _report([ok, *bad]).summary()
    assert text.startswith("FAIL: 7 of 8 tensor(s) differ: `m0` (missing)")
    assert "`m4` (missing)" in text and "`m5`" not in text and text.endswith("and 2 more")


def test_to_dict_is_strict_json_with_non_finite_numbers():
    # Zero reference with an error: max_rel is infinite; an all-NaN pair has no max_abs.
    inf_rel = compare_arrays(np.array([1.0]), np.array([0.0]), name="z")
    assert inf_rel.max_rel == float("inf")
    all_nan = compare_arrays(np.array([np.nan]), np.array([1.0]), name="n")
    manual = TensorDiff(name="q", reference="q", status="mismatch", max_abs=float("nan"))
    report = _report(
        [inf_rel, all_nan, manual, missing("m", "m"), extra("e", np.zeros(2))],
        Tolerance(float("inf"), 1e-3),
    )
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["schema"] == "surgeon.diff/1" and data["passed"] is False
    rows = {t["name"]: t for t in data["tensors"]}
    assert rows["z"]["max_rel"] == "inf"
    assert rows["q"]["max_abs"] is None
    assert rows["e"]["status"] == "extra" and rows["e"]["shape"] == [2]
    assert data["tolerance"]["atol"] == "inf"


def test_compare_named_missing_and_absent_reference():
    actual = {"a": np.ones(2), "b": np.ones(2)}
    expected = {"a": np.ones(2), "c": np.ones(2)}
    diffs = compare_named(actual, expected, [("a", "a"), ("x", "c"), ("b", "nope")])
    assert [d.status for d in diffs] == ["ok", "missing", "extra"]
    assert diffs[1].reference_shape == [2]
    assert "`nope`" in diffs[2].message
