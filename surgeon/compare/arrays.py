"""Comparing values element by element: each measure computed where it is exact (integer
pairs in integer arithmetic, floats in float64, integers beyond 2**53 against floats with
exact fractions), and sequences, optionals and maps element by element."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from surgeon.compare.results import (
    TensorDiff,
    Tolerance,
    container_kind,
    extra,
    is_container,
    missing,
)


def cast_note(reference_dtype: str, dtype: str) -> str:
    """The note of a comparison across dtypes: it ran in the reference's dtype."""
    return f"compared as {reference_dtype} (model has {dtype})"


def as_reference_dtype(actual, expected):
    """``actual`` in ``expected``'s dtype when both are numeric arrays of different dtypes
    (a float16 model against its float32 original: the comparison runs in the reference's
    dtype), with :func:`cast_note`; anything else (sequences, optionals, equal dtypes) as
    it is, with "". A value beyond the target dtype becomes inf, which the comparison
    then reports, so numpy's overflow warning is not raised.
    """
    if (
        isinstance(actual, np.ndarray)
        and isinstance(expected, np.ndarray)
        and actual.dtype != expected.dtype
        and actual.dtype.kind in "fiub"
        and expected.dtype.kind in "fiub"
    ):
        with np.errstate(over="ignore", invalid="ignore"):
            cast = actual.astype(expected.dtype)
        return cast, cast_note(expected.dtype.name, actual.dtype.name)
    return actual, ""


def _count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


# Magnitudes up to here convert to float64 exactly; beyond it an integer may round.
_FLOAT64_EXACT_INT = 2**53


def _value_kind(dtype: np.dtype) -> str | None:
    """``"int"`` (integers and bool), ``"float"``, ``"complex"``, or None (not a number).

    ml_dtypes' types count by what they hold: int4/uint4/int2/uint2 are integers,
    bfloat16 and the float8/float4 types floats (numpy reports most of them as kind V).
    """
    if dtype.kind in "iub":
        return "int"
    if dtype.kind == "f":
        return "float"
    if dtype.kind == "c":
        return "complex"
    if dtype.kind == "V" and dtype.names is None:
        if dtype.name.startswith(("int", "uint")):
            return "int"
        if dtype.name.startswith(("bfloat", "float")):
            return "float"
    return None


def _nonfinite_counts(x: np.ndarray, kind: str | None) -> tuple[int, int]:
    """(NaN count, Inf count); integers have neither."""
    if kind not in ("float", "complex"):
        return 0, 0
    wide = x.astype(np.complex128 if kind == "complex" else np.float64)
    return _count(np.isnan(wide)), _count(np.isinf(wide))


def _as_wide_int(x: np.ndarray) -> np.ndarray:
    """``x`` as int64, or uint64 for uint64 (whose values int64 cannot hold)."""
    return x.astype(np.uint64 if x.dtype == np.uint64 else np.int64)


def _int_magnitude(x: np.ndarray) -> np.ndarray:
    """Exact ``|x|`` of a wide integer array, as uint64 (|int64 min| = 2**63 fits)."""
    if x.dtype == np.uint64:
        return x
    # Two's complement: for x < 0, |x| = ~x + 1 in uint64, exact for every int64.
    u = x.view(np.uint64)
    with np.errstate(over="ignore"):  # the unused branch wraps for x >= 0 (0-d arrays warn)
        return np.where(x < 0, ~u + np.uint64(1), u)


def _int_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``|a - b|`` of two integer arrays: uint64, or Python ints (an object array)
    when a difference passes 2**64 - 1 (uint64 against a negative int64).

    float64 cannot do this: 2**60 + 1 and 2**60 are the same float64.
    """
    a, b = _as_wide_int(a), _as_wide_int(b)
    if a.dtype == b.dtype:
        # hi - lo is in [0, 2**64): the wrapping uint64 subtraction gives it exactly.
        hi, lo = np.maximum(a, b), np.minimum(a, b)
        return hi.view(np.uint64) - lo.view(np.uint64) if hi.dtype == np.int64 else hi - lo
    u, i = (a, b) if a.dtype == np.uint64 else (b, a)
    if not (i < 0).any():
        i = i.view(np.uint64)
        return np.maximum(u, i) - np.minimum(u, i)
    # uint64 against negative int64: up to 2**64 + 2**63, beyond uint64. astype(object)
    # gives Python ints, whose arithmetic is exact (rare, so the speed does not matter).
    return np.abs(u.astype(object) - i.astype(object))


def _int_tolerance(atol: float) -> int | None:
    """``atol`` for integer differences (which are whole numbers): ``|d| <= atol`` exactly
    when ``|d| <= floor(atol)``; None when it accepts every difference."""
    if math.isinf(atol) or atol >= 2**64:
        return None
    return math.floor(atol)


def _scaled_cosine(af: np.ndarray, bf: np.ndarray) -> float:
    """Cosine similarity of two finite float64 vectors, free of overflow and underflow.

    Each side is scaled by a power of two near its largest magnitude first (exact), so
    1e300-sized values do not overflow the dot product and denormals do not vanish.
    """
    if af.dtype.kind == "c":  # C^n as R^2n: the real inner product
        af, bf = af.view(np.float64), bf.view(np.float64)
    ma = max(float(af.max(initial=0.0)), -float(af.min(initial=0.0)))
    mb = max(float(bf.max(initial=0.0)), -float(bf.min(initial=0.0)))
    if ma == 0 and mb == 0:
        return 1.0
    if ma == 0 or mb == 0:
        return 0.0
    # Between 2**-300 and 2**300 neither the products nor their sum can overflow or
    # vanish; outside, scale (cheap to skip: it copies both vectors).
    if not (2.0**-300 < ma < 2.0**300):
        af = np.ldexp(af, -math.frexp(ma)[1])
    if not (2.0**-300 < mb < 2.0**300):
        bf = np.ldexp(bf, -math.frexp(mb)[1])
    # Not np.linalg.norm / np.dot: on this machine class OpenBLAS's threaded ddot costs
    # ~0.5 ms for 18k elements and tens of ms for 400k while onnxruntime's threads still
    # spin; einsum's own loop reads both vectors once, without a temporary or threads.
    af, bf = af.ravel(), bf.ravel()
    na = math.sqrt(float(np.einsum("i,i->", af, af)))
    nb = math.sqrt(float(np.einsum("i,i->", bf, bf)))
    dot = float(np.einsum("i,i->", af, bf))
    return float(np.clip(dot / (na * nb), -1.0, 1.0))


@dataclass
class _Measures:
    same: np.ndarray
    max_abs: float | int | None
    max_rel: float | None
    cosine: float | None
    nan: int = 0
    reference_nan: int = 0
    inf: int = 0
    reference_inf: int = 0


def _summarise(
    err: np.ndarray, rel: np.ndarray, nonzero_ref: np.ndarray, cosine: float | None
) -> tuple[float | int | None, float | None, float | None]:
    """max_abs, max_rel (over elements whose reference is not 0) and cosine."""
    if err.size == 0:
        return None, None, None
    max_abs = err.max()
    max_abs = int(max_abs) if isinstance(max_abs, (int, np.integer)) else float(max_abs)
    if nonzero_ref.any():
        max_rel = float(rel[nonzero_ref].max())
    else:
        max_rel = 0.0 if max_abs == 0 else math.inf
    return max_abs, max_rel, cosine


def _measure(
    a: np.ndarray, b: np.ndarray, kind_a: str | None, kind_b: str | None, tolerance: Tolerance
) -> _Measures:
    """Which elements match, and max_abs / max_rel / cosine, each computed where it is
    exact: integer pairs in integer arithmetic, float pairs in float64 (complex128),
    integer-float pairs in float64 except for integers float64 cannot hold, which are
    compared exactly (Python ints and fractions)."""
    if kind_a is None or kind_b is None:
        # Not numbers (e.g. structured records): only byte equality means anything.
        view = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (-1,))
        other = np.ascontiguousarray(b).view(np.uint8).reshape(b.shape + (-1,))
        same = (
            (view == other).all(axis=-1) if view.shape == other.shape else np.zeros(a.shape, bool)
        )
        return _Measures(same, None, None, None)
    if a.size == 0:
        return _Measures(np.ones(a.shape, bool), 0.0, 0.0, 1.0)
    if kind_a == kind_b == "int":
        diff = _int_abs_diff(a, b)
        # Integers (indices, classes, counts, token ids) get no relative slack:
        # 200001 vs 200000 is a different id, whatever rtol says. Bools get no slack at
        # all: an atol of 1 would otherwise accept True for False.
        bools = a.dtype == np.bool_ and b.dtype == np.bool_
        limit = 0 if tolerance.exact or bools else _int_tolerance(tolerance.atol)
        if limit is None:
            same = np.ones(a.shape, bool)
        elif diff.dtype == object:
            same = np.array([x <= limit for x in diff.ravel()], bool).reshape(a.shape)
        else:
            same = diff <= np.uint64(limit)
        # max_abs stays a Python int (exact); the ratio is float64 of two exact ints.
        magnitude = _int_magnitude(_as_wide_int(b)).astype(np.float64)
        err_float = diff.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = err_float / magnitude
        cosine = _scaled_cosine(a.astype(np.float64), b.astype(np.float64))
        max_abs, max_rel, cosine = _summarise(
            diff.ravel(), rel.ravel(), magnitude.ravel() != 0, cosine
        )
        return _Measures(same, max_abs, max_rel, cosine)

    if a.dtype.kind == b.dtype.kind == "f" and a.dtype.itemsize <= 4 and b.dtype.itemsize <= 4:
        fast = _measure_finite(a, b, tolerance)
        if fast is not None:
            return fast
    wide = np.complex128 if "complex" in (kind_a, kind_b) else np.float64
    a_num, b_num = a.astype(wide).ravel(), b.astype(wide).ravel()
    m = _Measures(np.zeros(a.shape, bool), None, None, None)
    nan_a, nan_b = np.isnan(a_num), np.isnan(b_num)
    m.nan, m.reference_nan = _count(nan_a), _count(nan_b)
    m.inf, m.reference_inf = _count(np.isinf(a_num)), _count(np.isinf(b_num))
    # The tolerance applies to finite pairs only: with an infinite reference the limit
    # atol + rtol*|ref| is infinite too and would accept any value (even the opposite
    # infinity). Non-finite values must be equal (NaN matches NaN).
    finite = np.isfinite(a_num) & np.isfinite(b_num)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a_num - b_num)
        same = (a_num == b_num) | (nan_a & nan_b)
        if not tolerance.exact:
            same |= finite & (diff <= tolerance.atol + tolerance.rtol * np.abs(b_num))
    # Pairs whose difference float64 gets wrong are redone: index -> relative error.
    redone: dict[int, float] = {}
    over = np.flatnonzero(finite & np.isinf(diff))
    if over.size:
        # Finite values whose difference overflows float64 (1e308 - -1e308): judged and
        # related in halves, exact at such magnitudes; max_abs is then honestly inf.
        half = np.abs(a_num[over] * 0.5 - b_num[over] * 0.5)
        half_ref = np.abs(b_num[over]) * 0.5
        if not tolerance.exact:
            same[over] = half <= tolerance.atol * 0.5 + tolerance.rtol * half_ref
        redone.update(zip(over.tolist(), (half / half_ref).tolist(), strict=True))
    int_side = a if kind_a == "int" else b if kind_b == "int" else None
    if int_side is not None and wide == np.float64:
        # Integers beyond 2**53 round on their way into float64 (2**60 + 1 becomes 2**60):
        # those pairs are redone exactly with Python ints and fractions.
        beyond = _int_magnitude(_as_wide_int(int_side)).ravel() > np.uint64(_FLOAT64_EXACT_INT)
        flat_a, flat_b = a.ravel(), b.ravel()
        for k in np.flatnonzero(beyond & finite).tolist():
            x, y = _exact_number(flat_a[k]), _exact_number(flat_b[k])
            exact_diff = abs(x - y)
            diff[k] = _to_float(exact_diff)
            redone[k] = _to_float(exact_diff / abs(y)) if y != 0 else math.inf
            if tolerance.exact:
                same[k] = exact_diff == 0
            else:
                allowed = Fraction(tolerance.atol) + Fraction(tolerance.rtol) * abs(y)
                same[k] = exact_diff <= allowed
    m.same = same.reshape(a.shape)
    if finite.any():
        all_finite = bool(finite.all())
        af = a_num if all_finite else a_num[finite]
        bf = b_num if all_finite else b_num[finite]
        err = diff if all_finite else diff[finite]
        m.max_abs = float(err.max())
        plain = finite & (b_num != 0)
        if redone:
            plain[list(redone)] = False
        with np.errstate(over="ignore"):  # a ratio beyond float64 is inf
            rels = [float((diff[plain] / np.abs(b_num[plain])).max())] if plain.any() else []
        rels += [r for k, r in redone.items() if b_num[k] != 0]
        if rels:
            m.max_rel = max(rels)
        else:
            m.max_rel = 0.0 if m.max_abs == 0 else math.inf
        m.cosine = _scaled_cosine(af, bf)
    return m


# Elements per block of the finite fast path: float64 temporaries of 512 KiB stay in the
# allocator's heap and the CPU's cache; whole-tensor temporaries were fresh mappings,
# page-faulted on every call (a 400k-element comparison took 60 ms, 10 of it arithmetic).
_BLOCK = 1 << 16


def _measure_finite(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> _Measures | None:
    """:func:`_measure` of two float arrays of at most 32 bits whose elements are all
    finite (None otherwise): the same numbers, block by block, with no temporary larger
    than a block.

    Every value such a float holds is exact in float64, and so are the differences of
    two of them and their squares' sums (no overflow, no underflow to zero), so none of
    the general path's special cases (NaN/Inf pairs, overflowing differences, integers
    beyond 2**53, scaled norms) can arise. Layer-wise comparison runs this on every
    tapped tensor.
    """
    # NaN propagates through min/max and an Inf shows there: one cheap pass per side.
    with np.errstate(invalid="ignore"):
        extremes = (a.min(), a.max(), b.min(), b.max())
    if not all(math.isfinite(float(v)) for v in extremes):
        return None
    flat_a, flat_b = a.ravel(), b.ravel()
    same = np.empty(flat_a.size, bool)
    max_abs = max_rel = 0.0
    dot = norm_a = norm_b = 0.0
    any_nonzero = False
    for start in range(0, flat_a.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        af = flat_a[block].astype(np.float64)
        bf = flat_b[block].astype(np.float64)
        dot += float(np.einsum("i,i->", af, bf))
        norm_a += float(np.einsum("i,i->", af, af))
        norm_b += float(np.einsum("i,i->", bf, bf))
        diff = np.subtract(af, bf, out=af)
        np.abs(diff, out=diff)
        magnitude = np.abs(bf, out=bf)
        if tolerance.exact:
            np.equal(diff, 0, out=same[block])  # (bit-identity: compare_arrays, on bytes)
        else:
            # atol + rtol * |b|, in the general path's order of operations
            limit = magnitude * tolerance.rtol
            limit += tolerance.atol
            np.less_equal(diff, limit, out=same[block])
        max_abs = max(max_abs, float(diff.max()))
        nonzero = magnitude != 0
        if nonzero.all():
            any_nonzero = True
            max_rel = max(max_rel, float((diff / magnitude).max()))
        elif nonzero.any():
            any_nonzero = True
            max_rel = max(max_rel, float((diff[nonzero] / magnitude[nonzero]).max()))
    if not any_nonzero:
        max_rel = 0.0 if max_abs == 0 else math.inf
    if norm_a == 0 or norm_b == 0:
        cosine = 1.0 if norm_a == norm_b else 0.0
    else:
        cosine = float(np.clip(dot / (math.sqrt(norm_a) * math.sqrt(norm_b)), -1.0, 1.0))
    return _Measures(same.reshape(a.shape), max_abs, max_rel, cosine)


def _to_float(x: Fraction) -> float:
    """``x`` rounded to float64; inf beyond its range (e.g. 2**63 / 1e-308)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf


def _exact_number(x) -> Fraction:
    """A numpy scalar as an exact fraction (integers as ints, floats by their bits)."""
    if isinstance(x, (np.integer, np.bool_, int, bool)):
        return Fraction(int(x))
    return Fraction(float(x))


def compare_arrays(
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance = Tolerance(),
    *,
    name: str = "",
    reference: str = "",
) -> TensorDiff:
    """Compare ``actual`` against ``expected`` element by element.

    Max errors and cosine similarity are computed over the elements that are finite in
    both, each where it is exact: integer pairs in integer arithmetic (``max_abs`` is
    then a Python int), float pairs in float64 (differences beyond float64's range are
    judged in halves, the cosine is scaled against overflow), and integers beyond 2**53
    against floats with exact fractions. NaN and Inf are counted separately for each
    side. Sequences (lists of
    arrays), empty optionals (None) and maps, as onnxruntime returns them for non-tensor
    outputs, are compared element by element (see :func:`_compare_containers`).
    """
    if is_container(actual) or is_container(expected):
        return _compare_containers(
            actual, expected, tolerance, name=name, reference=reference or name
        )
    a = np.asarray(actual)
    b = np.asarray(expected)
    d = TensorDiff(
        name=name,
        reference=reference or name,
        status="ok",
        shape=list(a.shape),
        reference_shape=list(b.shape),
        dtype=a.dtype.name,
        reference_dtype=b.dtype.name,
        size=int(b.size),
    )
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        if a.shape != b.shape:
            d.status, d.message = "shape", f"shape {list(a.shape)} != reference {list(b.shape)}"
            d.mismatches = d.size
            return d
        d.mismatches = _count(a.astype(str) != b.astype(str))
        if d.mismatches:
            d.status, d.message = "mismatch", f"{d.mismatches} of {d.size} elements differ"
        # Strings are str, bytes or object arrays depending on who made them; only a
        # string tensor compared with a numeric one is a dtype mismatch.
        if (a.dtype.kind in "OUS") != (b.dtype.kind in "OUS"):
            d.status = "dtype"
            d.message = f"dtype {a.dtype.name} != reference {b.dtype.name}" + (
                f"; {d.message}" if d.message else ""
            )
        return d
    kind_a, kind_b = _value_kind(a.dtype), _value_kind(b.dtype)
    if a.shape != b.shape:
        d.nan, d.inf = _nonfinite_counts(a, kind_a)
        d.reference_nan, d.reference_inf = _nonfinite_counts(b, kind_b)
        d.status = "shape"
        d.message = f"shape {list(a.shape)} != reference {list(b.shape)}"
        d.mismatches = d.size
        return d
    m = _measure(a, b, kind_a, kind_b, tolerance)
    d.nan, d.reference_nan, d.inf, d.reference_inf = m.nan, m.reference_nan, m.inf, m.reference_inf
    same = m.same
    if tolerance.exact and a.dtype == b.dtype:
        # Bitwise: compare the raw bytes of each element (NaN payloads included).
        # Bytes of each element, whatever its size (complex128 is 16: -0.0 != 0.0 there
        # too); the 0-d case is reshaped since ascontiguousarray makes it 1-d.
        if a.dtype.itemsize and a.size:
            bytes_a = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (-1,))
            bytes_b = np.ascontiguousarray(b).view(np.uint8).reshape(b.shape + (-1,))
            same = (bytes_a == bytes_b).all(axis=-1)
    d.mismatches = int(same.size - _count(same))
    d.max_abs, d.max_rel, d.cosine = m.max_abs, m.max_rel, m.cosine
    if d.mismatches:
        d.status = "mismatch"
        d.message = f"{d.mismatches} of {d.size} elements differ"
    if a.dtype != b.dtype:
        note = f"dtype {a.dtype.name} != reference {b.dtype.name}"
        if tolerance.cast and not tolerance.exact and kind_a and kind_b:
            note = f"compared by value: {note}"
        else:
            d.status = "dtype"
        d.message = note + (f"; {d.message}" if d.message else "")
    return d


def _compare_containers(actual, expected, tolerance: Tolerance, *, name: str, reference: str):
    """Compare sequence, optional or map values: the kinds and lengths (or keys) must
    agree, then each element is compared as a tensor and the counts add up."""
    d = TensorDiff(name=name, reference=reference, status="ok")
    ka, kb = container_kind(actual), container_kind(expected)
    d.dtype, d.reference_dtype = ka, kb
    if ka != kb:
        d.status, d.message = "dtype", f"{ka} != reference {kb}"
        return d
    if ka == "empty optional":
        d.max_abs, d.max_rel, d.cosine = 0.0, 0.0, 1.0
        return d
    if ka == "map":
        if set(actual) != set(expected):
            d.status, d.message = "shape", "the map keys differ from the reference's"
            return d
        keys = sorted(expected, key=str)
        pairs = [(actual[k], expected[k], repr(k)) for k in keys]
    else:
        d.shape, d.reference_shape = [len(actual)], [len(expected)]
        if len(actual) != len(expected):
            d.status = "shape"
            d.message = f"sequence of {len(actual)} != reference sequence of {len(expected)}"
            return d
        pairs = [(x, y, str(i)) for i, (x, y) in enumerate(zip(actual, expected, strict=True))]
    d.max_abs, d.max_rel, d.cosine = 0.0, 0.0, 1.0
    for x, y, key in pairs:
        e = compare_arrays(x, y, tolerance, name=f"{name}[{key}]")
        d.size += e.size
        d.mismatches += e.mismatches
        d.nan, d.reference_nan = d.nan + e.nan, d.reference_nan + e.reference_nan
        d.inf, d.reference_inf = d.inf + e.inf, d.reference_inf + e.reference_inf
        for attr, pick in (("max_abs", max), ("max_rel", max), ("cosine", min)):
            value = getattr(e, attr)
            if value is not None:
                setattr(d, attr, pick(getattr(d, attr), value))
        if not e.passed and d.status == "ok":
            d.status, d.message = e.status, f"element {key}: {e.message}"
    return d


def compare_named(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]],
    tolerance: Tolerance = Tolerance(),
) -> list[TensorDiff]:
    """Compare ``actual[c]`` with ``expected[r]`` for each ``(c, r)`` pair; absent
    tensors become ``missing`` entries."""
    out = []
    for cand, ref in pairs:
        if cand not in actual:
            out.append(missing(cand, ref, expected.get(ref)))
        elif ref not in expected:
            out.append(extra(cand, actual[cand], why=f"reference tensor `{ref}` was not produced"))
        else:
            out.append(
                compare_arrays(actual[cand], expected[ref], tolerance, name=cand, reference=ref)
            )
    return out
