"""Property tests of compare_arrays against a reference computed element by element here:
integers (and bools) with Python ints, floats with Python floats (IEEE float64, the
rule's own arithmetic) and exact fractions where float64 itself cannot hold the answer.

What they pin down: integers compare exactly in their own dtype (2**60 + 1 is not
2**60, whatever the tolerance), uint64 beyond 2**63 and int64 extremes included; float
differences that overflow float64, huge and denormal values keep correct verdicts,
max_abs, max_rel and cosine.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon.compare import Tolerance, compare_arrays

try:  # a dependency of onnx; bfloat16 is tested only where numpy can hold it
    import ml_dtypes

    BFLOAT16 = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:  # pragma: no cover
    BFLOAT16 = []

INT_DTYPES = [np.dtype(t) for t in ("int8", "int16", "int32", "int64")]
INT_DTYPES += [np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "bool")]
FLOAT_DTYPES = [np.dtype(t) for t in ("float16", "float32", "float64")] + BFLOAT16

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bounds(dtype: np.dtype) -> tuple[int, int]:
    if dtype == np.bool_:
        return 0, 1
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


@st.composite
def int_pairs(draw, same_dtype: bool = True):
    """(candidate, reference) integer arrays: near neighbours, extremes and anything."""
    dtype_b = draw(st.sampled_from(INT_DTYPES))
    dtype_a = dtype_b if same_dtype else draw(st.sampled_from(INT_DTYPES))
    lo_a, hi_a = _bounds(dtype_a)
    lo_b, hi_b = _bounds(dtype_b)
    n = draw(st.integers(0, 12))
    values_b = draw(
        st.lists(
            st.one_of(st.integers(lo_b, hi_b), st.sampled_from([lo_b, hi_b, 0, 2**60])),
            min_size=n,
            max_size=n,
        )
    )
    values_b = [min(max(v, lo_b), hi_b) for v in values_b]
    values_a = []
    for v in values_b:
        how = draw(st.sampled_from(["near", "any", "edge"]))
        if how == "near":
            w = v + draw(st.integers(-2, 2))
        elif how == "any":
            w = draw(st.integers(lo_a, hi_a))
        else:
            w = draw(st.sampled_from([lo_a, hi_a]))
        values_a.append(min(max(w, lo_a), hi_a))
    a = np.array(values_a, dtype=object).astype(dtype_a)
    b = np.array(values_b, dtype=object).astype(dtype_b)
    return a, b


def _floats_of(dtype: np.dtype):
    width = {2: 16, 4: 32, 8: 64}[dtype.itemsize]
    if dtype.name == "bfloat16":  # float32 values rounded to bfloat16 by the cast
        width = 32
    return st.one_of(
        st.floats(width=width),  # NaN, ±Inf, huge and denormal values included
        st.sampled_from([0.0, -0.0, 1.0, 1e-5, -1e-5]),
    )


@st.composite
def float_pairs(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    n = draw(st.integers(0, 12))
    b = draw(st.lists(_floats_of(dtype), min_size=n, max_size=n))
    a = []
    for v in b:
        how = draw(st.sampled_from(["same", "near", "any", "negated"]))
        if how == "same":
            a.append(v)
        elif how == "near":
            a.append(v * (1 + draw(st.sampled_from([1e-6, -1e-6, 1e-3, 2.0**-10]))))
        elif how == "negated":
            a.append(-v)
        else:
            a.append(draw(_floats_of(dtype)))
    with np.errstate(over="ignore"):
        return np.array(a, np.float64).astype(dtype), np.array(b, np.float64).astype(dtype)


tolerances = st.builds(
    Tolerance,
    atol=st.sampled_from([0.0, 1e-5, 0.5, 1.0, 2.0, 1e300, math.inf]),
    rtol=st.sampled_from([0.0, 1e-5, 1e-3, 0.5]),
    exact=st.booleans(),
)


def _rel(diff: Fraction, ref: Fraction) -> float:
    try:
        return float(diff / abs(ref))
    except OverflowError:
        return math.inf


def _cosine(xs: list[Fraction], ys: list[Fraction]) -> float:
    """Cosine similarity in exact arithmetic, rounded once at the end."""
    dot = sum((x * y for x, y in zip(xs, ys, strict=True)), Fraction(0))
    na, nb = sum(x * x for x in xs), sum(y * y for y in ys)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return math.copysign(math.sqrt(float(dot * dot / (na * nb))), 1 if dot >= 0 else -1)


@SETTINGS
@given(pair=st.one_of(int_pairs(), int_pairs(same_dtype=False)), tol=tolerances)
def test_integers_compare_exactly_in_python_ints(pair, tol):
    a, b = pair
    tol = Tolerance(tol.atol, tol.rtol, exact=tol.exact, cast=True)
    d = compare_arrays(a, b, tol)
    xs, ys = [int(x) for x in a.tolist()], [int(y) for y in b.tolist()]
    diffs = [abs(x - y) for x, y in zip(xs, ys, strict=True)]
    # Integers get no relative slack; an atol applies to the exact difference.
    bools = a.dtype == b.dtype == np.bool_  # no atol slack: True is not False
    bad = sum(1 for e in diffs if (e != 0 if tol.exact or bools else e > tol.atol))
    if tol.exact and a.dtype == b.dtype:
        bad = sum(1 for x, y in zip(xs, ys, strict=True) if x != y)
    assert d.mismatches == bad
    assert d.nan == d.inf == d.reference_nan == d.reference_inf == 0
    if a.dtype == b.dtype:
        assert d.status == ("mismatch" if bad else "ok")
    elif tol.exact:
        assert d.status == "dtype"
    else:
        assert d.status == ("mismatch" if bad else "ok") and "compared by value" in d.message
    if not xs:
        return
    assert d.max_abs == max(diffs) and isinstance(d.max_abs, int)  # exact, not float64
    rels = [_rel(Fraction(e), Fraction(y)) for e, y in zip(diffs, ys, strict=True) if y != 0]
    want_rel = max(rels) if rels else (0.0 if max(diffs) == 0 else math.inf)
    assert d.max_rel == pytest.approx(want_rel, rel=1e-15)
    if any(e and y for e, y in zip(diffs, ys, strict=True)):
        assert d.max_rel > 0  # a difference of 1 at 2**60 is still a difference
    cosine = _cosine([Fraction(x) for x in xs], [Fraction(y) for y in ys])
    assert d.cosine == pytest.approx(cosine, abs=1e-12)


@SETTINGS
@given(pair=float_pairs(), tol=tolerances)
def test_floats_match_float64_elementwise(pair, tol):
    a, b = pair
    d = compare_arrays(a, b, tol)
    xs, ys = [float(x) for x in a.tolist()], [float(y) for y in b.tolist()]
    bad = 0
    finite_diffs, rels, fx, fy = [], [], [], []
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        both_finite = math.isfinite(x) and math.isfinite(y)
        if both_finite:
            exact = abs(Fraction(x) - Fraction(y))
            finite_diffs.append(abs(x - y))  # float64, inf where it overflows
            if y != 0:
                rels.append(_rel(exact, Fraction(y)))
            fx.append(Fraction(x))
            fy.append(Fraction(y))
        if tol.exact:  # the same bits in the tensors' own dtype
            same = a[k : k + 1].tobytes() == b[k : k + 1].tobytes()
        elif x == y or (math.isnan(x) and math.isnan(y)):
            same = True
        elif not both_finite:
            same = False
        elif math.isinf(x - y):  # beyond float64: the exact difference decides
            same = exact <= Fraction(tol.atol) + Fraction(tol.rtol) * abs(Fraction(y))
        else:
            same = abs(x - y) <= tol.atol + tol.rtol * abs(y)
        bad += not same
    assert d.mismatches == bad
    assert d.status == ("mismatch" if bad else "ok")
    assert d.nan == sum(math.isnan(x) for x in xs)
    assert d.reference_nan == sum(math.isnan(y) for y in ys)
    assert d.inf == sum(math.isinf(x) for x in xs)
    assert d.reference_inf == sum(math.isinf(y) for y in ys)
    if not xs:
        assert (d.max_abs, d.max_rel, d.cosine) == (0.0, 0.0, 1.0)
        return
    if not finite_diffs:
        assert d.max_abs is d.max_rel is d.cosine is None
        return
    assert d.max_abs == max(finite_diffs)
    want_rel = max(rels) if rels else (0.0 if max(finite_diffs) == 0 else math.inf)
    assert d.max_rel == pytest.approx(want_rel, rel=1e-15)
    assert d.cosine == pytest.approx(_cosine(fx, fy), abs=1e-12)


@SETTINGS
@given(
    ints=int_pairs(),
    floats=st.lists(st.floats(allow_nan=False, width=64), min_size=12, max_size=12),
    exact=st.booleans(),
)
def test_integers_against_floats_compare_by_exact_value(ints, floats, exact):
    """--cast between an integer and a float tensor: equal means equal as numbers, also
    where the integer does not fit float64 (2**60 + 1 against 2.0**60)."""
    a, _ = ints
    near = [float(x) for x in a.tolist()]  # the float64 nearest to each integer
    b = np.array(
        [
            f if i % 3 == 0 else v
            for i, (v, f) in enumerate(zip(near, floats[: len(near)], strict=True))
        ]
    )
    tol = Tolerance(0.0, 0.0, exact=exact, cast=True)
    for cand, ref in ((a, b), (b, a)):
        d = compare_arrays(cand, ref, tol)
        pairs = list(zip(cand.tolist(), ref.tolist(), strict=True))
        finite = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
        want = len(pairs) - len(finite) + sum(Fraction(x) != Fraction(y) for x, y in finite)
        assert d.mismatches == want
        if finite:
            diffs = [abs(Fraction(x) - Fraction(y)) for x, y in finite]
            assert d.max_abs == pytest.approx(float(max(diffs)), rel=1e-15)
            assert (d.max_abs == 0) == (max(diffs) == 0)


# ---------------------------------------------------------------------- the reported cases
@pytest.mark.parametrize(
    "tol", [Tolerance(), Tolerance(0.0, 0.0), Tolerance(1e-3, 1e-3), Tolerance(0.5, 0.5)]
)
def test_int64_near_2_pow_60_differing_by_one_fails(tol):
    a = np.array([2**60 + 1, 7], np.int64)
    b = np.array([2**60, 7], np.int64)
    d = compare_arrays(a, b, tol)
    assert not d and d.mismatches == 1 and d.max_abs == 1
    assert d.max_rel == pytest.approx(2.0**-60)


def test_integer_atol_applies_in_integer_arithmetic():
    a = np.array([2**63 - 1, -(2**63), 0], np.int64)
    b = np.array([2**63 - 3, -(2**63) + 2, 0], np.int64)
    assert compare_arrays(a, b, Tolerance(2.0, 0.0))  # differences of exactly 2
    assert compare_arrays(a, b, Tolerance(1.999, 0.0)).mismatches == 2
    # int64 max against int64 min: a difference of 2**64 - 1, no wrap-around
    d = compare_arrays(a[:1], b[1:2], Tolerance(0.0, 0.0))
    assert d.max_abs == 2**64 - 3 and d.mismatches == 1


def test_bools_must_be_equal_whatever_the_atol():
    a, b = np.array([True, False]), np.array([False, False])
    assert compare_arrays(a, b, Tolerance(1.0, 1.0)).mismatches == 1
    assert compare_arrays(a, a, Tolerance(1.0, 1.0))


def test_uint64_beyond_2_pow_63_against_int64():
    u = np.array([2**64 - 1, 2**63, 5], np.uint64)
    i = np.array([-(2**63), 2**63 - 1, 5], np.int64)
    d = compare_arrays(u, i, Tolerance(0.0, 0.0, cast=True))
    assert d.mismatches == 2 and d.max_abs == 2**64 - 1 + 2**63
    assert d.message.startswith("compared by value")


def test_float64_differences_beyond_float64_are_judged_exactly():
    a = np.array([1e308, 1.0])
    b = np.array([-1e308, 1.0])
    d = compare_arrays(a, b, Tolerance(0.0, 3.0))  # |a-b| = 2e308 <= 3 * 1e308
    assert d and d.max_rel == pytest.approx(2.0) and d.max_abs == math.inf
    assert d.cosine == pytest.approx(-1.0)
    assert compare_arrays(a, b, Tolerance(0.0, 1.5)).mismatches == 1
    huge = np.full(4, 1e300)
    assert compare_arrays(huge, huge).cosine == 1.0  # no overflow in the norms
    tiny = np.full(4, 5e-324)
    assert compare_arrays(tiny, tiny).cosine == 1.0  # no underflow either


# ---------------------------------------------------------------- the finite fast path
@st.composite
def finite_float_pairs(draw):
    """float16/float32 pairs with every element finite, long enough to span several
    blocks sometimes: near neighbours, zeros, denormals, extremes."""
    dtype_a = draw(st.sampled_from([np.dtype("float16"), np.dtype("float32")]))
    dtype_b = draw(st.sampled_from([np.dtype("float16"), np.dtype("float32")]))
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.sampled_from([1, 7, 1000, (1 << 16) + 3, 3 * (1 << 16)]))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-40, 1e-3, 1.0, 1e4, 3e38]))
    b = (rng.standard_normal(n) * scale).astype(np.float64)
    a = b + rng.standard_normal(n) * scale * draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]))
    for arr in (a, b):
        arr[rng.random(n) < draw(st.sampled_from([0.0, 0.1, 1.0]))] = 0.0
    with np.errstate(over="ignore"):
        a, b = a.astype(dtype_a), b.astype(dtype_b)
    a[~np.isfinite(a)] = 1.0
    b[~np.isfinite(b)] = -1.0
    return a, b


@SETTINGS
@given(
    finite_float_pairs(),
    st.sampled_from([Tolerance(), Tolerance(1e-5, 1e-3), Tolerance(exact=True)]),
)
def test_finite_fast_path_equals_general_path(monkeypatch_module, pair, tolerance):
    # Layer-wise comparison takes the block-wise path for finite float16/float32 tensors;
    # every number must be the general path's (the sums may differ in their last bits).
    from surgeon.compare import arrays

    a, b = pair
    fast = compare_arrays(a, b, tolerance)
    with monkeypatch_module.context() as m:
        m.setattr(arrays, "_measure_finite", lambda *args: None)
        general = compare_arrays(a, b, tolerance)
    assert (fast.status, fast.mismatches, fast.max_abs, fast.max_rel) == (
        general.status,
        general.mismatches,
        general.max_abs,
        general.max_rel,
    )
    assert fast.cosine == pytest.approx(general.cosine, rel=1e-12, abs=1e-300)
    assert (fast.nan, fast.inf, fast.reference_nan, fast.reference_inf) == (0, 0, 0, 0)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as m:
        yield m


def test_nonfinite_values_leave_the_fast_path():
    a = np.array([1.0, np.nan, np.inf], np.float32)
    b = np.array([1.0, np.nan, np.inf], np.float32)
    d = compare_arrays(a, b)
    assert (d.mismatches, d.nan, d.inf, d.max_abs) == (0, 1, 1, 0.0)
