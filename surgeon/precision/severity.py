"""How bad a node's own error is, the ranking of nodes by it, and the root cause.

The ranking never looks at a node's position: the same graph in another valid
topological order ranks the same. It sorts by, in turn:

1. **tier**: ``non-finite`` (NaN/Inf born here: the output is not finite where the
   reference is, from inputs that are finite in the candidate's dtype), then ``beyond``
   (outside tolerance), then ``inherited`` (outside tolerance, but an input's reference
   value already overflows the candidate's dtype, so the fault is upstream), then
   ``within``;
2. the fraction of elements born non-finite;
3. **excess**: the largest ``|actual - reference| / (atol + rtol * |reference|)`` over the
   elements finite on both sides, i.e. how many times the tolerance the worst element
   misses by. It is scale-free and measured against the user's own tolerance; the
   mismatch fraction alone cannot tell a float16 overflow in one element from the
   rounding every float16 node shows at a tight tolerance;
4. the mismatch fraction (``mismatches / size``);
5. the node's label, then its first output (deterministic ties; ties on 1-4 are reported).

The root cause is the first unit in tier ``non-finite`` or ``beyond``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from surgeon.compare import TensorDiff, Tolerance, json_number

if TYPE_CHECKING:
    from surgeon.precision.isolated import IsolatedError, IsolatedRun

TIERS = ("non-finite", "beyond", "inherited", "within")


@dataclass(frozen=True)
class Severity:
    """The numbers a unit is ranked by (see the module docstring)."""

    tier: str
    excess: float
    born_nonfinite: int
    mismatches: int
    size: int

    @property
    def beyond(self) -> bool:
        """Outside tolerance through an error of its own (not inherited)."""
        return self.tier in ("non-finite", "beyond")

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatches / self.size if self.size else 0.0

    @property
    def born_fraction(self) -> float:
        return self.born_nonfinite / self.size if self.size else 0.0

    def key(self) -> tuple:
        """Smaller is worse."""
        return (TIERS.index(self.tier), -self.born_fraction, -self.excess, -self.mismatch_fraction)

    def to_dict(self) -> dict:
        return {
            "tier": self.tier,
            "excess": json_number(self.excess),
            "born_nonfinite": self.born_nonfinite,
            "mismatches": self.mismatches,
            "mismatch_fraction": self.mismatch_fraction,
            "size": self.size,
        }


# Elements per block of the severity pass: float64 temporaries of 512 KiB stay in the
# allocator's heap and the CPU's cache (whole-tensor float64 copies and masks were fresh
# mappings, page-faulted on every call: 1.1 s of a 232-node YOLO debug run).
_BLOCK = 1 << 16


def _excess(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> float:
    """max |a - b| / (atol + rtol |b|) over elements finite on both sides (the same limit
    compare_arrays applies); any difference is infinitely beyond a zero tolerance."""
    return _excess_and_born(actual, expected, tolerance)[0]


def _excess_and_born(
    actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance
) -> tuple[float, int]:
    """(:func:`_excess`, the count of elements not finite in ``actual`` where
    ``expected`` is finite), in one pass over blocks of both arrays.

    A block whose differences are all finite (the usual case: then every value on both
    sides is) takes the short way: no masks, every temporary reused. A block holding a
    NaN or Inf, or a difference that overflows float64, is measured element-wise exactly
    as a whole-tensor pass would (:func:`_block_general`). The largest ratio over blocks
    is the largest over the tensor; a ratio is NaN only for 0 / 0, which counts as 0.
    """
    flat_a, flat_b = actual.ravel(), expected.ravel()
    worst, compared, seen, born = 0.0, False, False, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, flat_a.size, _BLOCK):
            a = flat_a[start : start + _BLOCK].astype(np.float64)
            b = flat_b[start : start + _BLOCK].astype(np.float64)
            diff = np.subtract(a, b, out=a)
            np.abs(diff, out=diff)
            largest = float(diff.max())  # NaN and Inf propagate: the block's check
            if not math.isfinite(largest):
                block_worst, block_compared, block_seen, block_born = _block_general(
                    flat_a[start : start + _BLOCK], flat_b[start : start + _BLOCK], tolerance
                )
                born += block_born
                compared |= block_compared
                if block_seen:
                    worst, seen = max(worst, block_worst) if seen else block_worst, True
                continue
            compared = True
            if largest == 0:
                block_worst = 0.0  # every ratio is 0 (0 / 0 counts as 0)
            else:
                limit = np.abs(b, out=b)
                if tolerance.exact:
                    limit[...] = 0.0
                else:
                    # atol + rtol * |b|, in compare_arrays's order of operations
                    limit *= tolerance.rtol
                    limit += tolerance.atol
                # fmax skips the NaN of 0 / 0; some difference is not 0, so its ratio
                # (finite or inf) is there
                block_worst = float(np.fmax.reduce(np.divide(diff, limit, out=diff)))
            worst, seen = max(worst, block_worst) if seen else block_worst, True
    if not compared:
        return 0.0, born
    if not seen:
        return math.inf, born  # every ratio NaN (inf / inf): as a NaN maximum, inf
    return worst, born


def _block_general(
    actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance
) -> tuple[float, bool, bool, int]:
    """One block with non-finite values or differences: (its largest ratio, whether any
    element was finite on both sides, whether any ratio was not NaN, its born count)."""
    a = actual.astype(np.float64)
    b = expected.astype(np.float64)
    finite_b = np.isfinite(b)
    born = int(np.count_nonzero(~np.isfinite(a) & finite_b))
    finite = np.isfinite(a) & finite_b
    if not finite.any():
        return 0.0, False, False, born
    diff = np.abs(a[finite] - b[finite])
    limit = 0.0 if tolerance.exact else tolerance.atol + tolerance.rtol * np.abs(b[finite])
    ratio = np.where(diff == 0, 0.0, diff / limit)
    kept = ratio[~np.isnan(ratio)]
    if not kept.size:
        return 0.0, True, False, born
    return float(kept.max()), True, True, born


def _numeric(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype.kind in "fiub"


def measure_severity(
    actual, expected, diff: TensorDiff, tolerance: Tolerance, inherited: bool
) -> Severity:
    """The severity of one output compared with its reference (``diff`` from
    compare_arrays; ``inherited`` when an input overflowed the candidate's dtype)."""
    if not (_numeric(actual) and _numeric(expected)) or np.shape(actual) != np.shape(expected):
        # Sequences, strings, or a shape that differs: pass/fail is all there is to say.
        return severity_from(diff, None, 0, inherited)
    excess, born = _excess_and_born(actual, expected, tolerance)
    return severity_from(diff, excess, born, inherited)


def severity_from(diff: TensorDiff, excess: float | None, born: int, inherited: bool) -> Severity:
    """The severity from ``diff`` and the excess and born count measured elsewhere (e.g.
    inside onnxruntime); ``excess`` None when the two sides cannot be measured element
    by element (other shapes, not numbers): then pass/fail is all there is to say."""
    size = diff.size
    if excess is None:
        excess = 0.0 if diff.passed else math.inf
        born = 0
    mismatches = diff.mismatches if diff.status in ("ok", "mismatch") else size
    if diff.passed:
        tier = "within"
    elif inherited:
        tier = "inherited"
    elif born:
        tier = "non-finite"
    else:
        tier = "beyond"
    return Severity(tier, excess, born, mismatches, size)


def _order(unit: IsolatedError) -> tuple:
    first = unit.outputs[0].tensor if unit.outputs else ""
    return (unit.severity.key(), unit.node, first)


def rank_units(run: IsolatedRun) -> list[IsolatedError]:
    """The evaluated units, worst first; sets each one's ``rank`` (1 = worst)."""
    ranked = sorted((u for u in run.units if u.severity is not None), key=_order)
    for i, u in enumerate(ranked, 1):
        u.rank = i
    return ranked


@dataclass
class RootCause:
    """The verdict on which node makes the error.

    Attributes:
        verdict: ``found`` (``unit`` has the worst own error beyond tolerance),
            ``inherited`` (every unit beyond tolerance has inputs that already overflow
            the candidate's dtype, and their producers could not be checked),
            ``accumulated`` (no unit's own error is beyond tolerance, yet a cumulative one
            is: many small errors add up; ``unit`` has the largest own error),
            ``clean`` (nothing beyond tolerance) or ``unchecked`` (no unit was evaluated).
        unit: The node named (None for ``clean`` and ``unchecked``).
        ties: Other units exactly as bad by every ranked measure.
        message: One sentence for a person.
    """

    verdict: str
    unit: IsolatedError | None = None
    ties: list[IsolatedError] = field(default_factory=list)
    message: str = ""

    def __bool__(self) -> bool:
        """True when a node was found to make an error beyond tolerance."""
        return self.verdict == "found"

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "node": self.unit.node if self.unit is not None else None,
            "ties": [u.node for u in self.ties],
            "message": self.message,
        }


def describe_unit(unit: IsolatedError) -> str:
    """A unit's own error (and its cumulative one) as the end of a sentence."""
    s, d = unit.severity, unit.isolated
    if s.born_nonfinite:
        what = f"{s.born_nonfinite} of {s.size} element(s) become NaN/Inf"
    else:
        what = f"{s.mismatches} of {s.size} element(s) beyond tolerance"
    if d is not None and d.max_abs is not None:
        what += f", max abs {d.max_abs:.3g}"
        if d.max_rel is not None:
            what += f", max rel {d.max_rel:.3g}"
    c = unit.cumulative
    if c is not None:
        what += f"; cumulative: {c.mismatches} of {c.size} beyond tolerance" + (
            f", max abs {c.max_abs:.3g}" if c.max_abs is not None else ""
        )
    return what


def pick_root_cause(run: IsolatedRun) -> RootCause:
    """The unit whose own error is worst beyond tolerance, with ties and the cases where
    there is none said explicitly."""
    ranked = rank_units(run)
    if not ranked:
        return RootCause(
            "unchecked", message="no node could be run on the reference's values at its inputs"
        )
    top = ranked[0]
    ties = [u for u in ranked[1:] if u.severity.key() == top.severity.key()]
    label = f"`{top.node}` ({top.op})"
    if top.severity.beyond:
        return RootCause(
            "found",
            top,
            ties,
            f"{label} makes the largest error of its own: {describe_unit(top)}",
        )
    if top.severity.tier == "inherited":
        return RootCause(
            "inherited",
            top,
            ties,
            f"{label} is beyond tolerance only on inputs that overflow the candidate's dtype "
            f"({', '.join(f'`{t}`' for t in top.overflowed_inputs)}); the node producing them "
            "could not be checked",
        )
    drifting = [u for u in ranked if u.cumulative is not None and not u.cumulative.passed]
    if drifting:
        return RootCause(
            "accumulated",
            top,
            [],
            f"no node's own error is beyond tolerance, but {len(drifting)} cumulative error(s) "
            f"are: small errors add up; the largest own error is at {label} "
            f"({top.severity.excess:.3g} x tolerance)",
        )
    return RootCause("clean", message="every checked node is within tolerance on its own")
