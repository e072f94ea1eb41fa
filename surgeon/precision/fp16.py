"""The float16 planner: a float16 model that meets a tolerance, keeping few nodes float32.

:func:`plan_fp16` starts from a block list of the nodes that must stay float32 (the
caller's, and every node whose float32 output the statistics flag ``beyond-float16``),
converts with :func:`~surgeon.precision.fp16_convert.convert_float16` (which also keeps
the nodes float16 cannot run) and compares the outputs with the float32 model. While they
miss the tolerance it ranks the float16 nodes by their isolated error
(:func:`surgeon.precision.analyse_precision` of the candidate against the float32 values)
and blocks the worst: 1, then 2, 4, ... per round, so a model with many bad nodes needs
few rounds. When a round meets the tolerance, the last batch is bisected down to the
shortest worst-first prefix that still meets it. The result goes through the edit
contract (provenance, verification), and is checked again on a second seed.

It fails (falsy result, nothing to write) when the tolerance is not met within
``max_rounds`` rounds, or only by keeping more than ``max_kept`` of the float nodes in
float32: a model mostly float32 is no float16 model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from surgeon.compare import DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.errors import NameNotFoundError, UsageError, raise_name_errors, unknown_name
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model
from surgeon.names import intermediate_tensors
from surgeon.precision.fp16_convert import Conversion, convert_float16
from surgeon.precision.pairing import node_label
from surgeon.runner import RunOptions, inline_external_data, run

FP16_SCHEMA = "surgeon.fp16/1"
TITLE = "fp16: outputs within tolerance of the float32 model"


@dataclass
class KeptNode:
    """One node of the block list: its label, op type, why it stays float32, and the
    PyTorch module it came from when the file says."""

    node: str
    op: str
    reason: str
    module: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Step:
    """One round of the planner: what it blocked and what the outputs then gave."""

    round: int
    action: str
    added: list[str]
    kept: int
    worst_abs: float | None
    passed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Fp16Plan:
    """The planner's result. Truthy when the float16 model met the tolerance on the feeds
    and on the second seed.

    Attributes:
        edited: The converted model through the edit contract (its report: the outputs
            against the float32 model on the feeds).
        block_list: The nodes the planner kept float32 (the caller's, beyond float16's
            range, worst isolated errors).
        not_float16: Nodes the converter kept float32 on its own (no float16 in the
            schema, custom ops, subgraphs), label -> reason.
        steps: Every round.
        second_check: The outputs compared on the second seed (None if not run).
        float16_nodes: How many nodes run in float16.
        size_before, size_after: Serialised sizes in bytes.
        seconds: Time the planner took.
    """

    edited: Edited
    block_list: list[KeptNode]
    not_float16: dict[str, str]
    steps: list[Step]
    second_check: DiffReport | None
    float16_nodes: int
    size_before: int
    size_after: int
    seconds: float
    failure: str = ""

    @property
    def passed(self) -> bool:
        second = self.second_check is None or self.second_check.passed
        return self.edited.passed and second and not self.failure

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        report = self.edited.report
        return {
            "schema": FP16_SCHEMA,
            "passed": self.passed,
            "failure": self.failure,
            "block_list": [k.to_dict() for k in self.block_list],
            "not_float16": dict(self.not_float16),
            "float16_nodes": self.float16_nodes,
            "steps": [s.to_dict() for s in self.steps],
            "size_before": self.size_before,
            "size_after": self.size_after,
            "seconds": self.seconds,
            "params": self.edited.params,
            "verification": report.to_dict() if report is not None else None,
            "second_check": self.second_check.to_dict() if self.second_check else None,
        }


@dataclass
class _State:
    model: Model
    feeds: dict
    tolerance: Tolerance
    options: RunOptions | None
    reasons: dict[str, str] = field(default_factory=dict)  # block list, in order
    steps: list[Step] = field(default_factory=list)

    def attempt(self, block: Iterable[str], fetch: bool = False):
        from surgeon.verification import verify  # verification imports the runner

        conversion = convert_float16(self.model.proto, block)
        candidate = self.model.with_proto(conversion.proto)
        report = verify(
            candidate,
            self.model,
            feeds=self.feeds,
            tolerance=self.tolerance,
            options=self.options,
            title=TITLE,
        )
        values: dict = {}
        if fetch and not report.passed:
            # A run of its own: exposing every tensor makes onnxruntime round each one to
            # float16, which the verified model does not (its float16 chains without a
            # kernel run in float32 between Casts), so the verdict comes from the run above.
            names = intermediate_tensors(candidate)
            values = run(candidate, self.feeds, outputs=names, options=self.options)
        return conversion, candidate, report, values

    def record(self, action: str, added: list[str], report: DiffReport) -> None:
        step = Step(
            len(self.steps), action, added, len(self.reasons), report.worst_abs(), report.passed
        )
        self.steps.append(step)


def _check_keep(model: Model, keep: Iterable[str]) -> list[str]:
    labels = [node_label(n) for n in model.proto.graph.node]
    known = set(labels)
    keep = list(dict.fromkeys(keep))
    errors = [
        unknown_name("node", k, labels, model.name, model_path=model.path)
        for k in keep
        if k not in known
    ]
    raise_name_errors(errors, f"{len(errors)} unknown node names to keep in {model.name}")
    return keep


def _beyond_float16(model: Model, reference: Mapping[str, object]) -> dict[str, str]:
    """Nodes whose float32 output the statistics flag ``beyond-float16``, and the nodes
    that read such an output: kept float32 alone, the producer's value would still be
    cast to float16 for a float16 reader, and overflow there (to inf on a device that
    computes in float16; onnxruntime's CPU, computing in float32, would hide it)."""
    from surgeon.graph_facts import graph_facts
    from surgeon.statistics.definition import flag_stats, stats_from_array

    nodes = model.proto.graph.node
    consumers = graph_facts(model).consumers
    found = {}
    for node in nodes:
        for k, name in enumerate(node.output):
            value = reference.get(name)
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                continue
            stats = flag_stats(stats_from_array(name, node.name, node.op_type, k, value))
            if "beyond-float16" not in stats.flags:
                continue
            extreme = max(
                abs(v) for v in (stats.min, stats.max) if v is not None and np.isfinite(v)
            )
            found.setdefault(
                node_label(node), f"float32 range beyond float16 (`{name}` reaches {extreme:.3g})"
            )
            for reader in consumers.get(name, ()):
                found.setdefault(
                    node_label(nodes[reader]),
                    f"reads `{name}`, beyond float16 (it reaches {extreme:.3g})",
                )
    return found


def _worst_nodes(
    state: _State, candidate: Model, conversion: Conversion, reference, values
) -> list[str]:
    """Float16 nodes by isolated error, worst first; those beyond tolerance when any."""
    from surgeon.precision.analysis import analyse_precision

    analysis = analyse_precision(
        candidate, state.model, reference, values, state.tolerance, options=state.options
    )
    convertible = set(conversion.float16_nodes)
    beyond, rest = [], []
    for unit in analysis.ranking:
        for label in unit.nodes:
            if label in convertible and label not in state.reasons:
                (beyond if unit.beyond_tolerance else rest).append(label)
    return list(dict.fromkeys(beyond)) or list(dict.fromkeys(rest))


def plan_fp16(
    model: Model,
    *,
    keep: Iterable[str] = (),
    tolerance: Tolerance = Tolerance(),
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    max_rounds: int = 8,
    max_kept: float = 0.5,
) -> Fp16Plan:
    """Convert ``model`` to float16, keeping in float32 the fewest nodes the planner
    finds that make the outputs meet ``tolerance`` against the float32 model.

    Args:
        model: The float32 model; never modified.
        keep: Node names (labels) to keep float32 whatever the planner finds.
        tolerance: What the outputs must meet against the float32 model.
        feeds, feed_options: The inputs of the plan (made from ``feed_options`` when
            None); the second check uses ``feed_options`` with the next seed.
        options: onnxruntime settings of every run.
        max_rounds: Rounds of blocking before giving up.
        max_kept: Largest fraction of the float nodes the block list may hold.

    Returns:
        An :class:`Fp16Plan`; falsy when the tolerance was not met (its ``edited``
        holds the best model found, not to be written).

    Raises:
        NameNotFoundError: A ``keep`` name is no node of the model (close matches given).
        RuntimeFailure: onnxruntime cannot run the float32 model.
    """
    started = time.perf_counter()
    if not 0 <= max_kept <= 1:  # also refuses NaN
        raise UsageError(f"max_kept={max_kept!r}: a fraction of the float nodes, from 0 to 1")
    if max_rounds < 0:
        raise UsageError(f"max_rounds={max_rounds}: a number of rounds, 0 or more")
    keep = _check_keep(model, keep)
    # The conversion rewrites every float weight: external ones come into memory.
    model = inline_external_data(model)
    feeds = dict(feeds) if feeds is not None else make_feeds(model, feed_options)
    reference = {**feeds, **run(model, feeds, outputs=intermediate_tensors(model), options=options)}
    state = _State(model, feeds, tolerance, options)
    state.reasons.update({k: "kept on request" for k in keep})
    for label, why in _beyond_float16(model, reference).items():
        state.reasons.setdefault(label, why)
    conversion, candidate, report, values = state.attempt(state.reasons, fetch=True)
    state.record("initial block list", list(state.reasons), report)
    float_nodes = len(conversion.float16_nodes) + len(conversion.kept)
    limit = max(1, int(max_kept * float_nodes))
    batch, failure, last = 1, "", []
    while not report.passed:
        if len(state.steps) > max_rounds:
            failure = f"tolerance not met within {max_rounds} rounds"
            break
        worst = _worst_nodes(state, candidate, conversion, reference, values)
        if not worst:
            failure = "no float16 node left to keep in float32"
            break
        room = limit - len(state.reasons)
        if room <= 0:
            failure = (
                f"meeting the tolerance needs more than {limit} of {float_nodes} "
                "float nodes kept float32"
            )
            break
        last = worst[: min(batch, room)]
        state.reasons.update({n: "worst isolated error" for n in last})
        conversion, candidate, report, values = state.attempt(state.reasons, fetch=True)
        state.record("block worst isolated errors", last, report)
        batch *= 2
    if report.passed and len(last) > 1:
        _bisect_last_batch(state, last)
    return _finish(state, model, feed_options, keep, started, failure)


def _bisect_last_batch(state: _State, last: list[str]) -> None:
    """Keep the shortest worst-first prefix of the last batch that still passes."""
    before = [n for n in state.reasons if n not in last]
    low, high = 0, len(last)  # the prefix of length `high` passes
    while low < high:
        mid = (low + high) // 2
        _, _, report, _ = state.attempt(before + last[:mid])
        if report.passed:
            high = mid
        else:
            low = mid + 1
    for name in last[high:]:
        del state.reasons[name]
    if high < len(last):
        _, _, report, _ = state.attempt(state.reasons)
        state.record("bisect the last batch", last[:high], report)


def _finish(state: _State, model: Model, feed_options, keep, started, failure) -> Fp16Plan:
    from surgeon.verification import verify

    block = list(state.reasons)
    conversions: list[Conversion] = []

    def change(proto):
        conversions.append(convert_float16(proto, block))
        return conversions[-1].proto

    def correspond(edited: Model) -> Correspondence:
        return Correspondence(title=TITLE, tolerance=state.tolerance)

    params = {"keep": list(keep), "atol": state.tolerance.atol, "rtol": state.tolerance.rtol}
    edited = apply_edit(
        model,
        "fp16",
        params,
        change,
        correspond,
        copy=False,
        label="float16",
        check=Check(
            feeds=state.feeds,
            feed_options=feed_options,
            options=state.options,
            tolerance=state.tolerance,
        ),
        details=lambda m, r: {"block_list": block},
    )
    second = None
    if edited.passed and not failure:
        second_feeds = dataclasses.replace(feed_options, seed=feed_options.seed + 1)
        second = verify(
            edited.model,
            model,
            feed_options=second_feeds,
            tolerance=state.tolerance,
            options=state.options,
            title=TITLE + f" (second check, seed {second_feeds.seed})",
        )
    conversion = conversions[-1]
    kept = [KeptNode(n, _op_of(model, n), state.reasons[n], _module_of(model, n)) for n in block]
    not_float16 = {n: why for n, why in conversion.kept.items() if why != "block list"}
    return Fp16Plan(
        edited,
        kept,
        not_float16,
        state.steps,
        second,
        len(conversion.float16_nodes),
        model.proto.ByteSize(),
        edited.model.proto.ByteSize(),
        time.perf_counter() - started,
        failure,
    )


def _op_of(model: Model, label: str) -> str:
    return next((n.op_type for n in model.proto.graph.node if node_label(n) == label), "")


def _module_of(model: Model, label: str) -> str | None:
    from surgeon.origin import node_origin

    try:
        origin = node_origin(model, label)
    except NameNotFoundError:  # an unnamed node: no name to look up
        return None
    return origin.describe() if origin is not None else None
