"""What is in a model: the facts ``surgeon inspect`` shows, as a plain dict."""

from __future__ import annotations

import fnmatch
import math
from collections import Counter

import onnx

from surgeon.edits.tap_bodies import body_tensors, body_types
from surgeon.graph_facts import inferred_value_infos, outer_reads
from surgeon.model import (
    PROVENANCE_KEY,
    Model,
    dtype_name,
    iter_graphs,
    iter_tensors,
    op_histogram,
    read_provenance,
    tensor_nbytes,
    value_info_to_tensor_info,
)

INSPECT_SCHEMA = "surgeon.inspect/1"
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"}


def _origin_text(model: Model, node: str) -> str | None:
    from surgeon.origin import node_origin

    try:
        origin = node_origin(model, node) if node else None
    except Exception:  # noqa: BLE001 - exporter metadata is untrusted text; inspect never fails on it
        return None
    return origin.describe() if origin is not None else None


def _pytorch_origins(model: Model) -> dict | None:
    """What the exporter's metadata says about PyTorch modules (None when nothing).

    Subgraph nodes are named with their module too, so a person can map If/Loop nodes
    back to the code that made them.
    """
    from surgeon.origin import origins

    try:
        found = origins(model)
    except Exception:  # noqa: BLE001 - exporter metadata is best-effort; never fail inspect on it
        return None
    if not found:
        return None
    exporters = sorted({o.exporter for o in found.values()})
    modules = sorted({o.module for o in found.values() if o.module})
    return {
        "exporter": exporters[0] if len(exporters) == 1 else exporters,
        "nodes_with_origin": len(found),
        "modules": len(modules),
        "examples": {name: o.describe() for name, o in list(found.items())[:5]},
    }


def describe(model: Model) -> dict:
    """Everything ``surgeon inspect`` reports, with stable keys (schema ``surgeon.inspect/1``)."""
    proto = model.proto
    params = 0
    param_bytes = 0
    by_dtype: Counter = Counter()
    for t in iter_tensors(proto):
        count = math.prod(t.dims)  # exact; np.prod costs ~30 us per tensor
        params += count
        param_bytes += tensor_nbytes(t)
        # numpy names ("float32"), the same spelling as the inputs' and outputs' dtypes.
        by_dtype[dtype_name(t.data_type) or "undefined"] += count
    subgraph_nodes = []
    for n in proto.graph.node:
        graphs = [(a.name, a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
        graphs += [
            (f"{a.name}[{i}]", g)
            for a in n.attribute
            if a.type == onnx.AttributeProto.GRAPHS
            for i, g in enumerate(a.graphs)
        ]
        if graphs:
            subgraph_nodes.append(
                {
                    "node": n.name,
                    "op": n.op_type,
                    "origin": _origin_text(model, n.name),
                    "subgraphs": [
                        {
                            "attribute": name,
                            "nodes": sum(len(x.node) for x in iter_graphs(g)),
                            "outer_scope_reads": outer_reads(g),
                        }
                        for name, g in graphs
                    ],
                }
            )
    # Calls of the model's own local functions are not custom operators: onnxruntime
    # inlines them, no --custom-op-library needed.
    local_functions = {(f.domain, f.name) for f in proto.functions}
    custom: Counter = Counter()
    for g in iter_graphs(proto.graph):
        for n in g.node:
            if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local_functions:
                custom[n.domain] += 1
    metadata = {p.key: p.value for p in proto.metadata_props if p.key != PROVENANCE_KEY}
    history, history_problem = read_provenance(proto)
    if history_problem is not None:
        # Shown as metadata (its raw text cut short), so a person (and --json, without a
        # new key) sees it is there and why it is not listed as history.
        raw = next(p.value for p in proto.metadata_props if p.key == PROVENANCE_KEY)
        shown = raw if len(raw) <= 200 else raw[:200] + "…"
        metadata[PROVENANCE_KEY] = f"(malformed: {history_problem}) {shown}"
    initializer_names = {t.name for t in proto.graph.initializer}
    all_nodes = sum(len(g.node) for g in iter_graphs(proto.graph))
    return {
        "schema": INSPECT_SCHEMA,
        "file": str(model.path) if model.path else None,
        "ir_version": int(proto.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        "producer": {"name": proto.producer_name, "version": proto.producer_version},
        "graph_name": proto.graph.name,
        "inputs": [i.to_dict() for i in model.inputs],
        "outputs": [o.to_dict() for o in model.outputs],
        "initializers_as_inputs": [
            v.name for v in proto.graph.input if v.name in initializer_names
        ],
        "nodes": len(proto.graph.node),
        "nodes_including_subgraphs": all_nodes,
        "op_types": dict(sorted(op_histogram(proto).items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": {"count": params, "bytes": param_bytes, "by_dtype": dict(by_dtype)},
        "custom_domains": dict(custom),
        "external_data": list(model.external_data_files),
        "subgraph_nodes": subgraph_nodes,
        "functions": [f"{f.domain}::{f.name}" if f.domain else f.name for f in proto.functions],
        "metadata": metadata,
        "history": history,
        "pytorch": _pytorch_origins(model),
        "declared_value_info": len(proto.graph.value_info),
    }


def _known_types(model: Model) -> dict[str, dict]:
    """dtype and shape of every main-graph tensor ONNX shape inference can tell (plus the
    declared inputs, outputs and value_info); best-effort, never fails."""
    proto = model.proto
    # Inference gives up on some real models: the declared types remain.
    infos = [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
    infos += inferred_value_infos(model)
    known: dict[str, dict] = {}
    for vi in infos:
        info = value_info_to_tensor_info(vi)
        if info.dtype is not None or info.shape is not None:
            known.setdefault(vi.name, {"dtype": info.dtype, "shape": info.shape})
    return known


def list_names(model: Model, pattern: str = "*") -> dict:
    """The node and tensor names of the main graph that ``pattern`` (a glob) matches, and
    the tensors inside If/Loop/Scan bodies under their qualified names
    (``If_0/then_branch/x``, see :mod:`surgeon.edits.tap_bodies`).

    These are the names the commands accept (``debug --tap``, ``extract --inputs/--outputs``,
    ``rename --map``): tensors are the graph inputs and every node output (weights are not
    listed; ``inspect`` counts them under parameters), each with the node that produces it,
    its op, and its dtype/shape where ONNX shape inference can tell; nodes carry their op,
    inputs and outputs. Matching is case-sensitive, the same as in the commands.

    Returns:
        ``{"pattern", "tensors": [{name, node, op, dtype, shape}], "nodes": [{name, op,
        inputs, outputs}]}`` in graph order.
    """
    proto = model.proto
    types = _known_types(model)
    initializers = {t.name for t in proto.graph.initializer}
    tensors = []
    seen: set[str] = set()

    def add(name: str, node, op) -> None:
        if name in seen or not fnmatch.fnmatchcase(name, pattern):
            return
        seen.add(name)
        known = types.get(name, {})
        shape = known.get("shape")
        tensors.append(
            {
                "name": name,
                "node": node,
                "op": op,
                "dtype": known.get("dtype"),
                "shape": list(shape) if shape is not None else None,
            }
        )

    for v in proto.graph.input:
        if v.name not in initializers:
            add(v.name, None, None)
    # tensors inside If/Loop/Scan bodies, under the names --tap takes, before their holder
    inside: dict[int, list] = {}
    for t in body_tensors(model).values():
        if fnmatch.fnmatchcase(t.name, pattern):
            inside.setdefault(t.holder, []).append(t)
    for i, n in enumerate(proto.graph.node):
        found = inside.get(i, [])
        for t, typed in _typed_body_tensors(model, found):
            types[t.name] = typed
            add(t.name, t.node, t.op)
        for o in n.output:
            if o:
                add(o, n.name, n.op_type)
    nodes = [
        {
            "name": n.name,
            "op": n.op_type,
            "inputs": list(n.input),
            "outputs": list(n.output),
        }
        for n in proto.graph.node
        if n.name and fnmatch.fnmatchcase(n.name, pattern)
    ]
    return {"pattern": pattern, "tensors": tensors, "nodes": nodes}


def _typed_body_tensors(model: Model, found: list) -> list[tuple]:
    """``(body tensor, {dtype, shape})`` for the body tensors in ``found``."""
    if not found:
        return []
    known = body_types(model, found)
    out = []
    for t in found:
        info = (
            value_info_to_tensor_info(onnx.helper.make_value_info(t.name, known[t.name]))
            if t.name in known
            else None
        )
        out.append((t, {"dtype": info.dtype, "shape": info.shape} if info else {}))
    return out


__all__ = ["describe", "list_names", "value_info_to_tensor_info"]
