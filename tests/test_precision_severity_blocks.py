"""surgeon.precision.severity's blocked pass against the whole-tensor numpy formula it
replaces: the same excess and born counts on finite, NaN/Inf, overflowing, integer,
float16-against-float32 and empty tensors, at every tolerance kind, across block
boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surgeon.compare import Tolerance
from surgeon.precision import severity
from surgeon.precision.severity import _excess_and_born


def whole_tensor(actual, expected, tolerance: Tolerance) -> tuple[float, int]:
    """The formula written over whole tensors, in float64 (the independent reference)."""
    a = actual.astype(np.float64).ravel()
    b = expected.astype(np.float64).ravel()
    born = int(np.count_nonzero(~np.isfinite(a) & np.isfinite(b)))
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return 0.0, born
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        diff = np.abs(a[finite] - b[finite])
        limit = 0.0 if tolerance.exact else tolerance.atol + tolerance.rtol * np.abs(b[finite])
        ratio = np.where(diff == 0, 0.0, diff / limit)
    if np.isnan(ratio).all():
        return math.inf, born
    return float(np.nanmax(ratio)), born


TOLERANCES = [
    Tolerance(1e-4, 1e-4),
    Tolerance(0.0, 1e-3),
    Tolerance(0.0, 0.0),
    Tolerance(exact=True),
    Tolerance(1e-2, 0.0),
]


def cases(rng):
    n = 3 * 4096 + 17
    b = rng.standard_normal(n).astype(np.float32)
    b[::7] = 0  # zero references: limit atol only, or 0
    a = (b + rng.standard_normal(n).astype(np.float32) * 1e-4).astype(np.float32)
    a[::11] = b[::11]  # exact elements
    yield "finite", a, b
    yield "equal", b.copy(), b
    half = a.astype(np.float16)
    yield "float16 vs float32", half, b
    with np.errstate(over="ignore"):
        yield "float16 overflow", (b * 1e5).astype(np.float16), b * 1e5
    nan = a.copy()
    nan[5] = np.nan
    nan[9000] = np.inf
    ref = b.copy()
    ref[9001] = -np.inf
    ref[5000] = np.nan
    nan[5000] = np.nan
    yield "nan and inf", nan, ref
    all_nan = np.full(100, np.nan, np.float32)
    yield "nothing finite", all_nan, b[:100]
    big = np.array([1e308, -1e308, 1.0, 0.0])
    yield "float64 difference overflows", big, -big
    yield "integers", np.arange(20, dtype=np.int64), np.arange(20, dtype=np.int64)[::-1].copy()
    yield "empty", np.zeros(0, np.float32), np.zeros(0, np.float32)
    yield "2-d", a[: 60 * 70].reshape(60, 70), b[: 60 * 70].reshape(60, 70)


@pytest.mark.parametrize("tolerance", TOLERANCES, ids=str)
def test_blocked_pass_equals_the_whole_tensor_formula(tolerance, monkeypatch):
    # small blocks: every case crosses block boundaries, with mixed finite/non-finite ones
    monkeypatch.setattr(severity, "_BLOCK", 4096)
    for label, actual, expected in cases(np.random.default_rng(0)):
        got = _excess_and_born(actual, expected, tolerance)
        want = whole_tensor(actual, expected, tolerance)
        assert got == want, (label, got, want)


def test_default_block_size_too():
    rng = np.random.default_rng(1)
    for tolerance in TOLERANCES:
        for label, actual, expected in cases(rng):
            assert _excess_and_born(actual, expected, tolerance) == whole_tensor(
                actual, expected, tolerance
            ), label
