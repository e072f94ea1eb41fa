"""What ``debug`` takes and returns: :class:`DebugOptions`, and :class:`DebugReport` with
its per-tensor findings (:class:`LayerDiff`, :class:`NonFinite`) and the one-line verdict
the report leads with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from surgeon.annotations import checked_init
from surgeon.compare import DiffReport, TensorDiff, Tolerance
from surgeon.debugging._precision_json import isolated_dict, ranking_entry, unpaired_entry
from surgeon.defaults import DEFAULT_OPTIMIZATION
from surgeon.feeds import FeedOptions
from surgeon.statistics import SEVERE, TensorStats

DEBUG_SCHEMA = "surgeon.debug/1"


@checked_init  # field types checked on construction: a UsageError, never a TypeError
@dataclass(frozen=True)
class DebugOptions:
    """What ``debug`` does.

    Attributes:
        taps: Tensor or node names, globs, or ``all``.
        ops: Op types whose outputs are tapped too.
        reference: A Model, a path to a ``.onnx`` or ``.npz`` (activations keyed by
            tensor name), a dict of arrays, or None.
        name_map: Reference name -> model name, for tensors named differently.
        reference_optimization: Compare against the same model run at this onnxruntime
            optimisation level (when ``reference`` is None).
        tolerance: When a tensor matches its reference.
        keep_values: Return the tapped tensors' values (to save them, see
            :func:`save_values`).
        optimization: onnxruntime level for the model itself. ``disabled`` (default)
            gives each node's output as the graph defines it, and makes the tap check
            bit-exact (taps block fusions that would change the last bits).
    """

    taps: tuple[str, ...] = ("all",)
    ops: tuple[str, ...] = ()
    reference: object = None
    name_map: Mapping[str, str] = field(default_factory=dict)
    reference_optimization: str | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    keep_values: bool = False
    optimization: str = DEFAULT_OPTIMIZATION
    custom_op_libraries: tuple[str, ...] = ()
    feed_options: FeedOptions = field(default_factory=FeedOptions)


@dataclass
class LayerDiff:
    """One tapped tensor compared with its reference, with its place in the graph."""

    diff: TensorDiff
    node: str
    op: str
    index: int
    inputs: list[str]
    diverged: bool
    origin: str | None = None
    # For a root-cause candidate: inputs known to match the reference (compared and
    # within tolerance, or graph inputs, fed the same on both sides; constants too when
    # the reference is this model), and activations that were not compared (no
    # reference value). Constants of another reference model are in neither list.
    matched_inputs: list[str] = field(default_factory=list)
    uncompared_inputs: list[str] = field(default_factory=list)
    # The node's own error: run on the reference's values at its inputs (None when it
    # was not); its severity and rank (1 = worst) among the nodes so run.
    isolated: TensorDiff | None = None
    severity: object = None
    rank: int | None = None

    @property
    def evidence_rank(self) -> int:
        """0: every input that could be compared matches; 1: some match, some were not
        compared; 2: no input was compared (or matched)."""
        if not self.uncompared_inputs:
            return 0 if self.matched_inputs else 2
        return 1 if self.matched_inputs else 2

    def inputs_text(self) -> str:
        """What the check shows about the inputs, as the end of a sentence (with its
        leading separator): `` while all its inputs match`` or ``; its inputs were not
        compared ...``."""
        missing = (
            f"{len(self.uncompared_inputs)} input(s) had no reference value: "
            f"{names_text(self.uncompared_inputs)}"
        )
        if self.evidence_rank == 2:
            if not self.uncompared_inputs:
                return "; its inputs were not compared"
            return (
                f"; its inputs were not compared ({missing}), so the divergence may start before it"
            )
        if self.uncompared_inputs:
            return f" while all its compared inputs match ({missing})"
        if self._unjudged:  # another model's weights: nothing is said about them
            return " while all its compared inputs match"
        return " while all its inputs match"

    @property
    def _unjudged(self) -> bool:
        """Inputs in neither list: constants of another reference model."""
        return len(set(self.matched_inputs) | set(self.uncompared_inputs)) < len(set(self.inputs))

    def to_dict(self) -> dict:
        d = self.diff.to_dict()
        d.update(
            {
                "node": self.node,
                "op": self.op,
                "index": self.index,
                "inputs": self.inputs,
                "diverged": self.diverged,
                "origin": self.origin,
                "matched_inputs": self.matched_inputs,
                "uncompared_inputs": self.uncompared_inputs,
                "isolated": isolated_dict(self),
            }
        )
        return d


@dataclass
class NonFinite:
    """Where the NaN/Inf of one tensor comes from.

    ``kind`` is one of:

    * ``born``: produced by a node whose inputs are all finite (a real anomaly: the
      run fails);
    * ``unknown``: produced by a computed node some of whose inputs were not tapped, so
      it may be born there or earlier (the run fails: tap the inputs to find out);
    * ``inherited``: an input of its node already holds NaN/Inf;
    * ``input``: a graph input fed with NaN/Inf (the user's data, not the model);
    * ``constant``: a value computed from constants only (initializers, Constant,
      ConstantOfShape), such as the ``-inf`` of an attention mask: deliberate;
    * ``weights``: a computed tensor where the NaN of a constant (a weight, a Constant)
      enters the data and goes on to reach a graph output (the run fails: a ``-inf`` mask
      is deliberate, a NaN weight that spoils the outputs is not).

    A NaN from inputs that hold Inf but no NaN (``0 * -inf``, Softmax of a fully masked
    row) is ``born`` (``from_inf``) when it reaches a graph output, and ``inherited``
    from the deliberate Inf when something (a Where) removes it before.
    """

    tensor: str
    kind: str
    nan: int
    inf: int
    node: str | None = None
    op: str | None = None
    untapped_inputs: list[str] = field(default_factory=list)
    origin: str | None = None
    constants: list[str] = field(default_factory=list)  # ``weights``: the NaN constants
    outputs: list[str] = field(default_factory=list)  # ``weights``: the outputs they reach
    from_inf: bool = False  # ``born``: a NaN from inputs holding Inf (but no NaN)

    @property
    def fails(self) -> bool:
        return self.kind in ("born", "unknown", "weights")

    def describe(self) -> str:
        """``3 NaN and 1 Inf`` (the counts only)."""
        parts = [f"{n} {label}" for n, label in ((self.nan, "NaN"), (self.inf, "Inf")) if n]
        return " and ".join(parts) or "no NaN/Inf"

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor,
            "kind": self.kind,
            "nan": self.nan,
            "inf": self.inf,
            "node": self.node,
            "op": self.op,
            "untapped_inputs": self.untapped_inputs,
            "origin": self.origin,
            "constants": self.constants,
            "outputs": self.outputs,
            "from_inf": self.from_inf,
        }


@dataclass
class DebugReport:
    """Everything ``debug`` found. Truthy when nothing failed: the tap check passed, no
    NaN/Inf appeared, and (with a reference) no tensor diverged."""

    model: str
    stats: list[TensorStats]
    tap_check: DiffReport | None
    not_tappable: dict[str, str]
    feeds: dict[str, dict]
    seed: int | None
    optimization: str
    reference: str | None = None
    tolerance: Tolerance | None = None
    layers: list[LayerDiff] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    first_anomaly: TensorStats | None = None
    root_cause: LayerDiff | None = None
    other_roots: list[LayerDiff] = field(default_factory=list)
    uncompared_inputs: list[str] = field(default_factory=list)
    mode: str = "statistics"
    shape_mismatches: list = field(default_factory=list)  # declared vs real (ShapeMismatch)
    float16: bool = False  # the model computes in float16 (matters for the tap check)
    # The tap check allowed float16 rounding (edits.tap.FLOAT16_TAP_TOLERANCE), not bit-identity.
    float16_tap_tolerance: bool = False
    # Where each NaN/Inf comes from (born, inherited, input, constant), in graph order.
    nonfinite: list[NonFinite] = field(default_factory=list)
    # Keys of a reference (.npz or model tensors) no tapped tensor was compared with.
    unused_reference: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. inputs cast to the model's dtype
    # Reference model input -> where its value came from (a model input, the feeds file, random).
    reference_feeds: dict[str, str] = field(default_factory=dict)
    # Each node's own error against the reference (surgeon.precision.PrecisionReport);
    # None without one, or against the same model at another optimisation level.
    precision: object = None
    diverged_outputs: list[str] = field(default_factory=list)  # compared graph outputs
    compared_outputs: list[str] = field(default_factory=list)  # graph outputs compared
    # Taps inside If/Loop/Scan bodies (surgeon.debugging.bodies): "taps" (executed or
    # not, iterations, worst iteration) and "root_cause" when it lies inside a body.
    bodies: dict = field(default_factory=dict)
    body_root: str | None = None  # the verdict's root-cause sentence when inside a body
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    feed_values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def diverged(self) -> list[LayerDiff]:
        return [layer for layer in self.layers if layer.diverged]

    @property
    def born(self) -> list[NonFinite]:
        """The NaN/Inf that fail the run: born in a computed node from finite inputs, or
        in one whose inputs were not tapped."""
        return [x for x in self.nonfinite if x.fails]

    @property
    def passed(self) -> bool:
        if self.tap_check is not None and not self.tap_check.passed:
            return False
        if self.born:
            return False
        verdict = self.isolated_verdict
        if verdict is not None:
            if self.diverged_outputs:
                return False
            # A node beyond tolerance on its own fails the run only where the model's
            # outputs do not show it meets the tolerance: when they were compared and all
            # hold, the model is within tolerance where it matters, and the node is
            # reported as where it comes closest to failing (a float16 Conv's own rounding
            # at 1e-2, say), not as a root cause of a failure there is not.
            return verdict not in ("found", "inherited") or self.outputs_hold
        return not self.diverged

    @property
    def outputs_hold(self) -> bool:
        """Graph outputs were compared with the reference and all are within tolerance,
        and no reference tensor misfits (a shape or dtype that does not fit is a failed
        comparison, whatever the outputs say)."""
        misfit = any(layer.diff.status in ("shape", "dtype") for layer in self.layers)
        return bool(self.compared_outputs) and not self.diverged_outputs and not misfit

    @property
    def isolated_verdict(self) -> str | None:
        """The verdict by isolated error (``found``, ``inherited``, ``accumulated``,
        ``clean``); None when it does not apply (no such reference, or no node could be
        run on the reference's values), and the verdict is by graph position."""
        if self.precision is None or self.precision.root_cause.verdict == "unchecked":
            return None
        return self.precision.root_cause.verdict

    def __bool__(self) -> bool:
        return self.passed

    def verdict(self) -> str:
        """The one-line answer the report leads with."""
        parts = []
        if self.tap_check is not None and not self.tap_check.passed:
            text = f"tap check FAILED: tapping changed the original outputs ({self.tap_check.summary()})"
            if self.float16 and self.float16_tap_tolerance:
                # The check already allowed float16 rounding (see edits.tap): more than
                # that means the outputs are sensitive to where float16 rounds.
                text += (
                    ". This is a float16 model and the check already allowed 8 float16 ulps: "
                    "its outputs are this sensitive to float16 rounding, so the model may be "
                    "unstable in float16 (compare it with its float32 original as the reference)"
                )
            elif self.float16:
                # Seen on the onnx operator corpus: onnxruntime's CPU computes float16
                # chains in float32 and rounds only where a tensor is exposed.
                text += (
                    ". This is a float16 model: onnxruntime rounds intermediate float16 results only "
                    "where a tensor is exposed, so tapping can move the last bits; to accept that, "
                    "check within a tolerance (atol/rtol) with optimization 'all' "
                    "(--optimization all --atol ... --rtol ... on the command line)"
                )
            parts.append(text)
        if self.reference is not None and self.body_root is not None:
            parts.append(self.body_root)
        elif self.reference is not None and self.isolated_verdict is not None:
            parts += self._isolated_text()
        elif self.reference is not None:
            if self.root_cause is not None:
                parts.append(root_cause_text(self.root_cause))
            elif self.layers:
                parts.append(f"all {len(self.layers)} compared tensors match the reference")
            else:
                parts.append("no tapped tensor has a reference value to compare with")
        parts += self._nonfinite_text()
        return "; ".join(parts) if parts else "nothing tapped"

    def _isolated_text(self) -> list[str]:
        """The verdict by isolated error (see :mod:`surgeon.debugging.isolation`)."""
        root = self.precision.root_cause
        verdict = root.verdict
        layer = self.root_cause
        if verdict in ("found", "inherited") and self.outputs_hold:
            return [
                f"outputs within tolerance ({names_text(self.compared_outputs)} compared); "
                f"no failure to explain, but {root.message}"
                + (
                    f" ({len(self.other_roots)} other node(s) with an own error beyond tolerance)"
                    if self.other_roots
                    else ""
                )
            ]
        if verdict in ("found", "inherited"):
            if layer is None:
                return [f"root cause: {root.message}"]
            where = f"`{layer.node}` ({layer.op})" + (f" = {layer.origin}" if layer.origin else "")
            if layer.diff.status in ("shape", "dtype"):
                text = root_cause_text(layer)  # a misfit says what does not fit
            elif root.unit is not None and root.unit.isolated.name != layer.diff.name:
                text = f"root cause: {where}, where the first NaN/Inf is born"
            elif verdict == "found":
                from surgeon.precision.severity import describe_unit

                text = (
                    f"root cause: {where}: its output `{layer.diff.name}` diverges from the "
                    "reference, and run on the reference's values at its inputs it makes the "
                    f"largest error of its own ({describe_unit(root.unit)})"
                )
                if self.uncompared_inputs:
                    # the unit took in the producers of inputs with no reference value
                    helpers = [n for n in root.unit.nodes[:-1]]
                    text += (
                        f"; its input(s) {names_text(self.uncompared_inputs)} had no reference "
                        f"value and were computed with it by {names_text(helpers)}, so the "
                        "error may start there"
                    )
            else:
                text = f"root cause: {root.message}"
            if self.other_roots:
                text += (
                    f" ({len(self.other_roots)} other node(s) with an own error beyond tolerance)"
                )
            return [text]
        if verdict == "clean" and not self.diverged:
            return [
                f"all {len(self.layers)} compared tensors match the reference (every node run "
                "on the reference's values at its inputs is within tolerance on its own)"
            ]
        outputs = (
            f"; output(s) {names_text(self.diverged_outputs)} are beyond tolerance"
            if self.diverged_outputs
            else f"; the compared outputs are within tolerance ({len(self.layers)} tensors compared)"
        )
        return [f"no root cause: {root.message}{outputs}"]

    def _nonfinite_text(self) -> list[str]:
        parts = []
        by_kind: dict[str, list[NonFinite]] = {}
        for x in self.nonfinite:
            by_kind.setdefault(x.kind, []).append(x)
        for x in by_kind.get("input", []):
            parts.append(f"input `{x.tensor}` contains {x.describe()}")
        born = self.born
        if born:
            first = born[0]
            kind = "NaN" if first.nan else "Inf"
            origin = f" = {first.origin}" if first.origin else ""
            text = (
                f"first {kind} at `{first.tensor}`, produced by `{first.node}` ({first.op}){origin}"
            )
            if first.kind == "born":
                text += (
                    " from inputs that hold Inf but no NaN (e.g. 0 * inf, inf - inf), and it "
                    f"reaches output(s) {names_text(first.outputs)}"
                    if first.from_inf
                    else " from finite inputs"
                )
            elif first.kind == "weights":
                text = (
                    f"NaN of constant(s) {names_text(first.constants)} enters the data at "
                    f"`{first.tensor}`, produced by `{first.node}` ({first.op}){origin}, and "
                    f"reaches output(s) {names_text(first.outputs)}: a NaN in weights is not "
                    "deliberate"
                )
            else:
                text += (
                    f"; its input(s) {names_text(first.untapped_inputs)} were not tapped, so the "
                    "NaN/Inf may be born earlier (tap them, or tap all)"
                )
            if len(born) > 1:
                text += (
                    f" (and {len(born) - 1} more node(s) where NaN/Inf appears from finite inputs)"
                )
            parts.append(text)
        constants = by_kind.get("constant", [])
        if constants:
            shown = ", ".join(f"`{x.tensor}` ({x.describe()})" for x in constants[:3])
            more = f" and {len(constants) - 3} more" if len(constants) > 3 else ""
            parts.append(
                f"deliberate non-finite values in constants: {shown}{more} (computed from "
                "constants only, e.g. an attention mask; not an anomaly)"
            )
        if not born:
            if self.nonfinite:
                parts.append("no NaN/Inf is born inside the model")
            anomaly = self.first_anomaly
            if anomaly is not None and not any(f in SEVERE for f in anomaly.flags):
                parts.append(
                    f"{'no NaN/Inf; ' if not self.nonfinite else ''}first anomaly: "
                    f"{', '.join(anomaly.flags)} at `{anomaly.name}`, produced by "
                    f"`{anomaly.node}` ({anomaly.op})"
                )
            elif not self.nonfinite and self.stats:
                minor = sum(1 for st in self.stats if st.flags)
                parts.append(
                    f"no anomaly in {len(self.stats)} tapped tensors"
                    + (
                        f" ({minor} flag(s) on constants or integer tensors, listed below)"
                        if minor
                        else ""
                    )
                )
        return parts

    def to_dict(self) -> dict:
        return {
            "schema": DEBUG_SCHEMA,
            "model": self.model,
            "passed": self.passed,
            "verdict": self.verdict(),
            "mode": self.mode,
            "seed": self.seed,
            "feeds": self.feeds,
            "optimization": self.optimization,
            "tap_check": self.tap_check.to_dict() if self.tap_check is not None else None,
            "first_anomaly": self.first_anomaly.to_dict() if self.first_anomaly else None,
            "nonfinite": [x.to_dict() for x in self.nonfinite],
            "taps": [s.to_dict() for s in self.stats],
            "not_tappable": [{"tensor": t, "node": n} for t, n in self.not_tappable.items()],
            "bodies": self.bodies,
            "reference": self.reference,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "root_cause": self.root_cause.to_dict() if self.root_cause else None,
            "other_root_causes": [r.to_dict() for r in self.other_roots],
            "uncompared_inputs": self.uncompared_inputs,
            "comparison": [layer.to_dict() for layer in self.layers],
            "unmatched": self.unmatched,
            **self._precision_dict(),
            "unused_reference": self.unused_reference,
            "notes": self.notes,
            "reference_feeds": self.reference_feeds,
            "declared_shape_mismatches": [m.to_dict() for m in self.shape_mismatches],
        }

    def _precision_dict(self) -> dict:
        """``isolated_verdict``, ``ranking``, ``pairing`` and ``unpaired`` (see the README)."""
        p = self.precision
        if p is None:
            return {"isolated_verdict": None, "ranking": [], "pairing": None, "unpaired": []}
        return {
            "isolated_verdict": p.root_cause.verdict,
            "isolated_message": p.root_cause.message,
            "ranking": [ranking_entry(u) for u in p.ranking],
            "pairing": p.pairing.to_dict(),
            "unpaired": [unpaired_entry(u) for u in p.not_evaluated],
            "isolated_seconds": p.run.seconds,
        }


def number_text(x, spec: str = ".3g") -> str:
    """A float for a sentence; None (not measured) and NaN/Inf never crash the format."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def names_text(names, limit: int = 5) -> str:
    shown = ", ".join(f"`{n}`" for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def root_cause_text(rc: LayerDiff) -> str:
    where = f"`{rc.node}` ({rc.op})" + (f" = {rc.origin}" if rc.origin else "")
    d = rc.diff
    if d.status in ("shape", "dtype"):
        what = d.message or f"its {d.status} differs from the reference"
        return f"root cause: {where}: its output `{d.name}` does not fit the reference ({what}){rc.inputs_text()}"
    return (
        f"root cause: {where}: its output `{d.name}` diverges from the reference "
        f"(max abs {number_text(d.max_abs)}, cosine {number_text(d.cosine, '.6f')}){rc.inputs_text()}"
    )
