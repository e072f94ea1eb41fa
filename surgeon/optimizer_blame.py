"""Which onnxruntime graph optimisation changed a model's numbers.

:func:`blame` runs a model with onnxruntime's graph optimisations disabled (the
reference) and at a level (``basic``, ``extended`` or ``all``). When the outputs differ
beyond tolerance it bisects over onnxruntime's ``disabled_optimizers`` session argument
to find the smallest set of passes whose disabling brings the outputs back within
tolerance, names the nodes those passes fused (from the optimised graphs onnxruntime
saves with and without each pass) and verifies the set with a fresh run.

Which passes to bisect over is read from onnxruntime itself: at log severity INFO a
session logs ``GraphTransformer <name> modified: 1`` for every transformer that changed
the graph, and ``<name>`` is exactly what ``disabled_optimizers`` takes. The rewrite
rules inside ``Level1_RuleBasedTransformer`` / ``Level2_RuleBasedTransformer`` (Conv+BN
folding among them) are not logged one by one; when a rule-based transformer is to
blame, the search goes on over the rule names onnxruntime's source lists (:data:`RULES`;
a name the installed version lacks is ignored by onnxruntime, so the list may be long).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from surgeon.compare import TensorDiff, Tolerance, compare_named, json_number
from surgeon.defaults import DEFAULT_OPTIMIZATION
from surgeon.errors import UsageError
from surgeon.feeds import FeedOptions, describe_feeds, make_feeds
from surgeon.model import Model
from surgeon.optimizer_blame_fusions import GraphChanges, graph_changes
from surgeon.optimizer_blame_session import BlameRunner
from surgeon.runner import RunOptions

BLAME_SCHEMA = "surgeon.blame/1"
LEVELS = ("basic", "extended", "all")
# Rewrite rules of onnxruntime's rule-based transformers (names as RewriteRule::Name()
# gives them, from onnxruntime's graph_transformer_utils.cc, 1.2x-1.3x).
RULES = {
    "Level1_RuleBasedTransformer": (
        "EliminateIdentity EliminateSlice UnsqueezeElimination EliminateDropout "
        "ExpandElimination CastElimination CastChainElimination PreShapeNodeElimination "
        "NoopElimination DivMulFusion FuseReluClip GemmSumFusion GemmTransposeFusion "
        "NotWhereFusion ConvAddFusion ConvMulFusion ConvBNFusion PadFusion MatmulBNFusion "
        "LabelEncoderFusion"
    ).split(),
    "Level2_RuleBasedTransformer": ["ClipQuantFusion", "ReluQuantFusion", "GemmTransposeFusion"],
}
_APPLIED = re.compile(r"GraphTransformer (\S+) modified: 1\b")


@dataclass
class Trial:
    """One run at the level with some passes disabled, against the reference."""

    disabled: list[str]
    passed: bool
    max_abs: float | None

    def to_dict(self) -> dict:
        return {
            "disabled": self.disabled,
            "passed": self.passed,
            "max_abs": json_number(self.max_abs),
        }


@dataclass
class Culprit:
    """A pass whose disabling is needed to bring the outputs back, and what it did."""

    name: str
    kind: str  # "transformer" or "rule" (a rewrite rule of a rule-based transformer)
    changes: GraphChanges = field(default_factory=GraphChanges)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **self.changes.to_dict()}


@dataclass
class BlameReport:
    """The outcome of :func:`blame`; truthy when the level's outputs match the reference.

    Attributes:
        level_diff: The level's outputs against the reference (optimisations disabled).
        applied: The transformers that changed the graph at the level, in order.
        culprits: The smallest set of passes found whose disabling restores the outputs.
        verification: A fresh run with exactly the culprits disabled, against the reference.
        verified: That run is within tolerance (False also when nothing was found).
        trials: Every bisection run.
    """

    model: str
    level: str
    tolerance: Tolerance
    seed: int | None
    feeds: dict[str, dict]
    level_diff: list[TensorDiff]
    applied: list[str] = field(default_factory=list)
    culprits: list[Culprit] = field(default_factory=list)
    verification: list[TensorDiff] = field(default_factory=list)
    verified: bool = False
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return not self.level_diff or not all(t.passed for t in self.level_diff)

    @property
    def passed(self) -> bool:
        return not self.differs

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        """One line: the verdict."""
        if not self.differs:
            return (
                f"PASS: optimisation level `{self.level}` gives the same outputs as `disabled` "
                f"({self.tolerance_text()}); nothing to blame"
            )
        names = ", ".join(c.name for c in self.culprits)
        if self.culprits and self.verified:
            return (
                f"FAIL: level `{self.level}` changes the outputs ({self.tolerance_text()}); "
                f"responsible: {names} (verified: disabling exactly these restores them)"
            )
        if self.culprits:
            return (
                f"FAIL: level `{self.level}` changes the outputs; smallest set found: {names}, "
                "but disabling it alone does not restore them (interacting passes)"
            )
        return (
            f"FAIL: level `{self.level}` changes the outputs, and disabling every pass that "
            "changed the graph does not restore them: no pass to blame"
        )

    def tolerance_text(self) -> str:
        tol = self.tolerance
        return "bit-identical" if tol.exact else f"atol={tol.atol:g}, rtol={tol.rtol:g}"

    def to_dict(self) -> dict:
        return {
            "schema": BLAME_SCHEMA,
            "model": self.model,
            "level": self.level,
            "reference_level": "disabled",
            "passed": self.passed,
            "differs": self.differs,
            "summary": self.summary(),
            "seed": self.seed,
            "tolerance": self.tolerance.to_dict(),
            "feeds": self.feeds,
            "level_diff": [t.to_dict() for t in self.level_diff],
            "applied": list(self.applied),
            "culprits": [c.to_dict() for c in self.culprits],
            "verified": self.verified,
            "verification": [t.to_dict() for t in self.verification],
            "trials": [t.to_dict() for t in self.trials],
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


def blame(
    model: Model,
    level: str | None = None,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    tolerance: Tolerance = Tolerance(),
    options: RunOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> BlameReport:
    """Find the onnxruntime optimisation(s) that change ``model``'s outputs.

    Args:
        model: The model (through ``surgeon.blame``, a path or an Edited result too).
        level: The onnxruntime optimisation level examined: basic, extended or all
            (None: ``options.optimization`` when ``options`` is given, else ``all``).
        feeds: Input values; made from ``feed_options`` when None.
        tolerance: When outputs count as unchanged (``EXACT`` for bit-identity).
        options: Custom-op libraries and threads for every run; its ``optimization``
            is the level examined when ``level`` is None. The reference is always the
            level ``disabled``.
        progress: Called with a short phase text before each run.

    Returns:
        A BlameReport, truthy when the level's outputs are within tolerance.

    Raises:
        UsageError: The level is ``disabled`` (nothing to compare it with) or unknown,
            or ``level`` and ``options.optimization`` name two different levels.
        RuntimeFailure: onnxruntime cannot load or run the model.
    """
    if level is None:
        level = options.optimization if options is not None else "all"
    elif options is not None and options.optimization not in (level, DEFAULT_OPTIMIZATION):
        raise UsageError(
            f"two levels to examine: level={level!r} and "
            f"options.optimization={options.optimization!r}; give one"
        )
    options = dataclasses.replace(options or RunOptions(), optimization=level)
    if level not in LEVELS:
        raise UsageError(
            f"optimisation level `{level}` cannot be blamed: it is the reference level; "
            f"examine one of {', '.join(LEVELS)}"
        )
    say = progress or (lambda text: None)
    started = time.perf_counter()
    if feeds is None:
        feeds = make_feeds(model, feed_options)
    outputs = [(o, o) for o in model.output_names]
    with contextlib.ExitStack() as scratch:
        runner = BlameRunner(model, options, scratch)
        say("running with optimisations disabled (the reference)")
        session = runner.session("disabled")
        expected = runner.run(session, feeds)
        again = runner.run(session, feeds)
        del session
        report = BlameReport(
            model=model.name,
            level=level,
            tolerance=tolerance,
            seed=None if feed_options.npz else feed_options.seed,
            feeds=describe_feeds(feeds),
            level_diff=[],
        )
        if not all(compare_named(again, expected, outputs, tolerance)):
            report.notes.append(
                "the reference is not reproducible: two runs with optimisations disabled "
                "differ, so no comparison against it can be trusted"
            )
        say(f"running at level `{level}`")
        log: list[str] = []
        session = runner.session(level, log=log)
        report.level_diff = compare_named(runner.run(session, feeds), expected, outputs, tolerance)
        del session
        report.applied = _applied(log)
        if report.differs and not report.notes:
            _bisect(report, runner, feeds, expected, outputs, say)
            if report.culprits:
                _attribute(report, runner, scratch, say)
    report.seconds = time.perf_counter() - started
    return report


def _applied(log: list[str]) -> list[str]:
    """The transformers a session's INFO log says changed the graph, in order, once each."""
    return list(dict.fromkeys(m.group(1) for m in map(_APPLIED.search, log) if m))


def _bisect(report, runner, feeds, expected, outputs, say) -> None:
    """Fill ``report.culprits``, ``verification`` and ``verified``."""
    level, tolerance = report.level, report.tolerance
    known: dict[frozenset, bool] = {}

    def passes(disabled: list[str]) -> bool:
        key = frozenset(disabled)
        if key not in known:
            say(f"trial {len(report.trials) + 1}: disabled {', '.join(disabled) or 'nothing'}")
            actual = runner.run(runner.session(level, disabled), feeds)
            diffs = compare_named(actual, expected, outputs, tolerance)
            errors = [t.max_abs for t in diffs if isinstance(t.max_abs, (int, float))]
            known[key] = all(diffs)
            report.trials.append(Trial(list(disabled), known[key], max(errors, default=None)))
        return known[key]

    candidates = list(report.applied)
    if not candidates:
        report.notes.append(
            "onnxruntime logged no transformer that changed the graph (a build without "
            "INFO logging?); nothing to bisect over"
        )
        return
    # Disabling a pass can let another one fire where it did not (LayerNormFusionL1
    # off, SimplifiedLayerNormFusion takes the same nodes): those join the candidates.
    while not passes(candidates):
        log: list[str] = []
        runner.session(level, candidates, log=log)
        woken = [n for n in _applied(log) if n not in candidates]
        if not woken:
            report.notes.append(
                "the difference is not from a pass that can be disabled by name: kernels "
                "chosen at this level differ, or a pass that always runs changed the graph"
            )
            return
        report.notes.append(
            f"with {', '.join(candidates)} disabled, {', '.join(woken)} changed the graph "
            "instead: added to the search"
        )
        candidates += woken
        report.applied += woken
    culprits = _smallest(passes, [], candidates)
    # A rule-based transformer is many rewrite rules: name the rule(s) when they explain it.
    for name in [c for c in culprits if c in RULES]:
        others = [c for c in culprits if c != name]
        if passes(others + RULES[name]):
            culprits = others + _smallest(passes, others, RULES[name])
    report.culprits = [
        Culprit(c, "transformer" if c in report.applied else "rule") for c in culprits
    ]
    say("verifying: a fresh run with exactly those passes disabled")
    actual = runner.run(runner.session(level, culprits), feeds)
    report.verification = compare_named(actual, expected, outputs, tolerance)
    report.verified = all(report.verification)


def _smallest(passes, fixed: list[str], candidates: list[str]) -> list[str]:
    """A small subset S of ``candidates`` with ``passes(fixed + S)``, given that
    ``passes(fixed + candidates)`` holds.

    One culprit at a time: a binary search for the shortest prefix of the remaining
    candidates that passes (its last element is needed, given the ones before it), then
    the same on the candidates before it. Then each chosen name is dropped if the others
    pass without it. ``O(k log n)`` runs for k culprits among n candidates.
    """
    chosen: list[str] = []
    rest = list(candidates)
    while not passes(fixed + chosen):
        low, high = 0, len(rest)  # fixed+chosen+rest[:high] passes, rest[:low] does not
        while high - low > 1:
            mid = (low + high) // 2
            if passes(fixed + chosen + rest[:mid]):
                high = mid
            else:
                low = mid
        chosen.append(rest[high - 1])
        rest = rest[: high - 1]
    for name in list(chosen):
        if len(chosen) > 1 and passes(fixed + [c for c in chosen if c != name]):
            chosen.remove(name)
    return chosen


def _attribute(report: BlameReport, runner: BlameRunner, scratch, say) -> None:
    """Each culprit's fused nodes: the graph saved with every applied pass disabled
    against the one saved with only that culprit enabled, so that the nodes it replaced
    are the model's own, not what other passes made of them."""
    folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="surgeon-blame-")))
    original = {n.name for n in runner.model.proto.graph.node if n.name}
    everything = [a for a in report.applied if a not in RULES]
    everything += [r for a in report.applied if a in RULES for r in RULES[a]]
    everything += [c.name for c in report.culprits if c.name not in everything]
    say("saving the optimised graphs to name the fused nodes")
    without_path = folder / "without.onnx"
    # Passes that fire only once others are off (SimplifiedLayerNormFusion on the nodes
    # LayerNormFusionL1 would have taken) are switched off too, so the "without" graph
    # holds the model's own nodes.
    for _ in range(4):
        log: list[str] = []
        runner.session(report.level, everything, save_to=without_path, log=log)
        woken = [n for n in _applied(log) if n not in everything]
        if not woken:
            break
        everything += woken
    without = onnx.load(str(without_path), load_external_data=False).graph
    for i, culprit in enumerate(report.culprits):
        path = folder / f"with{i}.onnx"
        if culprit.name in RULES:  # the whole transformer: enable all its rules
            enabled = {culprit.name, *RULES[culprit.name]}
        else:
            enabled = {culprit.name}
        runner.session(report.level, [n for n in everything if n not in enabled], save_to=path)
        with_pass = onnx.load(str(path), load_external_data=False).graph
        culprit.changes = graph_changes(without, with_pass, original)
