"""Layer-wise comparison inside onnxruntime: ONE model holding the candidate graph, the
reference graph (its names prefixed, the graph inputs both take fed once) and, after
each paired tensor's producers, the comparison nodes of :mod:`surgeon.compare.in_graph`.

Why: fetching every activation of both models kept them all alive at once (4.6x to
7.1x the memory of plain runs). Here each pair is reduced where it is made and
onnxruntime frees it as a plain run would; only three small outputs per pair leave the
run, plus the values of the pairs the nodes cannot compare (other dtypes, ``exact``),
which are compared with compare_arrays as before (never dropped).

The isolated-error stage (surgeon.precision.isolated) runs in the same model where it
can (:func:`plan_isolation`): each unit's candidate nodes copied after the candidate
node, fed the reference's tensors (cast to the candidate's dtype there), each output
compared with the reference's by the same nodes plus the severity numbers. So the
reference's activations never leave onnxruntime either (fetching them for a separate
isolated session was the peak: 736 MB for a YOLOv8n-size debug run, 428 MB now) and no
second session is built. Units the nodes cannot take (integer outputs, casts other than
between floats, an optimised run, a zero atol) keep the values path: their reference
values are fetched.

:func:`merge_refusal` says when the two graphs cannot share a model (opset versions that
differ, reference subgraphs or local functions, sparse weights): debug then keeps the
values path.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from surgeon import fastops
from surgeon.compare import TensorDiff, Tolerance, as_reference_dtype, cast_note
from surgeon.compare.in_graph import (
    ComparisonOutputs,
    SharedNodes,
    add_comparison,
    add_fast_comparison,
    add_fused_comparison,
    add_fused_overflow_count,
    add_overflow_count,
    diff_from_outputs,
    in_graph_comparable,
    needs_general,
    overflow_from_outputs,
    severity_from_outputs,
    severity_in_graph,
)
from surgeon.errors import SurgeonError
from surgeon.external import external_tensors, inline_all
from surgeon.graph_facts import graph_facts
from surgeon.model import Model, dtype_name
from surgeon.protos import copy_without_nodes, fill_node
from surgeon.runner import BorrowedWeights, RunOptions, Session, run
from surgeon.statistics.in_graph import StatsOutputs, add_fused_stats

if TYPE_CHECKING:
    from surgeon.precision.isolated import Twin

_PREFIX = "surgeon.ref/"
_COMPARE_PREFIX = "surgeon.cmp/"
_ISOLATED_PREFIX = "surgeon.iso/"
_STATS_PREFIX = "surgeon.stats/"  # the candidate's statistics (Fold)
_DTYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def merge_refusal(model: Model, reference: Model) -> str | None:
    """Why ``reference`` cannot be merged into one model with ``model`` (None when it
    can). The reference is renamed node by node; names inside its subgraphs and
    functions would need a scope-aware renaming this module does not do."""
    if model.opset < 11:
        return "the model's opset is below 11 (the comparison nodes need 11)"
    mine = {o.domain or "": o.version for o in model.proto.opset_import}
    for o in reference.proto.opset_import:
        if (o.domain or "") in mine and mine[o.domain or ""] != o.version:
            return f"the two models import opset {o.domain or 'ai.onnx'} at different versions"
    if reference.proto.functions:
        return "the reference has local functions"
    if reference.proto.graph.sparse_initializer:
        return "the reference has sparse initializers"
    for node in reference.proto.graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            return "the reference has subgraphs (If/Loop/Scan)"
    return None


@dataclass
class InGraphResult:
    """What the merged run gave: a diff per compared (candidate, reference) pair, and
    reference values that were asked for."""

    diffs: dict[tuple[str, str], TensorDiff] = field(default_factory=dict)
    # pairs whose candidate was cast to the reference's dtype: "compared as float32
    # (model has float16)", as the layer comparison notes it
    cast_notes: dict[tuple[str, str], str] = field(default_factory=dict)
    reference_values: dict[str, object] = field(default_factory=dict)
    in_graph: int = 0  # pairs compared by nodes in the graph
    fetched: int = 0  # pairs compared on fetched values
    runs: int = 0  # onnxruntime runs of the merged model (2 when a pair held NaN/Inf)
    # the isolated units' outputs: candidate output -> (its diff, excess, born count),
    # excess None when the shapes differ (see surgeon.precision.isolated.MeasuredOutput)
    isolated: dict[str, tuple[TensorDiff, float | None, int]] = field(default_factory=dict)
    # fed candidate tensors whose finite reference value overflowed the candidate's dtype
    overflowed: set[str] = field(default_factory=set)


@dataclass
class Fold:
    """The candidate's statistics and tap check folded into the merged run (debug
    ``--ref`` with surgeon's kernel library): no separate statistics run.

    The merged model also measures each of ``taps`` right after it is made (the
    kernel's TensorStats; other dtypes are fetched) and exposes the candidate's original
    outputs ``outputs`` under their own names. ``before_run`` is called once the merged
    session is built, right before it runs (the caller's plain run, overlapping the
    build, ends there); ``finish(stats, values)`` gets each tap's StatsOutputs and the
    merged run's values, once, after the run that compared the pairs; ``check`` is called
    when a merged run fails.
    """

    taps: Sequence[str]
    types: Mapping[str, onnx.TypeProto]
    outputs: Sequence[str]
    before_run: Callable[[], None]
    finish: Callable[[dict, dict], None]
    # raises the candidate's own error when its plain run failed (a failed merged run
    # is first blamed on the candidate, as the separate statistics run would)
    check: Callable[[], None]
    stats: dict = field(default_factory=dict)  # tap -> StatsOutputs, filled by the merge


@dataclass(frozen=True)
class IsolatedUnit:
    """A unit of surgeon.precision.isolated run inside the merged model: copies of its
    candidate nodes, fed the reference's tensors (cast to the candidate's dtype there),
    each output compared with its reference tensor by the comparison nodes.

    Attributes:
        nodes: The unit's candidate nodes in graph order.
        position: The index of its last node in the candidate's node list (the unit is
            placed right after it).
        feeds: Candidate tensor -> (the reference tensor whose value it takes, or None
            for the candidate's own graph input; that tensor's ONNX element type; the
            element type to cast it to, 0 for none). Casts are between float types only.
        initializers: Candidate initializers the nodes read (kept, not renamed).
        outputs: (candidate output, reference tensor) pairs compared.
        twins: Candidate output -> the reference node run on the same stored inputs,
            compared with it instead of the reference's float16 tensor (see
            surgeon.precision.isolated.plan_twin).
    """

    nodes: Sequence[onnx.NodeProto]
    position: int
    feeds: Mapping[str, tuple[str | None, int, int]]
    initializers: Sequence[str]
    outputs: Sequence[tuple[str, str]]
    twins: Mapping[str, Twin] = field(default_factory=dict)


@dataclass
class IsolationPlan:
    """How the isolated-error stage splits between the merged run and the values path.

    Attributes:
        has_reference: Candidate tensor -> whether the isolated stage has a reference
            value for it (the units are planned with it: the same units as when every
            value is fetched).
        units: The units run inside the merged model (see :class:`IsolatedUnit`).
        keep: Reference tensors the other units need fetched (their values path).
    """

    has_reference: Callable[[str], bool]
    units: list[IsolatedUnit]
    keep: list[str]


_FLOAT_ELEMS = {
    "float16": onnx.TensorProto.FLOAT16,
    "float32": onnx.TensorProto.FLOAT,
    "float64": onnx.TensorProto.DOUBLE,
}


def plan_isolation(
    model: Model,
    reference: Model,
    pairing,
    kept: Sequence[str],
    feeds: Mapping[str, object],
    reference_feeds: Mapping[str, object],
    types: dict[str, onnx.TypeProto],
    reference_types: dict[str, onnx.TypeProto],
    tolerance: Tolerance,
    options: RunOptions,
) -> IsolationPlan | None:
    """Which isolated units (surgeon.precision.isolated) run inside the merged model,
    given the reference values the values path would hold: ``kept`` (fetched reference
    tensors), ``reference_feeds`` and the reference's initializers. None when none can:
    the isolated run disables optimisation (so must the merged one), and the severity
    numbers need a tolerance :func:`severity_in_graph` accepts.

    A unit runs in the graph when each of its outputs pairs with a reference tensor the
    comparison nodes accept (float16/float32) and each feed is that tensor as it is or
    cast between float types; the others keep the values path. ``types`` and
    ``reference_types`` are completed with the units' tensors.
    """
    from surgeon.edits.tap import learn_types
    from surgeon.precision.isolated import plan_units

    if options.optimization != "disabled" or not severity_in_graph(tolerance):
        return None
    kept = set(kept)
    if any(r not in reference_types for r in kept):
        return None  # a value whose kind is not known before it is fetched
    constants = pairing.reference_constants
    graph_inputs = set(model.input_names)

    def has_reference(t: str) -> bool:
        # surgeon.precision.isolated._reference_value's order, on what the values hold
        ref = pairing.reference_of(t)
        if ref is not None:
            if ref in kept:
                return reference_types[ref].HasField("tensor_type")
            if ref in reference_feeds:
                return isinstance(reference_feeds[ref], np.ndarray)
            if ref in constants:
                return True
        return t in graph_inputs and isinstance(feeds.get(t), np.ndarray)

    def source(t: str) -> tuple[str | None, str | None]:
        """(the reference tensor fed at ``t`` or None for its own input, its dtype)."""
        ref = pairing.reference_of(t)
        if ref is not None:
            if ref in kept:
                elem = reference_types[ref].tensor_type.elem_type
                return ref, dtype_name(elem) if elem else None
            if ref in reference_feeds:
                return ref, reference_feeds[ref].dtype.name
            if ref in constants:
                return ref, dtype_name(constants[ref].data_type)
        return None, feeds[t].dtype.name

    units, _ = plan_units(model, pairing, has_reference)
    outputs = [(o, pairing.pairs[o].reference) for u in units for o in u.outputs]
    types.update(learn_types(model, [o for o, _ in outputs if o not in types], options))
    reference_types.update(
        learn_types(reference, [r for _, r in outputs if r not in reference_types], options)
    )
    in_graph, keep = [], {}
    producers = reference.producers()  # (asked once: each call checks the graph's fingerprint)
    for unit in units:
        spec = _unit_in_graph(unit, pairing, source, types, reference_types, tolerance, producers)
        if spec is not None:
            in_graph.append(spec)
            continue
        for t in [*unit.feeds, *unit.outputs]:
            ref = pairing.reference_of(t)
            if ref in kept:
                keep[ref] = None
    return IsolationPlan(has_reference, in_graph, list(keep))


def _unit_in_graph(unit, pairing, source, types, reference_types, tolerance, producers):
    """``unit`` as an :class:`IsolatedUnit`, or None when it must keep the values path."""
    outputs = []
    for o in unit.outputs:
        r = pairing.pairs[o].reference
        if o not in types or r not in reference_types:
            return None
        c_type, r_type = types[o], reference_types[r]
        if not (c_type.HasField("tensor_type") and r_type.HasField("tensor_type")):
            return None
        if not in_graph_comparable(
            c_type.tensor_type.elem_type, r_type.tensor_type.elem_type, tolerance
        ):
            return None
        outputs.append((o, r))
    fed = {}
    for t in unit.feeds:
        ref, dtype = source(t)
        wanted = pairing.dtypes.get(t)
        # surgeon.precision.isolated._feed_value casts to the candidate's dtype there
        elem = _FLOAT_ELEMS.get(dtype, 0)
        if not wanted or wanted == "str" or wanted == dtype:
            fed[t] = (ref, elem, 0)
        elif wanted in _FLOAT_ELEMS and elem:
            fed[t] = (ref, elem, _FLOAT_ELEMS[wanted])
        else:
            return None
    from surgeon.precision.isolated import plan_twin

    # Compared with the reference's own node re-run on the same stored values where the
    # reference may have read them unrounded (the values path does the same:
    # surgeon.precision.isolated._run_twins).
    fed_dtypes = {}
    for t in unit.feeds:
        dtype = source(t)[1]
        fed_dtypes[t] = (dtype, pairing.dtypes.get(t) or dtype)
    twins = {
        o: twin
        for o, r in outputs
        if types[o].tensor_type.elem_type == reference_types[r].tensor_type.elem_type
        and (twin := plan_twin(unit, o, pairing, fed_dtypes, producers)) is not None
    }
    return IsolatedUnit(unit.nodes, unit.position, fed, unit.initializers, outputs, twins)


# The reference tensors whose consumers wait for their comparisons (see _Merge.run).
_GATED = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE})


@functools.cache
def rounding_guard(kernels: bool = True) -> tuple[tuple[str, str], ...]:
    """The nodes, as (domain, op type) pairs (each with one input and no attribute),
    that, placed between a float16 tensor and a node, make onnxruntime hand the node the
    stored, rounded tensor.

    onnxruntime's CPU runs float16 nodes without a float16 kernel in float32 and drops
    the Cast pairs between them, through data-movement nodes too: in 1.32 a Sub ->
    Identity -> Mul chain (or Reshape, Slice, Concat, Tile, Expand, Cast, Split in the
    middle) reads Sub's unrounded float32 values, while a pair of Transposes (each
    reversing the dims, together the identity at every rank) rounds, and so does
    surgeon's kernel ``Stored`` (a float16 copy onnxruntime cannot see through; one
    pass of memcpy where the Transposes are two strided gathers: on a float16
    YOLOv8n-size ``debug --ref`` they took 0.6 of its 1.9 s run). Which is so is
    onnxruntime's behaviour, not a contract: a probe (one small session, once per
    process) picks the first of ``Stored`` (``kernels``: for a model that imports the
    library's domain, where ``fastops.available()``), Identity and the Transpose pair
    that rounds, Identity when none does."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4, 16)).astype(np.float16) for _ in range(2))
    stored = (a.astype(np.float32) - b.astype(np.float32)).astype(np.float16)
    want = (stored.astype(np.float32) ** 2).astype(np.float16)
    disabled = RunOptions(optimization="disabled")
    chains = [(("", "Identity"),), (("", "Transpose"), ("", "Transpose"))]
    if kernels and fastops.available():
        chains.insert(0, ((fastops.DOMAIN, fastops.STORED),))
    for chain in chains:
        nodes = [onnx.helper.make_node("Sub", ["a", "b"], ["g0"])]
        nodes += [
            onnx.helper.make_node(op, [f"g{j}"], [f"g{j + 1}"], domain=domain)
            for j, (domain, op) in enumerate(chain)
        ]
        nodes.append(onnx.helper.make_node("Mul", [f"g{len(chain)}"] * 2, ["y"]))
        half = onnx.TensorProto.FLOAT16
        graph = onnx.helper.make_graph(
            nodes,
            "probe",
            [onnx.helper.make_tensor_value_info(n, half, [4, 16]) for n in "ab"],
            [onnx.helper.make_tensor_value_info("y", half, [4, 16])],
        )
        opsets = [onnx.helper.make_opsetid(d or "", 13 if not d else 1) for d in {"", *dict(chain)}]
        proto = onnx.helper.make_model(graph, opset_imports=opsets)
        proto.ir_version = 8
        try:
            got = run(Model(proto), {"a": a, "b": b}, options=disabled)["y"]
        except SurgeonError:
            continue
        if np.array_equal(got, want):
            return chain
    return (("", "Identity"),)


def _fresh_prefix(names: Sequence[str], prefix: str = _PREFIX) -> str:
    while any(n.startswith(prefix) for n in names):
        prefix = "_" + prefix
    return prefix


def compare_in_graph(
    model: Model,
    reference: Model,
    pairs: Sequence[tuple[str, str]],
    types: Mapping[str, onnx.TypeProto],
    reference_types: Mapping[str, onnx.TypeProto],
    feeds: Mapping[str, np.ndarray],
    reference_feeds: Mapping[str, np.ndarray],
    shared_inputs: Mapping[str, str],
    tolerance: Tolerance,
    options: RunOptions,
    *,
    keep_reference: Sequence[str] = (),
    units: Sequence[IsolatedUnit] = (),
    fold: Fold | None = None,
) -> InGraphResult:
    """Run ``model`` and ``reference`` as one model and compare each (candidate tensor,
    reference tensor) of ``pairs``.

    Pairs whose shapes are known equal go through the cheap finite-only nodes first; the
    few that held a NaN or Inf are compared again by the general nodes in a second run
    (only then: the count of such runs is in ``InGraphResult.runs``).

    Args:
        types: Candidate tensor -> its type, where known.
        reference_types: The same for reference tensors.
        feeds: The model's feeds.
        reference_feeds: The reference's feeds by its input names.
        shared_inputs: Reference input -> model input fed the very same value (fed once).
        keep_reference: Reference tensors whose values are returned as well.
        units: Isolated units to run on the reference's tensors inside the same run (the
            types of their outputs and of the reference tensors they read must be in
            ``types`` and ``reference_types``, every pair accepted by
            in_graph_comparable, and the tolerance by severity_in_graph); their diffs
            and severity numbers go to ``InGraphResult.isolated``.
        fold: The candidate's statistics and tap check in the same run (only where
            ``fastops.available()``: then no pair is compared twice).

    Raises:
        RuntimeFailure: onnxruntime cannot run the merged model.
    """
    from surgeon.compare import compare_arrays

    elem = {n: t.tensor_type.elem_type for n, t in types.items() if t.HasField("tensor_type")}
    ref_elem = {
        n: t.tensor_type.elem_type for n, t in reference_types.items() if t.HasField("tensor_type")
    }
    fast: list[tuple[str, str]] = []
    general: list[tuple[str, str]] = []
    fetched: list[tuple[str, str]] = []
    # surgeon's kernels compare any pair in one node (no shape plan, no second run)
    fused = fastops.available() or fold is not None
    for c, r in dict.fromkeys(pairs):
        if in_graph_comparable(elem.get(c, 0), ref_elem.get(r, 0), tolerance):
            same = fused or _static_shape(types[c]) == _static_shape(reference_types[r]) is not None
            (fast if same and (fused or _static_shape(types[c])) else general).append((c, r))
        else:
            fetched.append((c, r))
    merge = _Merge(model, reference, shared_inputs)
    merge.fused = fused
    # the static shapes the fast nodes compare at: in their rank (no flattening copy for
    # float32 pairs) and, below 2**24 elements, counting in float32
    merge.shapes = {
        c: _static_shape(types[c])
        for c in [c for c, _ in fast] + [o for unit in units for o, _ in unit.outputs]
        if not fused and _static_shape(types[c])
    }
    result = InGraphResult(in_graph=len(fast) + len(general), fetched=len(fetched))
    keep = [merge.rename(r) for r in keep_reference]
    values = dict.fromkeys([c for c, _ in fetched] + [merge.rename(r) for _, r in fetched] + keep)
    # each unit's outputs: the fast nodes when both shapes are known equal
    unit_fast = [
        {
            o
            for o, r in unit.outputs
            if not fused
            and _static_shape(types[o])
            and _static_shape(types[o]) == _static_shape(reference_types[r])
        }
        for unit in units
    ]
    plan = _UnitPlan(units, unit_fast, count_overflow=True)
    outputs, got = merge.run(
        fast,
        general,
        list(values),
        elem,
        ref_elem,
        feeds,
        reference_feeds,
        tolerance,
        options,
        plan,
        fold,
    )
    result.runs = 1
    if fold is not None:
        fold.finish(fold.stats, got)
    again = [pair for pair in fast if needs_general(outputs[pair], got)]
    for c, r in fetched:
        actual, expected = got[c], got[merge.rename(r)]
        actual, note = as_reference_dtype(actual, expected)
        result.diffs[(c, r)] = compare_arrays(actual, expected, tolerance, name=c, reference=r)
        if note:
            result.cast_notes[(c, r)] = note
    for r, name in zip(keep_reference, keep, strict=True):
        result.reference_values[r] = got[name]
    diffs = {
        pair: diff_from_outputs(out, got, tolerance, name=pair[0], reference=pair[1])
        for pair, out in outputs.items()
        if pair not in again
    }
    result.overflowed = {
        t for t, (name, kernel) in plan.overflow.items() if overflow_from_outputs(name, kernel, got)
    }
    redo = _measure_units(result, plan, got, tolerance)
    del got
    if again or redo:
        # units whose fast nodes met a NaN/Inf (or other shapes): every output general
        plan = _UnitPlan([units[k] for k in redo], [set() for _ in redo], count_overflow=False)
        outputs, got = merge.run(
            [], again, [], elem, ref_elem, feeds, reference_feeds, tolerance, options, plan
        )
        result.runs += 1
        for pair in again:
            diffs[pair] = diff_from_outputs(
                outputs[pair], got, tolerance, name=pair[0], reference=pair[1]
            )
        _measure_units(result, plan, got, tolerance)
    for (c, r), diff in diffs.items():
        result.diffs[(c, r)] = diff
        if elem[c] != ref_elem[r]:
            result.cast_notes[(c, r)] = cast_note(diff.dtype, _DTYPE_NAMES[elem[c]])
    return result


@dataclass
class _UnitPlan:
    """The isolated units of one merged run, which of each one's outputs take the fast
    nodes, and (filled by the run) their comparison outputs and overflow counts."""

    units: Sequence[IsolatedUnit]
    fast: Sequence[set[str]]
    count_overflow: bool
    compared: list[dict[str, ComparisonOutputs]] = field(default_factory=list)
    # fed tensor -> (the output counting its overflow, whether a kernel counts)
    overflow: dict[str, tuple[str, bool]] = field(default_factory=dict)


def _measure_units(result: InGraphResult, plan: _UnitPlan, got, tolerance) -> list[int]:
    """Each unit's diffs and severity numbers into ``result.isolated``; returns the
    units to compare again with the general nodes (a fast output held NaN/Inf)."""
    redo = []
    for k, (unit, compared) in enumerate(zip(plan.units, plan.compared, strict=True)):
        if any(o in plan.fast[k] and needs_general(compared[o], got) for o, _ in unit.outputs):
            redo.append(k)
            continue
        for o, r in unit.outputs:
            diff = diff_from_outputs(compared[o], got, tolerance, name=o, reference=r)
            if diff.shape != diff.reference_shape:
                result.isolated[o] = (diff, None, 0)
            else:
                result.isolated[o] = (diff, *severity_from_outputs(compared[o], got))
    return redo


def _static_shape(t: onnx.TypeProto) -> tuple[int, ...] | None:
    """The shape when every dim is a known positive number, else None."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


class _Merge:
    """The candidate and the renamed reference in one model, with comparison nodes."""

    def __init__(self, model: Model, reference: Model, shared_inputs: Mapping[str, str]):
        self.model, self.reference, self.shared = model, reference, shared_inputs
        taken = [*model.tensor_names(), *(n.name for n in model.proto.graph.node)]
        self.prefix = _fresh_prefix(taken)
        # The comparison nodes' own names: no model name starts with it, and no renamed
        # reference name can (those start with self.prefix).
        self.compare_prefix = _fresh_prefix(taken, _COMPARE_PREFIX)
        self.isolated_prefix = _fresh_prefix(taken, _ISOLATED_PREFIX)
        self.stats_prefix = _fresh_prefix(taken, _STATS_PREFIX)
        self.shapes: dict[str, tuple[int, ...]] = {}  # candidate tensor -> its static shape
        self.fused = False  # surgeon's kernels compare (set by compare_in_graph)
        ref = reference.proto
        inits = {t.name for t in ref.graph.initializer}
        self.ref_inputs = {i.name for i in ref.graph.input} - inits
        self._ref_proto: onnx.ModelProto | None = None

    def _same_folder(self) -> bool:
        a, b = self.model.data_dir, self.reference.data_dir
        return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)

    def reference_proto(self) -> onnx.ModelProto:
        """The reference's proto as the merged model can hold it: its external tensors
        resolve in the candidate's folder (the merged model has one), so a reference
        kept in another folder comes with those tensors read into memory (once)."""
        ref = self.reference.proto
        if self._same_folder() or not external_tensors(ref):
            return ref
        if self._ref_proto is None:
            self._ref_proto = onnx.ModelProto()
            self._ref_proto.CopyFrom(ref)
            inline_all(self.reference.weight_source, self._ref_proto)
        return self._ref_proto

    def fast_extra(self, candidate: str) -> dict[str, int | None]:
        """The rank and size add_fast_comparison is given for a candidate tensor."""
        shape = self.shapes.get(candidate)
        if shape is None:
            return {"rank": None, "size": None}
        return {"rank": len(shape), "size": math.prod(shape)}

    def rename(self, t: str) -> str:
        if not t:
            return t
        if t in self.ref_inputs and t in self.shared:
            return self.shared[t]
        return self.prefix + t

    def run(
        self,
        fast,
        general,
        values,
        elem,
        ref_elem,
        feeds,
        reference_feeds,
        tolerance,
        options,
        plan: _UnitPlan | None = None,
        fold: Fold | None = None,
    ):
        """One run comparing ``fast`` and ``general`` pairs, running ``plan``'s isolated
        units and fetching ``values``: (pair -> its ComparisonOutputs, the fetched
        outputs); the units' comparison outputs go into ``plan``, ``fold``'s statistics
        outputs into ``fold.stats``."""
        src, ref, rename, prefix = (
            self.model.proto,
            self.reference_proto(),
            self.rename,
            self.prefix,
        )
        # The two models' weights in memory are lent to onnxruntime as arrays rather than
        # copied into the merged proto and serialised with it (YOLOv8n-size: 26 MB of
        # each, held beside onnxruntime's copy through the whole run).
        lent = BorrowedWeights(self.model, [(ref, rename)])
        proto = copy_without_nodes(src, lent.names)
        graph = proto.graph
        del graph.output[:]
        del graph.value_info[:]
        proto.ir_version = max(src.ir_version, ref.ir_version)
        have = {o.domain or "" for o in proto.opset_import}
        proto.opset_import.extend(o for o in ref.opset_import if (o.domain or "") not in have)
        for t in ref.graph.initializer:
            if rename(t.name) in lent.names:
                continue
            copy = graph.initializer.add()
            copy.CopyFrom(t)
            copy.name = rename(t.name)
        # The reference's inputs: those fed, and those with a default (an initializer
        # of the same name), which stay inputs: onnxruntime treats such a weight as
        # overridable, not constant, so it does not prepack it (from IR version 4; the
        # sums would change: a MatMul moved by 1e-5; review).
        overridable = ref.ir_version >= 4
        for i in ref.graph.input:
            fed = i.name in self.ref_inputs and i.name not in self.shared
            if fed or (overridable and i.name not in self.ref_inputs):
                copy = graph.input.add()
                copy.CopyFrom(i)
                copy.name = rename(i.name)
        # Node order: the reference's nodes up to a pair's reference producer, then the
        # candidate's node, then the comparison. onnxruntime's priority-based order keeps
        # this order among ready nodes, so each pair is reduced right after it is made.
        # (in a topological order, the file's where it is one, graph_facts' node_order:
        # the emission below and the gates assume a node comes after its producers;
        # onnxruntime does not need it, so a reference listed out of order ran, and a
        # gate closed a cycle; review)
        ref_nodes = [ref.graph.node[k] for k in graph_facts(self.reference).node_order()]
        ref_producer = {o: k for k, n in enumerate(ref_nodes) for o in n.output if o}
        next_ref = 0
        shared = SharedNodes()  # one constant per value, one reference side per tensor
        # surgeon's kernel where available: one node and one pass per pair
        fused = self.fused
        if fused:
            proto.opset_import.add(domain=fastops.DOMAIN, version=1)
        measured: dict[str, StatsOutputs] = {}
        measure = set(fold.taps) if fold is not None else set()

        def measure_tap(t: str) -> None:
            # the candidate's statistics (Fold), right after the tensor is made
            if t not in measure or t in measured:
                return
            ty = fold.types.get(t)
            elem = ty.tensor_type.elem_type if ty is not None and ty.HasField("tensor_type") else 0
            if elem in fastops.STATS_TYPES:
                measured[t] = add_fused_stats(graph, t, f"{self.stats_prefix}{len(measured)}")
            else:  # the value itself, measured with numpy
                measured[t] = StatsOutputs(value=t)

        builder = {pair: add_fused_comparison if fused else add_fast_comparison for pair in fast}
        builder.update(
            {pair: add_fused_comparison if fused else add_comparison for pair in general}
        )
        waiting: dict[str, list[tuple[str, str]]] = {}
        for c, r in builder:
            waiting.setdefault(c, []).append((c, r))
        outputs: dict[tuple[str, str], ComparisonOutputs] = {}

        # The reference's nodes read a compared tensor through a Reshape to the shape the
        # kernel gives (a view, no copy) that waits for the comparison, so for the
        # candidate's node making its pair. Without it the reference runs ahead where
        # the candidate's nodes are many: onnxruntime's priority order breaks ties by
        # node index, and the Casts it inserts around float16 nodes come last, so a
        # float16 candidate against its float32 reference held the reference's
        # activations (YOLOv8n-size: 565 MB peak, 240 MB gated). Only at optimisation
        # disabled, where no fusion sees the Reshape, and for float32 and float64
        # tensors: between two float16 nodes the Reshape would round what the next one
        # reads unrounded (see rounding_guard). A tensor compared more than once (by the
        # pair and by isolated units) waits for each: a chain of views.
        gates: dict[str, str] = {}
        gate_count = itertools.count()
        gate_reference = fused and options.optimization == "disabled"
        # Activations only: a constant behind a gate would no longer be one (a MatMul
        # would not prepack its weight and would sum in another order: found on PP-OCR
        # cls, whose last MatMul moved by 3e-7).
        activations = {i.name for i in ref.graph.input} - {t.name for t in ref.graph.initializer}
        for node in ref_nodes:
            if any(x in activations for x in node.input):
                activations.update(o for o in node.output if o)

        def emit_reference_until(k: int) -> None:
            nonlocal next_ref
            while next_ref <= k:
                node = ref_nodes[next_ref]
                copy = graph.node.add()
                copy.CopyFrom(node)
                copy.name = prefix + (node.name or f"node{next_ref}")
                copy.input[:] = [gates.get(x) or rename(x) for x in node.input]
                copy.output[:] = [rename(x) for x in node.output]
                next_ref += 1

        def compare(c: str, r: str, stats: bool = False) -> None:
            emit_reference_until(ref_producer.get(r, -1))
            build = builder[(c, r)]
            extra = self.fast_extra(c) if build is add_fast_comparison else {}
            if stats:  # the candidate's statistics from the same node (MeasurePair)
                extra = {"stats": True}
            outputs[(c, r)] = build(
                graph,
                c,
                elem[c],
                rename(r),
                ref_elem[r],
                tolerance,
                f"{self.compare_prefix}{len(outputs)}/",
                shared=shared,
                **extra,
            )
            if stats:
                out = outputs[(c, r)]
                measured[c] = StatsOutputs(packed=out.stats, shape=out.shape)
            if r not in gates:
                gate(r, outputs[(c, r)])

        def gate(r: str, compared: ComparisonOutputs) -> None:
            # the reference's nodes read r once this comparison has run (see gates)
            if (
                gate_reference
                and r in activations
                and r in ref_producer
                and ref_elem.get(r) in _GATED
            ):
                gated = f"{self.compare_prefix}gate/{next(gate_count)}"
                read = gates.get(r) or rename(r)
                fill_node(graph.node.add(), "Reshape", [read, compared.reference_shape], gated)
                gates[r] = gated

        plan = plan or _UnitPlan([], [], False)
        after: dict[int, list[int]] = {}
        for k, unit in enumerate(plan.units):
            after.setdefault(unit.position, []).append(k)
        plan.compared = [{} for _ in plan.units]
        plan.overflow = {}
        sources: dict[str, str] = {}  # fed candidate tensor -> its tensor in the merged graph
        iso = self.isolated_prefix

        def guarded(name: str, label: str) -> str:
            # Nodes between a float16 tensor and the unit that make onnxruntime round it
            # (see rounding_guard): its CPU runs float16 chains in float32 and would hand
            # the unit unrounded values where the isolated run feeds the stored tensor.
            chain = rounding_guard(fused)
            for j, (domain, op) in enumerate(chain):
                out = label if j == len(chain) - 1 else f"{label}/{j}"
                fill_node(graph.node.add(), op, [name], out).domain = domain
                name = out
            return label

        def source(t: str, ref_name: str | None, elem_type: int, to: int) -> str:
            if t in sources:
                return sources[t]
            name = rename(ref_name) if ref_name is not None else t
            label = f"{iso}in/{len(sources)}"
            if elem_type == onnx.TensorProto.FLOAT16:
                name = guarded(name, label + "/read")
            if to:
                cast = label + "/cast"
                fill_node(graph.node.add(), "Cast", [name], cast, to=to)
                if plan.count_overflow and to != onnx.TensorProto.DOUBLE:
                    # one kernel node for a float32 reference narrowed to float16
                    kernel = fused and (elem_type, to) == (
                        onnx.TensorProto.FLOAT,
                        onnx.TensorProto.FLOAT16,
                    )
                    count = add_fused_overflow_count if kernel else add_overflow_count
                    plan.overflow[t] = (count(graph, name, cast, label + "/overflow/"), kernel)
                name = guarded(cast, label) if to == onnx.TensorProto.FLOAT16 else cast
            sources[t] = name
            return name

        def run_twin(twin: Twin, label: str, local: Mapping[str, str]) -> str:
            # The reference's node on the stored inputs, each read through the very
            # tensor the unit reads (its float16 guard): onnxruntime then hands both
            # nodes the same values, rounded or not. Returns the compared output's name.
            read = {x: local[c] for c, x in twin.feeds.items()}
            copy = graph.node.add()
            copy.CopyFrom(twin.node)
            copy.name = label + (twin.node.name or "node")
            copy.input[:] = [read.get(x) or (rename(x) if x else x) for x in twin.node.input]
            copy.output[:] = [f"{label}{y}" if y else y for y in twin.node.output]
            return f"{label}{twin.output}"

        def run_unit(k: int) -> None:
            unit = plan.units[k]
            needed = [r for r, _, _ in unit.feeds.values() if r is not None]
            needed += [r for _, r in unit.outputs]
            emit_reference_until(max((ref_producer.get(r, -1) for r in needed), default=-1))
            inits = set(unit.initializers)
            local = {t: source(t, *unit.feeds[t]) for t in unit.feeds}

            def unit_name(t: str) -> str:
                if not t or t in inits:
                    return t
                return local.get(t) or f"{iso}{k}/{t}"

            for j, node in enumerate(unit.nodes):
                copy = graph.node.add()
                copy.CopyFrom(node)
                copy.name = f"{iso}{k}/{j}/{node.name}"
                copy.input[:] = [unit_name(x) for x in node.input]
                copy.output[:] = [unit_name(x) for x in node.output]
            for i, (o, r) in enumerate(unit.outputs):
                fast_nodes = o in plan.fast[k]
                build = add_fast_comparison if fast_nodes else add_comparison
                build = add_fused_comparison if fused else build
                extra = self.fast_extra(o) if fast_nodes else {}
                twin = unit.twins.get(o)
                plan.compared[k][o] = build(
                    graph,
                    unit_name(o),
                    elem[o],
                    rename(r) if twin is None else run_twin(twin, f"{iso}{k}/twin{i}/", local),
                    ref_elem[r],
                    tolerance,
                    f"{self.compare_prefix}{iso}{k}/{i}/",
                    severity=True,
                    shared=shared,
                    **extra,
                )
                # A unit's comparison is a leaf onnxruntime would leave to the end (the
                # Casts it inserts around a float16 unit come last in its order), holding
                # the unit's tensors and r: the reference's nodes wait for it as well.
                gate(r, plan.compared[k][o])

        produced = {o for n in src.graph.node for o in n.output if o}
        for c in [c for c in waiting if c not in produced]:  # graph inputs, initializers
            for pair in waiting.pop(c):
                compare(*pair)
        for t in measure - produced:  # graph inputs, initializers: their values
            measured[t] = StatsOutputs(value=t)
        for position, node in enumerate(src.graph.node):
            graph.node.append(node)
            for o in node.output:
                pairs_here = waiting.pop(o, [])
                # a tensor both measured and compared: one node reads it for both
                both = fused and o in measure and o not in measured and bool(pairs_here)
                if not both:
                    measure_tap(o)
                for k, pair in enumerate(pairs_here):
                    compare(*pair, stats=both and k == 0)
            for k in after.get(position, []):
                run_unit(k)
        emit_reference_until(len(ref_nodes) - 1)
        wanted = [n for out in outputs.values() for n in out.names()] + list(values)
        wanted += [
            n for compared in plan.compared for out in compared.values() for n in out.names()
        ]
        wanted += [name for name, _ in plan.overflow.values()]
        if fold is not None:
            fold.stats = measured
            # the candidate's original outputs (the tap check) and its statistics
            # (an output that is a graph input is the feed's value: not fetched)
            inputs = {i.name for i in src.graph.input}
            wanted += [o for o in fold.outputs if o not in inputs]
            wanted += [n for outs in measured.values() for n in outs]
            wanted = list(dict.fromkeys(wanted))
        have_output = {o.name for o in graph.output}
        for name in wanted:
            if name not in have_output:
                graph.output.add().name = name
        files = list(self.model.external_data_files)
        stamps = dict(self.model.external_stamps)
        if ref is self.reference.proto:  # its external tensors are in the same folder
            files += [f for f in self.reference.external_data_files if f not in files]
            stamps.update(self.reference.external_stamps)
        merged = Model(proto, self.model.path, files)
        merged.external_stamps = stamps
        run_feeds = dict(feeds)
        for name, value in reference_feeds.items():
            if name not in self.shared:
                run_feeds[rename(name)] = value
        # Priority order; the arena only where the kernels measure (see orchestration).
        merged_options = dataclasses.replace(
            options,
            execution_order="priority",
            memory_arena=fused and fastops.measuring_arena(self.model, self.reference),
        )
        session = Session(merged, extra_outputs=wanted, options=merged_options, initializers=lent)
        if fold is not None:
            fold.before_run()
        got = session.run(run_feeds, wanted)
        return outputs, got


__all__ = [
    "InGraphResult",
    "IsolatedUnit",
    "IsolationPlan",
    "compare_in_graph",
    "merge_refusal",
    "plan_isolation",
]
