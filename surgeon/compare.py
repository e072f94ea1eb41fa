"""Tensor comparison and the DiffReport every verification returns.

Numbers only, no rendering: ``surgeon.report`` draws these as rich tables and the CLI
writes ``to_dict()`` as JSON. A report is truthy when it passed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from surgeon.errors import UsageError

DIFF_SCHEMA = "surgeon.diff/1"


@dataclass(frozen=True)
class Tolerance:
    """When two tensors count as equal.

    An element matches when ``|actual - expected| <= atol + rtol * |expected|`` (for
    integer tensors ``<= atol``: no relative slack on ids and indices); NaN
    matches NaN and an infinity matches the same infinity. With ``exact`` the elements
    must be bit-identical instead (what edits that should not touch the maths promise).

    Raises:
        UsageError: ``atol`` or ``rtol`` is negative or NaN (an infinite tolerance is
            allowed: it accepts every pair of finite values).
    """

    atol: float = 1e-5
    rtol: float = 1e-5
    exact: bool = False
    # Compare numeric tensors of different dtypes by value (e.g. a float16 conversion
    # against its float32 original); the dtype difference is then noted, not a failure.
    cast: bool = False

    def __post_init__(self):
        # NaN would make every `diff <= limit` false and a negative value can never be
        # met: both are typos, not tolerances.
        bad = [
            f"{what}={value!r}"
            for what, value in (("atol", self.atol), ("rtol", self.rtol))
            if math.isnan(value) or value < 0
        ]
        if bad:
            raise UsageError(
                f"tolerance {', '.join(bad)} is not usable: atol and rtol must be non-negative numbers",
                hint="Use e.g. --atol 1e-4 --rtol 1e-3, or --exact for bit-identity.",
            )

    def to_dict(self) -> dict:
        return {
            "atol": json_number(self.atol),
            "rtol": json_number(self.rtol),
            "exact": self.exact,
            "cast": self.cast,
        }


EXACT = Tolerance(0.0, 0.0, exact=True)


@dataclass
class TensorDiff:
    """The comparison of one tensor with its reference.

    ``status`` is one of: ``ok``, ``mismatch`` (values outside tolerance), ``shape``,
    ``dtype``, ``missing`` (the reference has it, the candidate does not), ``extra`` (the
    candidate has it, the reference does not).
    """

    name: str
    reference: str
    status: str
    shape: list[int] | None = None
    reference_shape: list[int] | None = None
    dtype: str | None = None
    reference_dtype: str | None = None
    size: int = 0
    mismatches: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    nan: int = 0
    reference_nan: int = 0
    inf: int = 0
    reference_inf: int = 0
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok"

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "reference": self.reference,
            "status": self.status,
            "passed": self.passed,
            "shape": self.shape,
            "reference_shape": self.reference_shape,
            "dtype": self.dtype,
            "reference_dtype": self.reference_dtype,
            "size": self.size,
            "mismatches": self.mismatches,
            "max_abs": json_number(self.max_abs),
            "max_rel": json_number(self.max_rel),
            "cosine": json_number(self.cosine),
            "nan": self.nan,
            "reference_nan": self.reference_nan,
            "inf": self.inf,
            "reference_inf": self.reference_inf,
            "message": self.message,
        }


def json_number(x: float | None):
    """Floats for JSON: NaN becomes null, infinities the strings "inf" / "-inf"."""
    if x is None:
        return None
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def _count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def compare_arrays(
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance = Tolerance(),
    *,
    name: str = "",
    reference: str = "",
) -> TensorDiff:
    """Compare ``actual`` against ``expected`` element by element.

    Max errors and cosine similarity are computed in float64 over the elements that are
    finite in both; NaN and Inf are counted separately for each side. Sequences (lists of
    arrays), empty optionals (None) and maps, as onnxruntime returns them for non-tensor
    outputs, are compared element by element (see :func:`_compare_containers`).
    """
    if _is_container(actual) or _is_container(expected):
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
    a_num = a.astype(np.float64)
    b_num = b.astype(np.float64)
    d.nan, d.reference_nan = _count(np.isnan(a_num)), _count(np.isnan(b_num))
    d.inf, d.reference_inf = _count(np.isinf(a_num)), _count(np.isinf(b_num))
    if a.shape != b.shape:
        d.status = "shape"
        d.message = f"shape {list(a.shape)} != reference {list(b.shape)}"
        d.mismatches = d.size
        return d
    if tolerance.exact and a.dtype == b.dtype:
        # Bitwise: compare the raw bytes of each element (NaN payloads included).
        width = a.dtype.itemsize
        view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width)
        if view is not None:
            same = np.ascontiguousarray(a).view(view) == np.ascontiguousarray(b).view(view)
        else:
            same = (a == b) | (np.isnan(a_num) & np.isnan(b_num))
    else:
        both_nan = np.isnan(a_num) & np.isnan(b_num)
        # The tolerance applies to finite pairs only: with an infinite reference the
        # limit atol + rtol*|ref| is infinite too and would accept any value (even the
        # opposite infinity). Non-finite values must be equal (NaN matches NaN).
        both_finite = np.isfinite(a_num) & np.isfinite(b_num)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a_num - b_num)
            limit = tolerance.atol + tolerance.rtol * np.abs(b_num)
            if b.dtype.kind in "iub" and a.dtype.kind in "iub":
                # Integers (indices, classes, counts, token ids) get no relative slack:
                # 200001 vs 200000 is a different id, whatever rtol says.
                limit = tolerance.atol
            same = (a_num == b_num) | both_nan | (both_finite & (diff <= limit))
            if tolerance.exact:  # dtypes differ: values must be equal
                same = (a_num == b_num) | both_nan
    d.mismatches = int(same.size - _count(same))
    finite = np.isfinite(a_num) & np.isfinite(b_num)
    if finite.any():
        af, bf = a_num[finite], b_num[finite]
        err = np.abs(af - bf)
        d.max_abs = float(err.max())
        nz = bf != 0
        d.max_rel = (
            float((err[nz] / np.abs(bf[nz])).max())
            if nz.any()
            else (0.0 if d.max_abs == 0 else math.inf)
        )
        na, nb = float(np.linalg.norm(af)), float(np.linalg.norm(bf))
        if na == 0 and nb == 0:
            d.cosine = 1.0
        elif na == 0 or nb == 0:
            d.cosine = 0.0
        else:
            d.cosine = float(np.clip(np.dot(af.ravel(), bf.ravel()) / (na * nb), -1.0, 1.0))
    elif d.size == 0:
        d.max_abs, d.max_rel, d.cosine = 0.0, 0.0, 1.0
    if d.mismatches:
        d.status = "mismatch"
        d.message = f"{d.mismatches} of {d.size} elements differ"
    if a.dtype != b.dtype:
        note = f"dtype {a.dtype.name} != reference {b.dtype.name}"
        if (
            tolerance.cast
            and not tolerance.exact
            and a.dtype.kind in "fiub"
            and b.dtype.kind in "fiub"
        ):
            note = f"compared by value: {note}"
        else:
            d.status = "dtype"
        d.message = note + (f"; {d.message}" if d.message else "")
    return d


def _is_container(value) -> bool:
    """True for the non-tensor values onnxruntime returns: lists, None, dicts."""
    return value is None or isinstance(value, (list, tuple, dict))


def _kind(value) -> str:
    if value is None:
        return "empty optional"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "tensor"


def _compare_containers(actual, expected, tolerance: Tolerance, *, name: str, reference: str):
    """Compare sequence, optional or map values: the kinds and lengths (or keys) must
    agree, then each element is compared as a tensor and the counts add up."""
    d = TensorDiff(name=name, reference=reference, status="ok")
    ka, kb = _kind(actual), _kind(expected)
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


def _describe(value) -> tuple[list[int] | None, str | None, int]:
    """Shape, dtype name and size of a value for reports (sequences have no shape)."""
    if _is_container(value):
        return None, _kind(value), len(value) if value is not None else 0
    value = np.asarray(value)
    return list(value.shape), value.dtype.name, int(value.size)


def missing(
    name: str, reference: str, expected: np.ndarray | None = None, why: str = ""
) -> TensorDiff:
    d = TensorDiff(
        name=name, reference=reference, status="missing", message=why or f"`{name}` is not produced"
    )
    if expected is not None:
        d.reference_shape, d.reference_dtype, d.size = _describe(expected)
    return d


def extra(name: str, actual: np.ndarray | None = None, why: str = "") -> TensorDiff:
    d = TensorDiff(
        name=name, reference="", status="extra", message=why or f"`{name}` has no reference tensor"
    )
    if actual is not None:
        d.shape, d.dtype, d.size = _describe(actual)
    return d


@dataclass
class DiffReport:
    """The result of a verification: one TensorDiff per compared tensor.

    Truthy when every tensor passed. ``report.outputs["boxes"].max_abs`` reads one entry.
    """

    title: str
    candidate: str
    reference: str
    tensors: list[TensorDiff]
    tolerance: Tolerance = field(default_factory=Tolerance)
    seed: int | None = 0
    feeds: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def outputs(self) -> dict[str, TensorDiff]:
        return {t.name: t for t in self.tensors}

    @property
    def failures(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.passed]

    def summary(self) -> str:
        """One line: the verdict and what failed."""
        if self.passed:
            how = (
                "bit-identical"
                if self.tolerance.exact
                else f"within atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}"
            )
            return f"PASS: {len(self.tensors)} tensor(s) {how}"
        names = ", ".join(f"`{t.name}` ({t.status})" for t in self.failures[:5])
        more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        return f"FAIL: {len(self.failures)} of {len(self.tensors)} tensor(s) differ: {names}{more}"

    def to_dict(self) -> dict:
        return {
            "schema": DIFF_SCHEMA,
            "title": self.title,
            "passed": self.passed,
            "summary": self.summary(),
            "candidate": self.candidate,
            "reference": self.reference,
            "seed": self.seed,
            "tolerance": self.tolerance.to_dict(),
            "feeds": self.feeds,
            "tensors": [t.to_dict() for t in self.tensors],
            "notes": list(self.notes),
        }


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
