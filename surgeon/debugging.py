"""``surgeon debug``: tap intermediate tensors, find the first bad layer, compare layer by
layer against a reference.

Two ways to look at taps:

* **Statistics only** (no reference, nothing saved): each tapped tensor gets a handful of
  reduction nodes (min, max, sum, sum of squares, NaN/Inf/zero counts) placed right after
  its producer, and only those few numbers become graph outputs. onnxruntime can then
  free every activation as soon as its consumers ran, so ``--tap all`` costs about one
  plain run instead of keeping every activation alive (what marking every tensor as an
  output does).
* **Values** (``--ref`` or ``--save``): the tapped tensors become outputs and are compared
  or saved; statistics are computed with numpy from the same values.

The verdict blames a NaN/Inf where it is born: at the first node (in topological order)
that is not computed from constants only and turns finite inputs into a NaN/Inf (see
:func:`blame_nonfinite`). NaN/Inf in the user's inputs, and deliberate ones computed from
constants only (the ``-inf`` of an attention mask), are reported as such and do not fail
the run; neither do values that merely inherit them. With a reference it names the
*root-cause node*: a node whose output diverges while none of its compared inputs does,
and says which inputs had no reference value; a node whose inputs were all compared
ranks before one with uncompared inputs (graph order within a rank). A reference model's
own inputs, which the model lacks, are fed from ``--inputs`` or at random by the seed
rule. A reference that pairs with no tapped tensor is an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.compare import EXACT, DiffReport, TensorDiff, Tolerance, compare_arrays
from surgeon.edits.tap import add_outputs, learn_types, not_tappable, select_taps
from surgeon.errors import RuntimeFailure, SurgeonError, UsageError, collect_unknown_names
from surgeon.feeds import FeedOptions, describe_feeds, load_npz, make_feeds
from surgeon.model import Model, dtype_name
from surgeon.runner import RunOptions, run
from surgeon.statistics import (
    SEVERE,
    TensorStats,
    build_stats_model,
    recount_stats,
    stats_from_array,
    stats_from_outputs,
)
from surgeon.verification import verify

DEBUG_SCHEMA = "surgeon.debug/1"


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
        keep_values: Return the tapped tensors' values (needed for ``--save``).
        optimization: onnxruntime level for the model itself. ``disabled`` (default)
            gives each node's output as the graph defines it, and makes the tap check
            bit-exact (taps block fusions that would change the last bits).
    """

    taps: tuple[str, ...] = ("all",)
    ops: tuple[str, ...] = ()
    reference: object = None
    name_map: Mapping[str, str] = field(default_factory=dict)
    reference_optimization: str | None = None
    tolerance: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-4, rtol=1e-4))
    keep_values: bool = False
    optimization: str = "disabled"
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
            f"{_names(self.uncompared_inputs)}"
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
    # Where each NaN/Inf comes from (born, inherited, input, constant), in graph order.
    nonfinite: list[NonFinite] = field(default_factory=list)
    # Keys of a reference (.npz or model tensors) no tapped tensor was compared with.
    unused_reference: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. inputs cast to the model's dtype
    # Reference model input -> where its value came from (a model input, --inputs, random).
    reference_feeds: dict[str, str] = field(default_factory=dict)
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
        return not self.diverged

    def __bool__(self) -> bool:
        return self.passed

    def verdict(self) -> str:
        """The one-line answer the report leads with."""
        parts = []
        if self.tap_check is not None and not self.tap_check.passed:
            text = f"tap check FAILED: tapping changed the original outputs ({self.tap_check.summary()})"
            if self.float16:
                # Seen on the onnx operator corpus: onnxruntime's CPU computes float16
                # chains in float32 and rounds only where a tensor is exposed.
                text += (
                    ". This is a float16 model: onnxruntime rounds intermediate float16 results only "
                    "where a tensor is exposed, so tapping can move the last bits; to accept that, "
                    "check within tolerance with --optimization all --atol ... --rtol ..."
                )
            parts.append(text)
        if self.reference is not None:
            if self.root_cause is not None:
                parts.append(_root_cause_text(self.root_cause))
            elif self.layers:
                parts.append(f"all {len(self.layers)} compared tensors match the reference")
            else:
                parts.append("no tapped tensor has a reference value to compare with")
        parts += self._nonfinite_text()
        return "; ".join(parts) if parts else "nothing tapped"

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
                    f"reaches output(s) {_names(first.outputs)}"
                    if first.from_inf
                    else " from finite inputs"
                )
            elif first.kind == "weights":
                text = (
                    f"NaN of constant(s) {_names(first.constants)} enters the data at "
                    f"`{first.tensor}`, produced by `{first.node}` ({first.op}){origin}, and "
                    f"reaches output(s) {_names(first.outputs)}: a NaN in weights is not "
                    "deliberate"
                )
            else:
                text += (
                    f"; its input(s) {_names(first.untapped_inputs)} were not tapped, so the "
                    "NaN/Inf may be born earlier (tap them, or --tap all)"
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
            "reference": self.reference,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "root_cause": self.root_cause.to_dict() if self.root_cause else None,
            "other_root_causes": [r.to_dict() for r in self.other_roots],
            "uncompared_inputs": self.uncompared_inputs,
            "comparison": [layer.to_dict() for layer in self.layers],
            "unmatched": self.unmatched,
            "unused_reference": self.unused_reference,
            "notes": self.notes,
            "reference_feeds": self.reference_feeds,
            "declared_shape_mismatches": [m.to_dict() for m in self.shape_mismatches],
        }


def _number(x, spec: str = ".3g") -> str:
    """A float for a sentence; None (not measured) and NaN/Inf never crash the format."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def _names(names, limit: int = 5) -> str:
    shown = ", ".join(f"`{n}`" for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _root_cause_text(rc: LayerDiff) -> str:
    where = f"`{rc.node}` ({rc.op})" + (f" = {rc.origin}" if rc.origin else "")
    d = rc.diff
    if d.status in ("shape", "dtype"):
        what = d.message or f"its {d.status} differs from the reference"
        return f"root cause: {where}: its output `{d.name}` does not fit the reference ({what}){rc.inputs_text()}"
    return (
        f"root cause: {where}: its output `{d.name}` diverges from the reference "
        f"(max abs {_number(d.max_abs)}, cosine {_number(d.cosine, '.6f')}){rc.inputs_text()}"
    )


# ---------------------------------------------------------------------- NaN/Inf blame
# Ops whose output is the same whatever the values of their inputs (only shapes count).
_VALUE_FREE_OPS = {"Constant", "ConstantOfShape"}
# Ops whose values are random even when their inputs are constants.
_RANDOM_OPS = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def constant_tensors(model: Model) -> set[str]:
    """Main-graph tensors computed from constants only: initializers, Constant and
    ConstantOfShape outputs (whose fill value does not depend on the data, even when
    the shape does), and outputs of nodes whose inputs (and outer-scope reads of their
    bodies) are all such tensors. A NaN/Inf in one is put there on purpose (the
    ``-inf`` of an attention mask), not produced by the data."""
    from surgeon.edits.extract import subgraph_reads

    graph = model.proto.graph
    feeds = set(model.input_names)
    constant = {t.name for t in graph.initializer if t.name not in feeds}
    constant |= {t.values.name for t in graph.sparse_initializer}
    for (
        node
    ) in graph.node:  # ONNX requires topological order; an unsorted graph only loses precision
        reads = [x for x in [*node.input, *subgraph_reads(node)] if x]
        if node.op_type in _VALUE_FREE_OPS and node.domain in ("", "ai.onnx"):
            constant.update(o for o in node.output if o)
        elif all(x in constant for x in reads) and node.op_type not in _RANDOM_OPS:
            constant.update(o for o in node.output if o)
    return constant


def _count_nonfinite(value) -> tuple[int, int] | None:
    """(NaN count, Inf count) of a value; None when it cannot be told."""
    if value is None:
        return (0, 0)
    if isinstance(value, (list, tuple)):
        counts = [_count_nonfinite(v) for v in value]
        if any(c is None for c in counts):
            return None
        return (sum(c[0] for c in counts), sum(c[1] for c in counts))
    if isinstance(value, dict):
        return _count_nonfinite(list(value.values()))
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind in "biuOUSb":
        return (0, 0)
    try:
        # float64 holds every narrower float exactly (bfloat16 and float8 included).
        x = value.astype(np.float64)
    except (TypeError, ValueError):
        return None
    return (int(np.isnan(x).sum()), int(np.isinf(x).sum()))


def blame_nonfinite(
    model: Model, stats: list[TensorStats], feeds: Mapping[str, object]
) -> list[NonFinite]:
    """Say where the NaN/Inf of each tapped tensor (and each graph input) comes from.

    A tensor's NaN/Inf are *born* at its producer only when every input of that node
    (and every outer-scope tensor its If/Loop/Scan bodies read) is finite: graph inputs
    are judged from the feeds, initializers and Constant values from their values, the
    rest from the statistics of tapped tensors. Values computed from constants only are
    deliberate (see :func:`constant_tensors`), not born. A node with an input that was
    not tapped and is not known otherwise is ``unknown``: it may be where the NaN/Inf is
    born, and the run fails, with a hint to tap its inputs.
    """
    from onnx import numpy_helper

    from surgeon.edits.extract import subgraph_reads

    graph = model.proto.graph
    found: list[NonFinite] = []
    known: dict[str, tuple[int, int] | None] = {}
    for name in model.input_names:
        if name in feeds:
            known[name] = counts = _count_nonfinite(feeds[name])
            if counts and (counts[0] or counts[1]):
                found.append(NonFinite(name, "input", counts[0], counts[1]))
    for s in stats:
        known[s.name] = None if s.flags == ["needs-counts"] else (s.nan, s.inf)
    initializers = {t.name: t for t in graph.initializer}
    constant_nodes = {
        o: n
        for n in graph.node
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
        for o in n.output
    }
    base = str(model.path.parent) if getattr(model, "path", None) is not None else None

    def lookup(name: str) -> tuple[int, int] | None:
        if name in known:
            return known[name]
        counts = None
        try:
            if name in initializers:
                counts = _count_nonfinite(numpy_helper.to_array(initializers[name], base or ""))
            elif name in constant_nodes:
                for a in constant_nodes[name].attribute:
                    if a.name == "value":
                        counts = _count_nonfinite(numpy_helper.to_array(a.t, base or ""))
                    elif a.name in ("value_float", "value_floats"):
                        counts = _count_nonfinite(
                            np.asarray(a.f if a.name == "value_float" else list(a.floats))
                        )
                    elif a.name.startswith("value_"):
                        counts = (0, 0)  # integers and strings are always finite
        except Exception:  # an unreadable constant: its finiteness is unknown
            counts = None
        known[name] = counts
        return counts

    constant = constant_tensors(model)
    producer = {o: n for n in graph.node for o in n.output if o}
    labels = {id(n): n.name or f"#{i}" for i, n in enumerate(graph.node)}
    for s in stats:
        if not (s.nan or s.inf) or s.flags == ["needs-counts"]:
            continue
        node = producer.get(s.name)
        label = labels[id(node)] if node is not None else s.node
        op = node.op_type if node is not None else s.op
        if s.name in constant:
            found.append(NonFinite(s.name, "constant", s.nan, s.inf, label, op))
            continue
        reads = [] if node is None else [x for x in [*node.input, *subgraph_reads(node)] if x]
        counts = {x: lookup(x) for x in dict.fromkeys(reads)}
        nan_in = any(c is not None and c[0] for c in counts.values())
        any_in = any(c is not None and (c[0] or c[1]) for c in counts.values())
        untapped = [x for x, c in counts.items() if c is None]
        from_inf = False
        if s.inf and not any_in:
            kind = "unknown" if untapped else "born"
        elif s.nan and not nan_in and any_in:
            # A NaN from Inf inputs (0 * -inf, Softmax of a fully masked row): born here,
            # but an anomaly only if it reaches an output (see _blame_nan_sources).
            kind, from_inf, untapped = "born", True, []
        elif s.nan and not nan_in:
            kind = "unknown" if untapped else "born"
        else:
            kind, untapped = "inherited", []
        found.append(NonFinite(s.name, kind, s.nan, s.inf, label, op, untapped))
        found[-1].from_inf = from_inf
    _blame_nan_sources(model, found, constant, known, lookup)
    return found


def _blame_nan_sources(model: Model, found: list[NonFinite], constant, known, lookup) -> None:
    """Judge the NaN that deliberate non-finite values give rise to by whether they
    reach a graph output.

    A deliberate ``-inf`` mask is absorbed before the outputs (Softmax turns it into 0;
    the NaN of a fully masked row is replaced by a Where), while a NaN weight in a Conv
    or a ``0 * -inf`` spoils everything after it. So two NaN sources fail the run only
    when some graph output holds NaN that a chain of NaN-holding tensors carries from
    them (a tapped tensor without NaN ends the chain: ``Where(IsNaN(t), 0, t)``):

    * a constant holding NaN: blamed (kind ``weights``) at the first tapped computed
      tensor that reads it directly;
    * a NaN born from inputs that hold Inf but no NaN (``from_inf``): kept ``born``;
      otherwise it is ``inherited`` from the deliberate Inf.
    """
    from surgeon.edits.extract import subgraph_reads

    from_inf = {x.tensor for x in found if x.from_inf}
    carries: dict[str, list[str]] = {}  # tensor -> NaN sources it may carry
    for node in model.proto.graph.node:
        outs = [o for o in node.output if o]
        if not outs or all(o in constant for o in outs):
            continue
        sources: list[str] = []
        for x in (x for x in [*node.input, *subgraph_reads(node)] if x):
            if x in carries:
                sources += carries[x]
            elif x in constant:
                c = lookup(x)
                if c is not None and c[0]:
                    sources.append(x)
        for o in outs:
            mine = [o] if o in from_inf else []
            c = known.get(o)
            if not (sources or mine) or (c is not None and not c[0]):
                continue  # tapped and free of NaN: the chain ends here
            carries[o] = list(dict.fromkeys([*sources, *mine]))
    reached: dict[str, list[str]] = {}  # source -> outputs its NaN reaches
    for o in model.output_names:
        c = known.get(o)
        if o in carries and c is not None and c[0]:
            for k in carries[o]:
                reached.setdefault(k, []).append(o)
    for x in found:
        if x.from_inf and x.tensor not in reached:
            x.kind, x.from_inf = "inherited", False
        elif x.from_inf:
            x.outputs = reached.pop(x.tensor)
    reached = {k: v for k, v in reached.items() if k not in from_inf}
    if not reached:
        return
    graph = model.proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    for x in found:
        if x.kind != "inherited" or not x.nan or x.tensor not in producer:
            continue
        node = producer[x.tensor]
        direct = [k for k in dict.fromkeys([*node.input, *subgraph_reads(node)]) if k in reached]
        if direct:
            x.kind, x.constants = "weights", direct
            x.outputs = list(dict.fromkeys(o for k in direct for o in reached[k]))
            for k in direct:
                reached.pop(k)
    # An entry point that was not tapped: blame the output the NaN reaches.
    for k, outs in reached.items():
        for x in found:
            if x.tensor == outs[0] and not x.fails:
                x.kind, x.constants, x.outputs = "weights", [k], outs
                break


def rank_anomaly(stats: list[TensorStats], nonfinite: list[NonFinite], constant: set[str]):
    """The first anomaly worth a user's attention: the first NaN/Inf born in the model;
    else the first flag (all-zero, constant, beyond-float16) on a computed float tensor.
    Flags on values computed from constants only (a Constant of zeros) or on integer
    tensors (an index accumulator beyond float16's range) are kept in the table but
    ranked below, and never lead the verdict."""
    by_name = {s.name: s for s in stats}
    for x in nonfinite:
        if x.fails and x.tensor in by_name:
            return by_name[x.tensor]
    for s in stats:
        if not s.flags or s.name in constant:
            continue
        if any(f in SEVERE for f in s.flags):
            continue  # inherited or deliberate NaN/Inf: explained, not the first anomaly
        is_float = s.dtype is not None and ("float" in s.dtype)
        if is_float:
            return s
    return None


# ---------------------------------------------------------------------- references
def _load_reference(reference, model: Model, max_bytes: int | None = None):
    """A reference as (kind, description, object): ("model", name, Model) or
    ("arrays", name, dict)."""
    from surgeon.loading import load

    if reference is None:
        return None
    if isinstance(reference, Model):
        return ("model", reference.name, reference)
    if isinstance(reference, Mapping):
        return ("arrays", "activations", dict(reference))
    path = Path(reference)
    if path.suffix == ".npz":
        return ("arrays", path.name, load_npz(path, max_bytes=max_bytes))
    if path.suffix == ".onnx" or path.exists():
        return ("model", path.name, load(path))
    raise UsageError(f"reference {reference}: expected a .onnx model or an .npz of activations")


def _node_info(model: Model) -> dict[str, tuple[str, str, list[str]]]:
    """tensor -> (node name, op type, node inputs) for main-graph node outputs."""
    info = {}
    for i, n in enumerate(model.proto.graph.node):
        label = n.name or f"#{i}"
        for o in n.output:
            if o:
                info[o] = (label, n.op_type, [x for x in n.input if x])
    return info


def _origin_lookup(model: Model):
    """node name -> "module (Class), file:line" from exporter metadata, when available."""
    try:
        from surgeon.origin import node_origin
    except ImportError:  # the origin module is optional
        return lambda node: None

    def lookup(node: str) -> str | None:
        try:
            origin = node_origin(model, node)
        except Exception:  # exporter metadata is best-effort; never fail a debug run on it
            return None
        return origin.describe() if origin is not None else None

    return lookup


def debug(
    model: Model,
    options: DebugOptions = DebugOptions(),
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DebugReport:
    """Tap tensors of ``model``, compute their statistics, and compare them with a
    reference if one is given.

    Raises:
        NameNotFoundError: Unknown tap names or ``name_map`` entries.
        SurgeonError: The reference cannot be used (e.g. activations without the model's
            inputs).
    """
    taps = select_taps(model, options.taps, ops=options.ops)
    if not taps:
        raise UsageError(f"nothing to tap in {model.name}: the selection matched no node outputs")
    run_opts = RunOptions(
        optimization=options.optimization, custom_op_libraries=tuple(options.custom_op_libraries)
    )
    ref = _load_reference(options.reference, model, options.feed_options.max_feed_bytes)
    if ref is None and options.reference_optimization:
        ref = ("self", f"{model.name} at optimization={options.reference_optimization}", model)
    info = _node_info(model)
    origin = _origin_lookup(model)
    order = {t: i for i, t in enumerate(taps)}

    # Feeds: for saved activations, the model's inputs must come from the same file.
    feed_options = options.feed_options
    notes: list[str] = []
    if ref is not None:
        _check_pairing(model, taps, ref, options)
    if ref is not None and ref[0] == "model":
        # The reference's own inputs (a sample rate the model holds as a constant) may be
        # given in --inputs too; the model's feeds leave them out.
        feed_options = dataclasses.replace(
            feed_options, other_inputs=frozenset(_reference_only_inputs(model, ref[2], options))
        )
    if feeds is None:
        if ref is not None and ref[0] == "arrays":
            arrays = ref[2]
            user = make_feeds(model, feed_options) if feed_options.npz else {}
            missing = [i for i in model.input_names if i not in arrays and i not in user]
            if missing:
                raise SurgeonError(
                    f"{ref[1]} holds no values for input(s) {', '.join(f'`{m}`' for m in missing)} of {model.name}; "
                    "the activations can only be compared on the inputs that produced them",
                    hint="Save the inputs in the .npz under the input names, or pass them with --inputs feeds.npz.",
                )
            given, notes = _feeds_from_activations(model, arrays, ref[1])
            feeds = {**user, **given}
        else:
            feeds = make_feeds(model, feed_options)
    feeds = dict(feeds)

    say = progress or (lambda phase: None)
    say(f"typing {len(taps)} tapped tensors")
    graph_outputs = set(model.output_names)
    types = learn_types(model, [t for t in taps if t not in graph_outputs], run_opts)
    say(f"running {model.name} with {len(taps)} taps and the tap check")
    for vi in model.proto.graph.output:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type)
    tap_tol = EXACT if options.optimization == "disabled" else options.tolerance
    want_values = ref is not None or options.keep_values or model.opset < 11
    stats: list[TensorStats] = []
    values: dict[str, np.ndarray] = {}
    collected: dict[str, np.ndarray] = {}
    # Values mode taps the tensors themselves; statistics mode a model whose only extra
    # outputs are per-tensor statistics. Either way one verified run gives the tap check
    # and the numbers.
    if want_values:
        mode = "values"
        candidate, fetch, cand_opts, sink = add_outputs(model, taps, types), taps, run_opts, values
    else:
        mode = "statistics"
        candidate, outs = build_stats_model(model, taps, types)
        fetch = [x for pair in outs.values() for x in pair]
        # Priority-based order runs each statistics node right after its tensor's producer,
        # so onnxruntime frees activations as in a plain run (its default order delays the
        # reductions and keeps every activation alive).
        cand_opts = stats_opts = dataclasses.replace(run_opts, execution_order="priority")
        sink = collected

    def checked_run():
        return verify(
            candidate,
            model,
            pairs=[(o, o) for o in model.output_names],
            feeds=feeds,
            tolerance=tap_tol,
            options=cand_opts,
            reference_options=run_opts,
            title="tap check: original outputs unchanged",
            fetch=fetch,
            collect=sink,
        )

    try:
        tap_check = checked_run()
    except RuntimeFailure as e:
        if want_values:
            raise
        # The statistics nodes are surgeon's, not the user's: if onnxruntime cannot run
        # them (a kernel missing at run time), measure the tensors themselves instead of
        # blaming the model. A failure of the model itself fails this run as well.
        mode, want_values = "values", True
        candidate, fetch, cand_opts, sink = add_outputs(model, taps, types), taps, run_opts, values
        collected.clear()
        tap_check = checked_run()
        notes.append(
            "onnxruntime could not run surgeon's statistics nodes "
            f"({e.message}); the tapped tensors were measured with numpy instead"
        )
    if want_values:
        for t in taps:
            if t in values:
                node, op, _ = info.get(t, ("?", "?", []))
                stats.append(stats_from_array(t, node, op, order[t], values[t]))
    else:
        for t in taps:
            node, op, _ = info.get(t, ("?", "?", []))
            dtype = dtype_name(types[t].tensor_type.elem_type) if t in types else None
            stats.append(stats_from_outputs(t, node, op, order[t], outs[t], collected, dtype))
        stats = recount_stats(model, stats, types, feeds, stats_opts, say)
    for s in stats:
        if s.flags:
            s.origin = origin(s.node)
    nonfinite = blame_nonfinite(model, stats, feeds)
    for x in nonfinite:
        if x.fails:
            x.origin = origin(x.node)
    first_anomaly = rank_anomaly(stats, nonfinite, constant_tensors(model))
    report = DebugReport(
        model=model.name,
        stats=stats,
        tap_check=tap_check,
        not_tappable=not_tappable(model),
        feeds=describe_feeds(feeds),
        seed=feed_options.seed,
        optimization=options.optimization,
        first_anomaly=first_anomaly,
        mode=mode,
        nonfinite=nonfinite,
        notes=notes,
    )
    report.feed_values = dict(feeds)
    if tap_check is not None:  # name the two sides apart in the report
        tap_check.candidate = f"{model.name} (tapped)"
    report.float16 = any(s.dtype == "float16" for s in stats)
    report.shape_mismatches = _declared_vs_real(
        model, feeds, stats, values if mode == "values" else collected
    )
    if options.keep_values:
        report.values = {t: values[t] for t in taps if t in values}
    if ref is not None:
        say(f"running the reference {ref[1]}")
        _compare(
            report, model, taps, values, feeds, ref, options, info, origin, run_opts, feed_options
        )
    return report


def _reference_only_inputs(model: Model, reference: Model, options: DebugOptions) -> list[str]:
    """Inputs of a reference model that no input of ``model`` feeds (by name or --map)."""
    name_map = dict(options.name_map)  # reference name -> model name
    inputs = set(model.input_names)
    return [i for i in reference.input_names if name_map.get(i, i) not in inputs]


def _declared_vs_real(model: Model, feeds, stats: list[TensorStats], values) -> list:
    """Where the model's declared dtypes/shapes disagree with what the run produced.

    In statistics mode only shapes and dtypes are known, so each tapped tensor is stood in
    for by a zero-stride array of its real shape (no memory is allocated).
    """
    from surgeon.shapecheck import declared_vs_actual

    seen: dict = dict(feeds)
    wanted = {s.name for s in stats} | set(model.output_names)  # once, not per value
    for name, value in values.items():
        if name in wanted:
            seen[name] = value
    for s in stats:
        if s.name not in seen and s.shape is not None and s.dtype not in (None, "str"):
            try:  # as_strided too: it rejects ml_dtypes' float8_e5m2 ("'<f1' not understood")
                seen[s.name] = np.lib.stride_tricks.as_strided(
                    np.zeros(1, np.dtype(s.dtype)),
                    shape=tuple(s.shape),
                    strides=(0,) * len(s.shape),
                )
            except TypeError:
                continue
    try:
        return declared_vs_actual(model, seen)
    except Exception:  # a best-effort diagnostic must never fail the debug run
        return []


def _feeds_from_activations(
    model: Model, arrays: Mapping[str, np.ndarray], label: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The model's inputs taken from saved activations, checked against the model.

    Float values for an input of another float dtype (float32 activations saved from
    PyTorch for a float16 model) are cast to the model's dtype, with a note in the
    report: that is how the user would feed them. Any other dtype, or a shape that
    contradicts a fixed dim, is an error naming each input, not onnxruntime's raw one.
    """
    from surgeon.feeds import numpy_dtype

    feeds, notes, problems = {}, [], []
    for info_in in model.inputs:
        if info_in.name not in arrays:
            continue
        value = arrays[info_in.name]
        wanted = numpy_dtype(info_in.dtype) if info_in.dtype and info_in.dtype != "str" else None
        if isinstance(value, np.ndarray) and wanted is not None and value.dtype != wanted:
            if value.dtype.kind == "V" and value.dtype.itemsize == wanted.itemsize:
                value = value.view(wanted)  # np.savez stores bfloat16/float8 as raw void
            elif value.dtype.kind == "f" and _is_float_dtype(wanted):
                notes.append(
                    f"input `{info_in.name}`: {value.dtype.name} values from {label} fed as "
                    f"{wanted.name}, the model's dtype"
                )
                value = value.astype(wanted)
            else:
                problems.append(
                    f"`{info_in.name}` in {label} is {value.dtype.name}; {model.name} wants {info_in.dtype}"
                )
        if isinstance(value, np.ndarray) and info_in.shape is not None:
            fixed = [d if isinstance(d, int) and d > 0 else None for d in info_in.shape]
            if value.ndim != len(fixed) or any(
                d is not None and d != v for d, v in zip(fixed, value.shape, strict=True)
            ):
                problems.append(
                    f"`{info_in.name}` in {label} has shape {list(value.shape)}; {model.name} wants {info_in.shape_text()}"
                )
        feeds[info_in.name] = value
    if problems:
        raise UsageError(
            f"the inputs saved in {label} do not fit {model.name}",
            problems=problems,
            hint="Save the activations from the same model, or convert the inputs to the dtypes and shapes the model declares.",
        )
    return feeds, notes


def _is_float_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or "float" in dtype.name


def _check_pairing(model: Model, taps: list[str], ref, options: DebugOptions) -> None:
    """Refuse, before any run, a reference that pairs with none of the tapped tensors:
    zero compared tensors is never a pass. The message lists the reference's unused
    names with close matches among the model's tappable tensors."""
    from surgeon.errors import close_matches

    kind, label, obj = ref
    if kind == "self":
        return
    to_ref = {v: k for k, v in dict(options.name_map).items()}
    if kind == "arrays":
        available = set(obj)
    else:
        available = set(obj.tensor_names()) - set(obj.input_names)
    if any(to_ref.get(t, t) in available for t in taps):
        return
    inputs = set(model.input_names)
    unused = [k for k in (obj if kind == "arrays" else _node_outputs(obj)) if k not in inputs]
    pool = _node_outputs(model)
    problems = []
    for key in unused[:10]:
        matches = close_matches(key, pool)
        problems.append(
            f"`{key}`"
            + (f": did you mean {', '.join(f'`{m}`' for m in matches)}?" if matches else "")
        )
    if len(unused) > 10:
        problems.append(f"... and {len(unused) - 10} more")
    what = "its keys" if kind == "arrays" else "its tensors"
    raise UsageError(
        f"nothing to compare: none of the {len(taps)} tapped tensor(s) of {model.name} has a "
        f"value in the reference {label}"
        + (f"; {what} that are not inputs:" if problems else f" ({label} holds only inputs)"),
        problems=problems,
        hint="Tap the tensors the reference holds (--tap NAME), or pair names with --map REF=MODEL.",
    )


def _node_outputs(model: Model) -> list[str]:
    return [o for n in model.proto.graph.node for o in n.output if o]


def _compare(
    report, model, taps, values, feeds, ref, options, info, origin, run_opts, feed_options
) -> None:
    kind, name, obj = ref
    name_map = dict(options.name_map)  # reference name -> model name
    to_ref = {v: k for k, v in name_map.items()}
    collect_unknown_names(
        "tensor", name_map.values(), model.tensor_names(), model.name, model_path=model.path
    )
    if kind == "arrays":
        expected = obj
        collect_unknown_names("tensor", name_map.keys(), list(expected), name)
    else:
        ref_model: Model = obj
        if kind == "model":
            collect_unknown_names(
                "tensor",
                name_map.keys(),
                ref_model.tensor_names(),
                ref_model.name,
                model_path=ref_model.path,
            )
        available = set(ref_model.tensor_names())
        wanted = [to_ref.get(t, t) for t in taps if to_ref.get(t, t) in available]
        ref_opts = run_opts
        if kind == "self" or options.reference_optimization:
            ref_opts = RunOptions(
                optimization=options.reference_optimization or run_opts.optimization,
                custom_op_libraries=run_opts.custom_op_libraries,
            )
        ref_feeds = {}
        own = _reference_only_inputs(model, ref_model, options) if kind == "model" else []
        for info_in in ref_model.inputs:
            source = name_map.get(info_in.name, info_in.name)  # reference input <- model input
            if info_in.name in own:
                continue
            report.reference_feeds[info_in.name] = f"model input `{source}`"
            value = feeds[source]
            # e.g. a float16 model against its float32 original: same values, the reference's dtype
            if (
                isinstance(value, np.ndarray)
                and info_in.dtype
                and info_in.dtype != value.dtype.name
                and value.dtype.kind in "fiub"
            ):
                value = value.astype(info_in.dtype)
            ref_feeds[info_in.name] = value
        if own:
            # Inputs only the reference has: from --inputs when it holds them, else random
            # by the same seed rule as any input; the report says which.
            from surgeon.feeds import make_other_feeds

            extra, how = make_other_feeds(ref_model, own, feed_options, ref_feeds)
            ref_feeds.update(extra)
            for input_name, source in how.items():
                report.reference_feeds[input_name] = (
                    f"--inputs {Path(feed_options.npz).name}"
                    if source != "random"
                    else f"random (seed {feed_options.seed})"
                )
            randoms = [n for n, source in how.items() if source == "random"]
            if randoms:
                report.notes.append(
                    f"the reference {ref_model.name} has input(s) {_names(randoms)} that "
                    f"{model.name} does not; fed random values (seed {feed_options.seed}): "
                    "give their values in --inputs (keys = the reference's input names) if "
                    "the reference needs particular ones"
                )
        try:
            expected = run(ref_model, ref_feeds, outputs=wanted, options=ref_opts)
        except RuntimeFailure as e:
            randoms = [n for n in own if report.reference_feeds.get(n, "").startswith("random")]
            if randoms:
                raise RuntimeFailure(
                    f"{e.message} (the reference ran on random values for its input(s) "
                    f"{_names(randoms)}, which {model.name} does not have)",
                    hint="Give their values in --inputs feeds.npz under the reference's input names.",
                ) from None
            raise
    report.reference = name
    report.tolerance = options.tolerance
    diverged_set: set[str] = set()
    compared: set[str] = set()
    for i, t in enumerate(taps):
        ref_name = to_ref.get(t, t)
        if ref_name not in expected or t not in values:
            report.unmatched.append(t)
            continue
        actual, exp = values[t], expected[ref_name]
        note = ""
        both_arrays = isinstance(actual, np.ndarray) and isinstance(exp, np.ndarray)
        if (
            both_arrays  # sequences and optionals are compared element by element as they are
            and actual.dtype != exp.dtype
            and actual.dtype.kind in "fiub"
            and exp.dtype.kind in "fiub"
        ):
            note = f"compared as {exp.dtype.name} (model has {actual.dtype.name})"
            actual = actual.astype(exp.dtype)
        diff = compare_arrays(actual, exp, options.tolerance, name=t, reference=ref_name)
        if note:
            diff.message = (diff.message + "; " if diff.message else "") + note
        node, op, inputs = info.get(t, ("?", "?", []))
        layer = LayerDiff(diff, node, op, i, inputs, diverged=not diff.passed)
        compared.add(t)
        if layer.diverged:
            diverged_set.add(t)
        report.layers.append(layer)
    if kind == "arrays":
        used = {to_ref.get(t, t) for t in compared} | set(model.input_names)
        report.unused_reference = [k for k in expected if k not in used]
    # A root-cause candidate: a diverged tensor none of whose compared inputs diverged.
    # What that shows depends on which inputs were compared: graph inputs are the same
    # values on both sides (the reference's own, or the model's feeds), constants are the
    # same only when the reference is this very model, and an activation with no
    # reference value shows nothing (the divergence may start before it).
    constants = constant_tensors(model)
    graph_inputs = set(model.input_names)
    roots = []
    for layer in report.layers:
        if not layer.diverged or any(x in diverged_set for x in layer.inputs):
            continue
        for x in dict.fromkeys(layer.inputs):
            if x in compared or x in graph_inputs or (x in constants and kind == "self"):
                layer.matched_inputs.append(x)
            elif x not in constants:
                layer.uncompared_inputs.append(x)
        roots.append(layer)
    # Ranked by what the check shows (graph order within a rank): every input that could
    # be compared matches; some match and some were not compared; none was compared.
    # A node's own isolated error would judge them better; this claims only what holds.
    roots.sort(key=lambda layer: (layer.evidence_rank, layer.index))
    for layer in roots:
        layer.origin = origin(layer.node)
    if roots:
        report.root_cause = roots[0]
        report.other_roots = roots[1:]
        report.uncompared_inputs = list(roots[0].uncompared_inputs)


def save_values(report: DebugReport, path: str | Path) -> Path:
    """Write the tapped tensors and the inputs that produced them to an ``.npz`` (keys =
    tensor names, whatever they are), atomically; the file can be given back as ``--ref``."""
    from surgeon.fileio import save_npz

    # Tensors only: a sequence or an empty optional has no .npz form.
    merged = {**report.feed_values, **report.values}
    return save_npz(path, {k: v for k, v in merged.items() if isinstance(v, np.ndarray)})


__all__ = ["DebugOptions", "DebugReport", "TensorStats", "LayerDiff", "debug", "stats_from_array"]
