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

from surgeon.compare import TensorDiff, Tolerance, as_reference_dtype, cast_note
from surgeon.compare.in_graph import (
    ComparisonOutputs,
    add_comparison,
    add_fast_comparison,
    diff_from_outputs,
    in_graph_comparable,
    needs_general,
)
from surgeon.model import Model
from surgeon.runner import RunOptions, run

_PREFIX = "surgeon.ref/"
_COMPARE_PREFIX = "surgeon.cmp/"
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
    for c, r in dict.fromkeys(pairs):
        if in_graph_comparable(elem.get(c, 0), ref_elem.get(r, 0), tolerance):
            same = _static_shape(types[c]) == _static_shape(reference_types[r]) is not None
            (fast if same and _static_shape(types[c]) else general).append((c, r))
        else:
            fetched.append((c, r))
    merge = _Merge(model, reference, shared_inputs)
    result = InGraphResult(in_graph=len(fast) + len(general), fetched=len(fetched))
    keep = [merge.rename(r) for r in keep_reference]
    values = dict.fromkeys([c for c, _ in fetched] + [merge.rename(r) for _, r in fetched] + keep)
    outputs, got = merge.run(
        fast, general, list(values), elem, ref_elem, feeds, reference_feeds, tolerance, options
    )
    result.runs = 1
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
    del got
    if again:
        outputs, got = merge.run(
            [], again, [], elem, ref_elem, feeds, reference_feeds, tolerance, options
        )
        result.runs += 1
        for pair in again:
            diffs[pair] = diff_from_outputs(
                outputs[pair], got, tolerance, name=pair[0], reference=pair[1]
            )
    for (c, r), diff in diffs.items():
        result.diffs[(c, r)] = diff
        if elem[c] != ref_elem[r]:
            result.cast_notes[(c, r)] = cast_note(diff.dtype, _DTYPE_NAMES[elem[c]])
    return result


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
        ref = reference.proto
        inits = {t.name for t in ref.graph.initializer}
        self.ref_inputs = {i.name for i in ref.graph.input} - inits

    def rename(self, t: str) -> str:
        if not t:
            return t
        if t in self.ref_inputs and t in self.shared:
            return self.shared[t]
        return self.prefix + t

    def run(
        self, fast, general, values, elem, ref_elem, feeds, reference_feeds, tolerance, options
    ):
        """One run comparing ``fast`` and ``general`` pairs and fetching ``values``:
        (pair -> its ComparisonOutputs, the fetched outputs)."""
        src, ref, rename, prefix = self.model.proto, self.reference.proto, self.rename, self.prefix
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
            if i.name in self.ref_inputs and i.name not in self.shared:
                copy = graph.input.add()
                copy.CopyFrom(i)
                copy.name = rename(i.name)
        # Node order: the reference's nodes up to a pair's reference producer, then the
        # candidate's node, then the comparison. onnxruntime's priority-based order keeps
        # this order among ready nodes, so each pair is reduced right after it is made.
        ref_nodes = list(ref.graph.node)
        ref_producer = {o: k for k, n in enumerate(ref_nodes) for o in n.output if o}
        next_ref = 0
        builder = {pair: add_fast_comparison for pair in fast}
        builder.update({pair: add_comparison for pair in general})
        waiting: dict[str, list[tuple[str, str]]] = {}
        for c, r in builder:
            waiting.setdefault(c, []).append((c, r))
        outputs: dict[tuple[str, str], ComparisonOutputs] = {}

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
            emit_reference_until(ref_producer.get(r, -1))
            outputs[(c, r)] = builder[(c, r)](
                graph,
                c,
                elem[c],
                rename(r),
                ref_elem[r],
                tolerance,
                f"{self.compare_prefix}{len(outputs)}/",
            )

        produced = {o for n in src.graph.node for o in n.output if o}
        for c in [c for c in waiting if c not in produced]:  # graph inputs, initializers
            for pair in waiting.pop(c):
                compare(*pair)
        for node in src.graph.node:
            graph.node.append(node)
            for o in node.output:
                for pair in waiting.pop(o, []):
                    compare(*pair)
        emit_reference_until(len(ref_nodes) - 1)
        wanted = [n for out in outputs.values() for n in out.names()] + list(values)
        for name in wanted:
            graph.output.add().name = name
        merged = Model(proto, self.model.path, self.model.external_data_files)
        run_feeds = dict(feeds)
        for name, value in reference_feeds.items():
            if name not in self.shared:
                run_feeds[rename(name)] = value
        # Priority order, no arena: as the statistics mode runs (see orchestration).
        merged_options = dataclasses.replace(
            options, execution_order="priority", memory_arena=False
        )
        return outputs, run(merged, run_feeds, outputs=wanted, options=merged_options)


__all__ = ["InGraphResult", "compare_in_graph", "merge_refusal"]
