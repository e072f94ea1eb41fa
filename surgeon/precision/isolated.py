"""Each node's own error: the node run on the reference's values at its inputs.

A node's cumulative error (its output in the candidate against the reference) mixes what
it inherits with what it adds. Fed the *reference's* values at its inputs (cast to the
dtypes the candidate uses there), the node shows only what it adds: its isolated error.

Nodes are grouped into *units*. A unit is a node with a paired output, plus the producers
of any of its inputs that have no reference value (a QuantizeLinear before its
DequantizeLinear, a MatMul whose output quantize_static renamed, a Constant), up to
:data:`MAX_UNIT_NODES` nodes. Every unit is copied, with fresh tensor names, into ONE model
that reads the candidate's initializers and takes the reference values as inputs; one
onnxruntime session with optimisation disabled runs them all, so the cost is one run. If
onnxruntime refuses the batch, the units are split in halves until the ones it refuses
are found (each then reported as failed), so one odd node does not lose the rest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from surgeon.compare import TensorDiff, Tolerance, as_reference_dtype, compare_arrays
from surgeon.errors import RuntimeFailure
from surgeon.model import Model
from surgeon.precision.pairing import Pair, Pairing, holds_subgraph, node_label
from surgeon.precision.severity import Severity, measure_severity, severity_from
from surgeon.runner import RunOptions, run

# A unit grows through inputs without reference values; beyond this many nodes it would
# no longer say anything about one node, and it is reported as not checkable instead.
MAX_UNIT_NODES = 8
_PREFIX = "surgeon.isolated/"


@dataclass
class IsolatedError:
    """One unit's isolated and cumulative error.

    Attributes:
        node: Label of the node whose output is compared (the unit's last node).
        op: Its op type.
        nodes: Every node the unit runs, in graph order (more than one when inputs had no
            reference value and their producers were taken in).
        outputs: The compared outputs and their pairs.
        fed: Candidate tensor -> the reference tensor whose value was fed there.
        status: ``evaluated``, ``skipped`` (see ``reason``) or ``failed`` (onnxruntime
            could not run the unit; ``reason`` says why).
        isolated: The unit's worst compared output, run on reference inputs.
        cumulative: The same output as the candidate computed it, against the reference
            (None when the candidate's value was not given).
        severity: How bad the isolated error is (see :mod:`surgeon.precision.severity`).
        overflowed_inputs: Inputs whose finite reference value is not finite in the
            candidate's dtype: the error there is inherited, not made by this unit.
        rank: 1 for the worst evaluated unit, and so on (None when not evaluated).
    """

    node: str
    op: str
    nodes: list[str]
    outputs: list[Pair]
    fed: dict[str, str] = field(default_factory=dict)
    status: str = "evaluated"
    reason: str = ""
    isolated: TensorDiff | None = None
    cumulative: TensorDiff | None = None
    severity: Severity | None = None
    overflowed_inputs: list[str] = field(default_factory=list)
    rank: int | None = None

    @property
    def beyond_tolerance(self) -> bool:
        return self.severity is not None and self.severity.beyond

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "op": self.op,
            "nodes": list(self.nodes),
            "outputs": [p.to_dict() for p in self.outputs],
            "fed": dict(self.fed),
            "status": self.status,
            "reason": self.reason,
            "rank": self.rank,
            "severity": self.severity.to_dict() if self.severity is not None else None,
            "isolated": self.isolated.to_dict() if self.isolated is not None else None,
            "cumulative": self.cumulative.to_dict() if self.cumulative is not None else None,
            "overflowed_inputs": list(self.overflowed_inputs),
        }


@dataclass
class Unit:
    """A unit as planned: the nodes it runs (graph order, the compared node last, at
    ``position`` in the candidate's node list), the candidate tensors fed with reference
    values, the candidate initializers it reads, and its compared outputs."""

    result: IsolatedError
    nodes: list[onnx.NodeProto]
    feeds: list[str]  # candidate tensors fed with reference values
    initializers: list[str]
    outputs: list[str]
    position: int = -1


@dataclass(frozen=True)
class MeasuredOutput:
    """A unit's output compared with its reference elsewhere (inside onnxruntime): its
    diff, and the excess and born count of surgeon.precision.severity (excess None when
    the shapes differ)."""

    diff: TensorDiff
    excess: float | None
    born: int


@dataclass
class MeasuredUnits:
    """Units evaluated elsewhere, for :func:`isolated_errors`.

    Attributes:
        has_reference: Candidate tensor -> whether it has a reference value; the units
            are planned with it (the values of units evaluated elsewhere are not given).
        outputs: Candidate output -> its measure; a unit is taken from here when all its
            outputs are, and run on values otherwise.
        overflowed: Fed candidate tensors whose finite reference value is not finite in
            the candidate's dtype.
    """

    has_reference: Callable[[str], bool]
    outputs: dict[str, MeasuredOutput] = field(default_factory=dict)
    overflowed: set[str] = field(default_factory=set)


def _reference_value(
    tensor: str,
    pairing: Pairing,
    reference_values: Mapping[str, object],
    candidate_values: Mapping[str, object],
    graph_inputs: set[str],
):
    """The reference's value for a candidate tensor, or None. A graph input without one
    takes the candidate's own feed (both sides were fed the same values)."""
    ref = pairing.reference_of(tensor)
    if ref is not None:
        if ref in reference_values:
            return reference_values[ref]
        if ref in pairing.reference_constants:
            constant = pairing.reference_constants[ref]
            if pairing.reference_model is not None:  # external bytes from its folder
                return pairing.reference_model.tensor_array(constant)
            return numpy_helper.to_array(constant)
    if tensor in graph_inputs and tensor in candidate_values:
        return candidate_values[tensor]
    return None


def plan_units(
    candidate: Model, pairing: Pairing, has_reference: Callable[[str], bool]
) -> tuple[list[Unit], list[IsolatedError]]:
    """The units :func:`isolated_errors` evaluates (and the nodes it skips, with why),
    given which candidate tensors have a reference value."""
    return _build_units(candidate, pairing, has_reference)


def _build_units(
    candidate: Model, pairing: Pairing, has_reference
) -> tuple[list[Unit], list[IsolatedError]]:
    graph = candidate.proto.graph
    # Positions, not the node objects: protobuf hands out a new wrapper on every access.
    nodes = list(graph.node)
    producer_of = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    initializers = {t.name for t in graph.initializer} - {v.name for v in graph.input}
    units: list[Unit] = []
    skipped: list[IsolatedError] = []
    for index, node in enumerate(nodes):
        outs = [o for o in node.output if o and o in pairing.pairs and has_reference(o)]
        if not outs:
            continue
        result = IsolatedError(
            node=node_label(node),
            op=node.op_type,
            nodes=[],
            outputs=[pairing.pairs[o] for o in outs],
        )
        members = {index}
        feeds: list[str] = []
        inits: list[str] = []
        loose: list[str] = []
        todo = [x for x in node.input if x]
        seen: set[str] = set()
        while todo:
            t = todo.pop(0)
            if t in seen:
                continue
            seen.add(t)
            if t in initializers:
                inits.append(t)
            elif has_reference(t):
                feeds.append(t)
            elif t in producer_of and len(members) < MAX_UNIT_NODES:
                p = producer_of[t]
                if p not in members:
                    members.add(p)
                    todo.extend(x for x in nodes[p].input if x)
            else:
                loose.append(t)
        ordered = [nodes[i] for i in sorted(members)]
        result.nodes = [node_label(n) for n in ordered]
        result.fed = {t: pairing.pairs[t].reference for t in feeds if t in pairing.pairs}
        if loose:
            result.status = "skipped"
            result.reason = "input(s) with no reference value: " + ", ".join(
                f"`{t}`" for t in loose
            )
        elif any(holds_subgraph(n) for n in ordered):
            result.status = "skipped"
            result.reason = "holds a subgraph (If/Loop/Scan), which is not run in isolation"
        if result.status != "evaluated":
            skipped.append(result)
            continue
        units.append(Unit(result, ordered, feeds, inits, outs, index))
    return units, skipped


# Dtypes whose graph run can skip a rounding between two nodes: onnxruntime's CPU
# computes float16/bfloat16 chains in float32 and rounds a tensor only where it is stored
# (fetched, or read by a node that needs it rounded), so a node of the reference may have
# read its inputs unrounded where the isolated run reads them as stored.
ROUNDING_SKIPPED = frozenset({"float16", "bfloat16"})


@dataclass(frozen=True)
class Twin:
    """The reference's own producer of a compared reference tensor, to be run on the
    same stored values a unit is fed: what the reference's node gives on them.

    Attributes:
        node: The reference's node (not copied).
        feeds: Candidate tensor fed to the unit -> the reference tensor the node reads in
            its place (the unit's feed's reference: the same stored value).
        initializers: Reference initializers the node reads.
        output: The reference tensor compared with the unit's output.
    """

    node: onnx.NodeProto
    feeds: Mapping[str, str]
    initializers: tuple[str, ...]
    output: str


def plan_twin(
    unit: Unit,
    output: str,
    pairing: Pairing,
    fed_dtypes: Mapping[str, tuple[str, str]],
    producers: Mapping[str, onnx.NodeProto],
) -> Twin | None:
    """The twin of ``unit``'s compared ``output`` (a candidate tensor of the reference's
    dtype), or None. ``fed_dtypes``: each fed candidate tensor -> (its reference value's
    dtype, the dtype the unit reads it in); ``producers``: the reference's
    (``pairing.reference_model.producers()``, asked once by the caller).

    A twin is the reference node producing the output's pair, when that node reads only
    the references of the unit's feeds (at least one of a ROUNDING_SKIPPED dtype, each
    read by the unit in its own dtype) and reference initializers, and holds no
    subgraph. Comparing the unit with it rather than with the reference's stored tensor
    compares two nodes on the same stored inputs, which is a node's own error: the
    stored tensor may come from unrounded inputs (see ROUNDING_SKIPPED), and identical
    float16 nodes were blamed for that."""
    reference = pairing.reference_model
    if reference is None or output not in pairing.pairs:
        return None
    if not any(fed_dtypes.get(t, ("",))[0] in ROUNDING_SKIPPED for t in unit.feeds):
        return None  # (the common case, float32 models: decided before any lookup)
    target = pairing.pairs[output].reference
    node = producers.get(target)
    if node is None or holds_subgraph(node):
        return None
    fed = {pairing.reference_of(t): t for t in unit.feeds if pairing.reference_of(t)}
    constants = pairing.reference_constants
    feeds: dict[str, str] = {}
    initializers: list[str] = []
    for x in node.input:
        if not x:
            continue
        if x in fed:
            feeds[fed[x]] = x
        elif x in constants and x not in reference.input_names:
            initializers.append(x)
        else:
            return None
    kinds = [fed_dtypes.get(c) for c in feeds]
    if any(k is None or k[0] != k[1] for k in kinds):
        return None  # a cast feed: the unit reads other values than the node did
    if not any(k[0] in ROUNDING_SKIPPED for k in kinds):
        return None  # no input the reference's run may have read unrounded
    return Twin(node, feeds, tuple(dict.fromkeys(initializers)), target)


def _fresh_prefix(proto: onnx.ModelProto) -> str:
    """A prefix no initializer name starts with (the batch keeps initializer names)."""
    names = [t.name for t in proto.graph.initializer]
    prefix = _PREFIX
    while any(n.startswith(prefix) for n in names):
        prefix = "_" + prefix
    return prefix


def _batch_model(
    candidate: Model, units: list[Unit], feeds: Mapping[str, np.ndarray], prefix: str
) -> tuple[Model, dict[tuple[int, str], str]]:
    """One model holding a renamed copy of every unit; returns it and (unit index,
    output) -> batch output name."""
    src = candidate.proto
    initializers = {t.name: t for t in src.graph.initializer}
    graph = onnx.GraphProto(name="isolated")
    used_inits: dict[str, None] = {}
    used_feeds: dict[str, None] = {}
    outputs: dict[tuple[int, str], str] = {}
    for k, unit in enumerate(units):
        fed, inits = set(unit.feeds), set(unit.initializers)

        def rename(t: str, k=k, fed=fed, inits=inits) -> str:
            if not t or t in inits:
                return t
            if t in fed:
                return f"{prefix}in/{t}"
            return f"{prefix}{k}/{t}"

        for j, node in enumerate(unit.nodes):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            # the position in the unit: unnamed nodes of one unit need distinct names too
            copy.name = f"{prefix}{k}/{j}/{node.name}"
            copy.input[:] = [rename(x) for x in node.input]
            copy.output[:] = [rename(x) for x in node.output]
            graph.node.append(copy)
        used_inits.update(dict.fromkeys(unit.initializers))
        used_feeds.update(dict.fromkeys(unit.feeds))
        for o in unit.outputs:
            outputs[(k, o)] = rename(o)
            graph.output.add(name=rename(o))
    for name in used_inits:
        graph.initializer.append(initializers[name])
    for t in used_feeds:
        value = feeds[t]
        graph.input.append(
            onnx.helper.make_tensor_value_info(
                f"{prefix}in/{t}",
                onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                list(value.shape),
            )
        )
    proto = onnx.ModelProto()
    proto.ir_version = src.ir_version
    proto.opset_import.extend(src.opset_import)
    proto.functions.extend(src.functions)
    proto.graph.CopyFrom(graph)
    return candidate.derive(proto, candidate.path), outputs  # its weights stay on disk


def _run_batches(
    candidate: Model,
    units: list[Unit],
    feeds: Mapping[str, np.ndarray],
    options: RunOptions,
    prefix: str,
    stats: dict,
) -> dict[int, dict[str, np.ndarray] | str]:
    """Unit index -> {output: value}, or the failure message. Splits a refused batch in
    halves until the refused units are found."""
    results: dict[int, dict[str, np.ndarray] | str] = {}

    def attempt(indices: list[int]) -> None:
        if not indices:
            return
        chosen = [units[i] for i in indices]
        model, names = _batch_model(candidate, chosen, feeds, prefix)
        wanted = {t for u in chosen for t in u.feeds}
        stats["runs"] += 1
        started = time.perf_counter()
        try:
            values = run(
                model,
                {f"{prefix}in/{t}": feeds[t] for t in wanted},
                outputs=list(names.values()),
                options=options,
            )
        except RuntimeFailure as e:
            stats["session_seconds"] += time.perf_counter() - started
            if len(indices) == 1:
                results[indices[0]] = e.message
                return
            half = len(indices) // 2
            attempt(indices[:half])
            attempt(indices[half:])
            return
        stats["session_seconds"] += time.perf_counter() - started
        for j, i in enumerate(indices):
            results[i] = {o: values[names[(j, o)]] for o in units[i].outputs}

    attempt(list(range(len(units))))
    return results


def _feed_value(value, dtype: str | None):
    """A reference value cast to the candidate's dtype there."""
    value = np.asarray(value)
    if dtype and dtype != value.dtype.name and dtype not in ("str",):
        try:
            target = np.dtype(dtype)
        except TypeError:  # a dtype numpy cannot name (float8, int4): feed as it is
            return value
        with np.errstate(over="ignore", invalid="ignore"):
            return value.astype(target)
    return value


def _overflowed(reference, fed: np.ndarray) -> bool:
    """True when a finite reference value is not finite once cast (float32 1e5 in float16)."""
    ref = np.asarray(reference)
    if ref.dtype.kind != "f" or fed.dtype.kind not in "fV":
        return False
    with np.errstate(invalid="ignore"):
        wide = fed.astype(np.float64)
    return bool(np.any(np.isfinite(ref) & ~np.isfinite(wide)))


@dataclass
class _TwinUnit:
    """A twin laid out as a unit for :func:`_batch_model` (reference tensor names)."""

    nodes: list[onnx.NodeProto]
    feeds: list[str]
    initializers: list[str]
    outputs: list[str]


def _run_twins(units, here, pairing: Pairing, lookup, options, stats) -> dict:
    """(unit index, output) -> the value of its twin (:func:`plan_twin`): the
    reference's node run on the stored values the unit was fed, in one more batch run.
    Outputs without a twin, or whose twin onnxruntime refused, keep the reference's
    stored value."""
    planned: dict[tuple[int, str], Twin] = {}
    if pairing.reference_model is None:
        return {}
    producers = pairing.reference_model.producers()
    for k in here:
        unit = units[k]
        fed_dtypes = {}
        for t in unit.feeds:
            stored = np.asarray(lookup(t)).dtype.name
            fed_dtypes[t] = (stored, pairing.dtypes.get(t) or stored)
        for o in unit.outputs:
            value = lookup(o)
            if not isinstance(value, np.ndarray) or pairing.dtypes.get(o) != value.dtype.name:
                continue
            twin = plan_twin(unit, o, pairing, fed_dtypes, producers)
            if twin is not None:
                planned[(k, o)] = twin
    if not planned:
        return {}
    reference = pairing.reference_model
    layout = [
        _TwinUnit([t.node], list(t.feeds.values()), list(t.initializers), [t.output])
        for t in planned.values()
    ]
    feeds = {x: np.asarray(lookup(c)) for t in planned.values() for c, x in t.feeds.items()}
    ran = _run_batches(reference, layout, feeds, options, _fresh_prefix(reference.proto), stats)
    return {
        key: got[twin.output]
        for j, (key, twin) in enumerate(planned.items())
        if isinstance(got := ran.get(j), dict)
    }


@dataclass
class IsolatedRun:
    """What :func:`isolated_errors` computed; see :mod:`surgeon.precision.ranking` for the
    ranking and the root cause."""

    units: list[IsolatedError]
    tolerance: Tolerance
    pairing: Pairing
    seconds: float = 0.0  # the whole call
    runs: int = 0  # onnxruntime sessions (1 unless a batch was refused and split)
    session_seconds: float = 0.0  # building and running those sessions


def isolated_errors(
    candidate: Model,
    pairing: Pairing,
    reference_values: Mapping[str, object],
    candidate_values: Mapping[str, object] | None = None,
    tolerance: Tolerance = Tolerance(),
    *,
    options: RunOptions | None = None,
    cumulative: Mapping[str, TensorDiff] | None = None,
    measured: MeasuredUnits | None = None,
) -> IsolatedRun:
    """Run every checkable node of ``candidate`` on the reference's values at its inputs.

    Args:
        candidate: The model under test.
        pairing: From :func:`surgeon.precision.pair_tensors`.
        reference_values: Reference tensor name -> value (include the reference's inputs;
            a candidate graph input without one takes the candidate's own value). The
            reference model's initializers, when the pairing knows them, need not be given.
        candidate_values: The candidate's own values (tapped), for the cumulative error;
            optional.
        tolerance: When an output matches the reference.
        options: Custom-op libraries and threads for onnxruntime; optimisation is always
            disabled (each node as the graph defines it).
        cumulative: Candidate tensor -> its diff with the reference, computed already
            (e.g. inside onnxruntime); used where ``candidate_values`` lacks the tensor.
        measured: Units evaluated already (inside onnxruntime, see
            surgeon.debugging.in_graph_compare): the units are planned with its
            ``has_reference``, and only the others are run here, on
            ``reference_values`` (which then need hold only their values).

    Returns:
        An :class:`IsolatedRun`; rank it with :func:`surgeon.precision.rank_units`.
    """
    start = time.perf_counter()
    candidate_values = candidate_values or {}
    graph_inputs = set(candidate.input_names)
    cache: dict[str, object] = {}

    def lookup(t: str):
        if t not in cache:
            cache[t] = _reference_value(
                t, pairing, reference_values, candidate_values, graph_inputs
            )
        return cache[t]

    def has_reference(t: str) -> bool:
        return isinstance(lookup(t), np.ndarray)

    units, skipped = _build_units(
        candidate, pairing, measured.has_reference if measured is not None else has_reference
    )
    elsewhere = {
        k
        for k, unit in enumerate(units)
        if measured is not None and all(o in measured.outputs for o in unit.outputs)
    }
    here = [k for k in range(len(units)) if k not in elsewhere]
    feeds: dict[str, np.ndarray] = {}
    overflowed: set[str] = set(measured.overflowed) if measured is not None else set()
    for t in dict.fromkeys(x for k in here for x in units[k].feeds):
        value = _feed_value(lookup(t), pairing.dtypes.get(t))
        feeds[t] = value
        if _overflowed(lookup(t), value):
            overflowed.add(t)
    run_options = dataclasses.replace(options or RunOptions(), optimization="disabled")
    stats = {"runs": 0, "session_seconds": 0.0}
    ran = _run_batches(
        candidate,
        [units[k] for k in here],
        feeds,
        run_options,
        _fresh_prefix(candidate.proto),
        stats,
    )
    outcome = {k: ran.get(j) for j, k in enumerate(here)}
    del ran  # each unit's values are dropped once it is measured
    twins = _run_twins(units, here, pairing, lookup, run_options, stats)
    for k, unit in enumerate(units):
        r = unit.result
        r.overflowed_inputs = sorted(t for t in unit.feeds if t in overflowed)
        if k in elsewhere:
            worst = None
            for o in unit.outputs:
                m = measured.outputs[o]
                sev = severity_from(m.diff, m.excess, m.born, bool(r.overflowed_inputs))
                if worst is None or sev.key() < worst[0].key():
                    worst = (sev, m.diff, o)
        else:
            got = outcome.get(k)
            if isinstance(got, str) or got is None:
                r.status, r.reason = "failed", got or "not run"
                continue
            worst = None
            for o in unit.outputs:
                pair = pairing.pairs[o]
                expected = twins.get((k, o), lookup(o))
                diff = compare_arrays(
                    as_reference_dtype(got[o], expected)[0],
                    expected,
                    tolerance,
                    name=o,
                    reference=pair.reference,
                )
                sev = measure_severity(got[o], expected, diff, tolerance, bool(r.overflowed_inputs))
                if worst is None or sev.key() < worst[0].key():
                    worst = (sev, diff, o)
            del got
            outcome[k] = None  # the unit's values are no longer needed
        r.severity, r.isolated, out = worst
        if cumulative is not None and out in cumulative and out not in candidate_values:
            r.cumulative = cumulative[out]
        elif out in candidate_values:
            r.cumulative = compare_arrays(
                as_reference_dtype(candidate_values[out], lookup(out))[0],
                lookup(out),
                tolerance,
                name=out,
                reference=pairing.pairs[out].reference,
            )
    run = IsolatedRun(
        units=[u.result for u in units] + skipped,
        tolerance=tolerance,
        pairing=pairing,
        runs=stats["runs"],
        session_seconds=stats["session_seconds"],
    )
    run.seconds = time.perf_counter() - start
    return run


__all__ = [
    "IsolatedError",
    "IsolatedRun",
    "MeasuredOutput",
    "MeasuredUnits",
    "Unit",
    "isolated_errors",
    "plan_units",
]
