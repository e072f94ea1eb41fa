"""Layer-wise comparison inside onnxruntime: ONE model holding the candidate graph, the
reference graph (its names prefixed, the graph inputs both take fed once) and, after
each paired tensor's producers, the comparison nodes of :mod:`surgeon.compare.in_graph`.

Why: fetching every activation of both models kept them all alive at once (4.6x to
7.1x the memory of plain runs). Here each pair is reduced where it is made and
onnxruntime frees it as a plain run would; only three small outputs per pair leave the
run, plus the values of the pairs the nodes cannot compare (other dtypes, ``exact``),
which are compared with compare_arrays as before (never dropped), and the reference
values the isolated-error stage is given.

:func:`merge_refusal` says when the two graphs cannot share a model (opset versions that
differ, reference subgraphs or local functions, sparse weights): debug then keeps the
values path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from surgeon.compare import TensorDiff, Tolerance
from surgeon.compare.in_graph import (
    ComparisonOutputs,
    add_comparison,
    diff_from_outputs,
    in_graph_comparable,
)
from surgeon.model import Model
from surgeon.runner import RunOptions, run

_PREFIX = "surgeon.ref/"
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


def _fresh_prefix(names: Sequence[str]) -> str:
    prefix = _PREFIX
    while any(n.startswith(prefix) for n in names):
        prefix = "_" + prefix
    return prefix


def compare_in_graph(
    model: Model,
    reference: Model,
    pairs: Sequence[tuple[str, str]],
    types: Mapping[str, int],
    reference_types: Mapping[str, int],
    feeds: Mapping[str, np.ndarray],
    reference_feeds: Mapping[str, np.ndarray],
    shared_inputs: Mapping[str, str],
    tolerance: Tolerance,
    options: RunOptions,
    *,
    keep_reference: Sequence[str] = (),
) -> InGraphResult:
    """Run ``model`` and ``reference`` as one model and compare each (candidate tensor,
    reference tensor) of ``pairs``.

    Args:
        types: Candidate tensor -> ONNX element type, where known.
        reference_types: The same for reference tensors.
        feeds: The model's feeds.
        reference_feeds: The reference's feeds by its input names.
        shared_inputs: Reference input -> model input fed the very same value (fed once).
        keep_reference: Reference tensors whose values are returned as well.

    Raises:
        RuntimeFailure: onnxruntime cannot run the merged model.
    """
    from surgeon.compare import compare_arrays

    src, ref = model.proto, reference.proto
    taken = [*model.tensor_names(), *(n.name for n in src.graph.node)]
    prefix = _fresh_prefix(taken)
    ref_inits = {t.name for t in ref.graph.initializer}
    ref_inputs = {i.name for i in ref.graph.input} - ref_inits

    def rename(t: str) -> str:
        if not t:
            return t
        if t in ref_inputs and t in shared_inputs:
            return shared_inputs[t]
        return prefix + t

    proto = onnx.ModelProto()
    proto.CopyFrom(src)
    graph = proto.graph
    del graph.node[:]
    del graph.output[:]
    del graph.value_info[:]
    proto.ir_version = max(src.ir_version, ref.ir_version)
    have = {o.domain or "" for o in proto.opset_import}
    proto.opset_import.extend(o for o in ref.opset_import if (o.domain or "") not in have)
    for t in ref.graph.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(t)
        copy.name = rename(t.name)
    for i in ref.graph.input:
        if i.name in ref_inputs and i.name not in shared_inputs:
            copy = graph.input.add()
            copy.CopyFrom(i)
            copy.name = rename(i.name)

    # Which pairs the nodes compare, and which leave onnxruntime as values.
    in_graph: list[tuple[str, str]] = []
    fetched: list[tuple[str, str]] = []
    for c, r in dict.fromkeys(pairs):
        if c in types and r in reference_types:
            if in_graph_comparable(types[c], reference_types[r], tolerance):
                in_graph.append((c, r))
                continue
        fetched.append((c, r))

    # Node order: the reference's nodes up to a pair's reference producer, then the
    # candidate's node, then the comparison. onnxruntime's priority-based order keeps
    # this order among ready nodes, so each pair is reduced right after it is made.
    ref_nodes = list(ref.graph.node)
    ref_producer = {o: k for k, n in enumerate(ref_nodes) for o in n.output if o}
    next_ref = 0
    waiting: dict[str, list[tuple[str, str]]] = {}
    for c, r in in_graph:
        waiting.setdefault(c, []).append((c, r))
    outputs: dict[tuple[str, str], ComparisonOutputs] = {}
    count = 0

    def emit_reference_until(k: int) -> None:
        nonlocal next_ref
        while next_ref <= k:
            node = ref_nodes[next_ref]
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = prefix + (node.name or f"node{next_ref}")
            copy.input[:] = [rename(x) for x in node.input]
            copy.output[:] = [rename(x) for x in node.output]
            next_ref += 1

    def compare(c: str, r: str) -> None:
        nonlocal count
        emit_reference_until(ref_producer.get(r, -1))
        count += 1
        outputs[(c, r)] = add_comparison(
            graph, c, types[c], rename(r), reference_types[r], tolerance, f"{prefix}cmp{count}/"
        )

    produced = {o for n in src.graph.node for o in n.output if o}
    for c in [c for c in waiting if c not in produced]:  # graph inputs, initializers
        for c_, r in waiting.pop(c):
            compare(c_, r)
    for node in src.graph.node:
        graph.node.append(node)
        for o in node.output:
            for c, r in waiting.pop(o, []):
                compare(c, r)
    emit_reference_until(len(ref_nodes) - 1)

    wanted = [n for out in outputs.values() for n in out.names()]
    values_wanted = dict.fromkeys(
        [c for c, _ in fetched]
        + [rename(r) for _, r in fetched]
        + [rename(r) for r in keep_reference]
    )
    for name in [*wanted, *values_wanted]:
        graph.output.add().name = name
    merged = Model(proto, model.path, model.external_data_files)
    run_feeds = dict(feeds)
    for name, value in reference_feeds.items():
        if name not in shared_inputs:
            run_feeds[rename(name)] = value
    # Priority order, no arena: as the statistics mode runs (surgeon.debugging.orchestration).
    merged_options = dataclasses.replace(options, execution_order="priority", memory_arena=False)
    got = run(merged, run_feeds, outputs=[*wanted, *values_wanted], options=merged_options)

    result = InGraphResult(in_graph=len(outputs), fetched=len(fetched))
    for (c, r), out in outputs.items():
        result.diffs[(c, r)] = diff_from_outputs(out, got, tolerance, name=c, reference=r)
        if types[c] != reference_types[r]:
            result.cast_notes[(c, r)] = _cast_note(out.dtype, _DTYPE_NAMES[types[c]])
    for c, r in fetched:
        actual, expected = got[c], got[rename(r)]
        result.diffs[(c, r)], note = _compare_values(
            compare_arrays, actual, expected, tolerance, c, r
        )
        if note:
            result.cast_notes[(c, r)] = note
    for r in keep_reference:
        result.reference_values[r] = got[rename(r)]
    return result


def _cast_note(reference_dtype: str, dtype: str) -> str:
    return f"compared as {reference_dtype} (model has {dtype})"


def _compare_values(compare_arrays, actual, expected, tolerance, name, reference):
    """compare_arrays as the values path of the layer comparison does it (a numeric
    candidate of another dtype is cast to the reference's first), and the note on that
    cast ("" when none)."""
    note = ""
    if (
        isinstance(actual, np.ndarray)
        and isinstance(expected, np.ndarray)
        and actual.dtype != expected.dtype
        and actual.dtype.kind in "fiub"
        and expected.dtype.kind in "fiub"
    ):
        note = _cast_note(expected.dtype.name, actual.dtype.name)
        with np.errstate(over="ignore", invalid="ignore"):
            actual = actual.astype(expected.dtype)
    return compare_arrays(actual, expected, tolerance, name=name, reference=reference), note


__all__ = ["InGraphResult", "compare_in_graph", "merge_refusal"]
