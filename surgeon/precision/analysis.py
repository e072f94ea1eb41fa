"""One call for a caller that has both sides' values: pair, isolate, rank, pick.

``surgeon debug`` (and the float16 planner and int8 exclusion list after it) hold the
candidate Model, the reference (a Model or saved values), both sides' tapped values and a
Tolerance; :func:`analyse_precision` turns those into a :class:`PrecisionReport`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from surgeon.compare import TensorDiff, Tolerance
from surgeon.model import Model
from surgeon.precision.isolated import (
    IsolatedError,
    IsolatedRun,
    MeasuredUnits,
    isolated_errors,
)
from surgeon.precision.pairing import Pairing, pair_tensors
from surgeon.precision.severity import RootCause, pick_root_cause
from surgeon.runner import RunOptions

PRECISION_SCHEMA = "surgeon.precision/1"


@dataclass
class PrecisionReport:
    """Pairing, every unit's isolated and cumulative error, the ranking and the verdict.

    Truthy when no node's own error is beyond tolerance (``clean``).
    """

    pairing: Pairing
    run: IsolatedRun
    ranking: list[IsolatedError] = field(default_factory=list)
    root_cause: RootCause = field(default_factory=lambda: RootCause("unchecked"))

    @property
    def not_evaluated(self) -> list[IsolatedError]:
        return sorted((u for u in self.run.units if u.severity is None), key=lambda u: u.node)

    def __bool__(self) -> bool:
        return self.root_cause.verdict == "clean"

    def to_dict(self) -> dict:
        return {
            "schema": PRECISION_SCHEMA,
            "tolerance": self.run.tolerance.to_dict(),
            "root_cause": self.root_cause.to_dict(),
            "ranking": [u.to_dict() for u in self.ranking],
            "not_evaluated": [u.to_dict() for u in self.not_evaluated],
            "pairing": self.pairing.to_dict(),
            "seconds": self.run.seconds,
            "runs": self.run.runs,
            "session_seconds": self.run.session_seconds,
        }


def analyse_precision(
    candidate: Model,
    reference: Model | Iterable[str],
    reference_values: Mapping[str, object],
    candidate_values: Mapping[str, object] | None = None,
    tolerance: Tolerance = Tolerance(),
    *,
    name_map: Mapping[str, str] | None = None,
    options: RunOptions | None = None,
    cumulative: Mapping[str, TensorDiff] | None = None,
    pairing: Pairing | None = None,
    measured: MeasuredUnits | None = None,
) -> PrecisionReport:
    """Pair ``candidate``'s tensors with the reference's, run every checkable node on the
    reference's values at its inputs (one batched onnxruntime run), rank the nodes by
    their own error and name the root cause.

    Args:
        candidate: The model under test (e.g. a float16 or QDQ int8 conversion).
        reference: The reference Model, or the names of the saved reference values.
        reference_values: Reference tensor name -> value; include the inputs.
        candidate_values: The candidate's tapped values (for cumulative errors).
        tolerance: When a tensor matches.
        name_map: Reference name -> candidate name for tensors named differently.
        options: onnxruntime options (custom-op libraries, threads).
        cumulative: Candidate tensor -> its diff with the reference, computed already
            (in place of ``candidate_values`` for the cumulative errors).
        pairing: The pairing, when the caller made it already (with the same
            arguments :func:`pair_tensors` would be given here).
        measured: Units evaluated already (see :func:`isolated_errors`).
    """
    if not isinstance(reference, Model):
        reference = list(dict.fromkeys([*reference, *reference_values]))
    if pairing is None:
        pairing = pair_tensors(
            candidate, reference, name_map=name_map, candidate_values=candidate_values
        )
    run = isolated_errors(
        candidate,
        pairing,
        reference_values,
        candidate_values,
        tolerance,
        options=options,
        cumulative=cumulative,
        measured=measured,
    )
    root = pick_root_cause(run)
    ranking = sorted((u for u in run.units if u.rank is not None), key=lambda u: u.rank)
    return PrecisionReport(pairing, run, ranking, root)
