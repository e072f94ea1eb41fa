"""What a comparison returns: :class:`Tolerance` (when two tensors count as equal), one
:class:`TensorDiff` per tensor, and the :class:`DiffReport` every verification returns.

Numbers only, no rendering: ``surgeon.report`` draws these as rich tables and the CLI
writes ``to_dict()`` as JSON. A report is truthy when it passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from surgeon.annotations import checked_init
from surgeon.defaults import DEFAULT_ATOL, DEFAULT_RTOL
from surgeon.errors import UsageError

DIFF_SCHEMA = "surgeon.diff/1"


@checked_init  # field types checked on construction: a UsageError, never a TypeError
@dataclass(frozen=True)
class Tolerance:
    """When two tensors count as equal.

    An element matches when ``|actual - expected| <= atol + rtol * |expected|``; NaN
    matches NaN and an infinity matches the same infinity. Integer tensors compare in
    exact integer arithmetic with ``|actual - expected| <= atol`` (no relative slack on
    ids and indices; int64 near 2**60 or uint64 beyond 2**63 never round); bool tensors
    must be equal. With ``cast``, an integer tensor against a float one compares by
    exact value too. With ``exact`` the elements must be bit-identical instead (what
    edits that should not touch the maths promise).

    Raises:
        UsageError: ``atol`` or ``rtol`` is negative or NaN (an infinite tolerance is
            allowed: it accepts every pair of finite values).
    """

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
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
                hint=(
                    "Use e.g. atol=1e-4, rtol=1e-3, or exact=True for bit-identity "
                    "(--atol, --rtol, --exact on the command line)."
                ),
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
    max_abs: float | int | None = None  # an int for integer tensors (exact)
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
    """Floats for JSON: NaN becomes null, infinities the strings "inf" / "-inf";
    integers (exact integer differences) stay integers."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return int(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def is_container(value) -> bool:
    """True for the non-tensor values onnxruntime returns: lists, None, dicts."""
    return value is None or isinstance(value, (list, tuple, dict))


def container_kind(value) -> str:
    """What a value is, as reports name it: ``empty optional``, ``sequence``, ``map`` or
    ``tensor``."""
    if value is None:
        return "empty optional"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "tensor"


def _describe(value) -> tuple[list[int] | None, str | None, int]:
    """Shape, dtype name and size of a value for reports (sequences have no shape)."""
    if is_container(value):
        return None, container_kind(value), len(value) if value is not None else 0
    value = np.asarray(value)
    return list(value.shape), value.dtype.name, int(value.size)


def missing(
    name: str, reference: str, expected: np.ndarray | None = None, why: str = ""
) -> TensorDiff:
    """The entry for a reference tensor the candidate does not produce."""
    d = TensorDiff(
        name=name, reference=reference, status="missing", message=why or f"`{name}` is not produced"
    )
    if expected is not None:
        d.reference_shape, d.reference_dtype, d.size = _describe(expected)
    return d


def extra(name: str, actual: np.ndarray | None = None, why: str = "") -> TensorDiff:
    """The entry for a candidate tensor that has no reference tensor."""
    d = TensorDiff(
        name=name, reference="", status="extra", message=why or f"`{name}` has no reference tensor"
    )
    if actual is not None:
        d.shape, d.dtype, d.size = _describe(actual)
    return d


@dataclass
class DiffReport:
    """The result of a verification: one TensorDiff per compared tensor.

    Truthy when every tensor passed and there is at least one: zero compared tensors is
    never a pass (a check that compared nothing proves nothing), whoever built the
    report. ``report.outputs["boxes"].max_abs`` reads one entry.
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
        return bool(self.tensors) and all(t.passed for t in self.tensors)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def outputs(self) -> dict[str, TensorDiff]:
        return {t.name: t for t in self.tensors}

    @property
    def failures(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.passed]

    def worst_abs(self) -> float | None:
        """The largest max_abs over the compared tensors (None when none has one)."""
        found = [
            t.max_abs for t in self.tensors if t.max_abs is not None and t.max_abs == t.max_abs
        ]
        return max((float(abs(x)) for x in found), default=None)

    def summary(self) -> str:
        """One line: the verdict and what failed."""
        if not self.tensors:
            return "FAIL: no tensor was compared (zero compared tensors is never a pass)"
        if self.passed:
            if self.tolerance.exact:
                how = "bit-identical"
            else:
                # Whether the values were really equal shows even at the one default
                # tolerance: an edit that keeps values the same says so, one that moved
                # them within tolerance shows by how much.
                how = f"within atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}"
                worst = self.worst_abs()
                how += " (equal values)" if worst == 0 else f" (max abs error {worst:.3g})"
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
