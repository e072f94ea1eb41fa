"""Merge two models: outputs of the first feed inputs of the second.

``merge(first, second)`` joins any two graphs (a detector and its NMS, a preprocessing
graph and a model, ...) and proves the result: the merged model must give bit-identical
outputs to running ``first``, then ``second`` on the first's outputs.

How it decides, in order:

* **Connections.** An explicit ``io_map`` of ``(first_output, second_input)`` pairs; or,
  without one, the second's inputs that have the name of a first output; or the single
  output of the first into the single input of the second when their dtype and rank
  agree. Otherwise it stops and lists the candidates. Every connection is checked (dtype,
  rank, static dims) before anything is built, and every problem is reported at once.
* **Names.** Tensor and node names stay as they are unless both graphs use them. A
  clash is resolved by prefixing the second graph's name (``prefix2``, default the
  second model's file stem and ``/``), except that the merged model's output names are
  kept: when a second-graph output clashes with a tensor that is internal to the first
  graph, that internal tensor is prefixed (``prefix1``) instead. An unconnected input
  of the second with the name, dtype and rank of an input of the first is shared.
* **Opsets.** When the default-domain opsets differ, the model with the lower one is
  upgraded with onnx's version converter; when that fails (no adapter, or an op the
  newer opset deprecates) the merge stops with the reason.
* **Outputs.** The merged model's outputs are the second's; the first's outputs are
  kept only on request (``keep_outputs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from surgeon.compare import Tolerance
from surgeon.edits import Edited
from surgeon.edits.connections import compatibility_problems, describe_tensor, plan_connections
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.opsets import reconcile_opsets
from surgeon.errors import SurgeonError, UsageError, close_matches
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import PROVENANCE_KEY, Model, copy_model_metadata, iter_graphs
from surgeon.runner import RunOptions
from surgeon.weights import share_folder


# ---------------------------------------------------------------------- names
def _names(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Every tensor name and every node name in ``graph`` and its subgraphs."""
    tensors: set[str] = set()
    nodes: set[str] = set()
    for g in iter_graphs(graph):
        tensors.update(v.name for v in g.input)
        tensors.update(v.name for v in g.output)
        tensors.update(v.name for v in g.value_info)
        tensors.update(t.name for t in g.initializer)
        tensors.update(s.values.name for s in g.sparse_initializer)
        for n in g.node:
            tensors.update(x for x in n.input if x)
            tensors.update(x for x in n.output if x)
            if n.name:
                nodes.add(n.name)
    return tensors, nodes


def _rename(graph: onnx.GraphProto, tensors: Mapping[str, str], nodes: Mapping[str, str]) -> None:
    """Rename tensors and nodes everywhere in ``graph`` and its subgraphs, in place."""
    if not tensors and not nodes:
        return
    for g in iter_graphs(graph):
        for v in list(g.input) + list(g.output) + list(g.value_info):
            v.name = tensors.get(v.name, v.name)
        for t in g.initializer:
            t.name = tensors.get(t.name, t.name)
        for s in g.sparse_initializer:
            s.values.name = tensors.get(s.values.name, s.values.name)
        for n in g.node:
            n.input[:] = [tensors.get(x, x) if x else x for x in n.input]
            n.output[:] = [tensors.get(x, x) if x else x for x in n.output]
            if n.name:
                n.name = nodes.get(n.name, n.name)


def _prefix_for(model: Model, fallback: str) -> str:
    stem = Path(model.name).stem if model.path is not None else model.name
    return (stem or fallback) + "/"


class _Namer:
    """Hands out names that are used nowhere yet."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)

    def __call__(self, prefix: str, name: str) -> str:
        candidate, i = prefix + name, 1
        while candidate in self.taken:
            candidate, i = f"{prefix}{name}_{i}", i + 1
        self.taken.add(candidate)
        return candidate


# ---------------------------------------------------------------------- merge
def merge(
    first: Model,
    second: Model,
    io_map: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    prefix1: str | None = None,
    prefix2: str | None = None,
    keep_outputs: bool | Iterable[str] = False,
    verify: bool = True,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance = Tolerance(),
) -> Edited:
    """Connect outputs of ``first`` to inputs of ``second`` in one model, and prove it.

    Args:
        first: The model that runs first (e.g. a detector, a preprocessing graph).
        second: The model fed by it (e.g. an NMS graph from :func:`surgeon.build_nms`).
        io_map: ``(first_output, second_input)`` pairs or a mapping output -> input.
            Default: equal names, else the single output into the single input.
        prefix1: Prefix for first-graph internal tensors whose names a second-graph output
            takes (default: the first model's file stem and ``/``).
        prefix2: Prefix for second-graph names that clash with the first's (default: the
            second model's file stem and ``/``, e.g. ``nms/``).
        keep_outputs: Also keep the first's outputs: True keeps every unconnected one,
            a list keeps those named (connected or not). Default: drop them.
        verify: Run the merged model against ``first`` then ``second`` run in sequence
            with onnxruntime; bit-identical outputs are required unless ``tolerance``
            relaxes it.
        feed_options: Seed, shapes and ``.npz`` of the verification's inputs (they are
            the merged model's inputs).
        options: onnxruntime settings for the verification.

    Returns:
        Edited with ``edit="merge"``; ``details`` holds the connections, renames, opset
        reconciliation, the merged I/O and ``output_names`` (second output -> merged name).

    Raises:
        SurgeonError: Unknown names, incompatible connections (all listed at once), an
            opset gap the converter cannot bridge, or no way to infer the connections.
    """
    pairs, how = plan_connections(first, second, io_map)
    keep = _plan_outputs(first, second, pairs, keep_outputs)
    p1_source, p2_source, opsets, opset_info = reconcile_opsets(first, second)
    naming = plan_names(first, second, p1_source, p2_source, pairs, keep, prefix1, prefix2)
    params = {
        "first": first.name,
        "second": second.name,
        "io_map": [list(p) for p in pairs],
        "prefix1": naming["prefix1"],
        "prefix2": naming["prefix2"],
        "keep_outputs": keep,
    }
    outputs1 = {o.name: o for o in first.outputs}
    inputs2 = {i.name: i for i in second.inputs}

    summary = {
        "how": how,
        "connections": [
            {
                "output": out,
                "input": inp,
                "output_type": describe_tensor(outputs1[out]),
                "input_type": describe_tensor(inputs2[inp]),
            }
            for out, inp in pairs
        ],
        "shared_inputs": naming["shared"],
        "renamed": {
            "first": naming["first"],
            "second": naming["second"],
            "second_nodes": naming["second_nodes"],
        },
        "opset": opset_info,
        "kept_outputs": keep,
        "dropped_outputs": [o for o in first.output_names if o not in keep],
        "output_names": naming["output_names"],
    }
    return apply_edit(
        first,
        "merge",
        params,
        # A new Model (no path): the merged model is neither of its halves.
        lambda _: build_merged(first, second, p1_source, p2_source, opsets, naming, keep),
        lambda merged: merge_correspondence(merged, first, second, summary, feed_options),
        check=Check(verify, None, feed_options, options, tolerance),
        copy=False,  # both halves are copied inside the change
        details=lambda merged, report: dict(
            summary,
            inputs=[i.to_dict() for i in merged.inputs],
            outputs=[o.to_dict() for o in merged.outputs],
        ),
        finish=lambda merged, report, values: _note_unexercised(second, summary, report, values),
    )


def _plan_outputs(
    first: Model,
    second: Model,
    pairs: list[tuple[str, str]],
    keep_outputs: bool | Iterable[str],
) -> list[str]:
    """The first's outputs the merged model keeps; every connection problem and unknown
    kept name is raised at once."""
    outputs1 = {o.name: o for o in first.outputs}
    inputs2 = {i.name: i for i in second.inputs}
    problems = []
    for out, inp in pairs:
        problems += compatibility_problems(outputs1[out], inputs2[inp], first.name, second.name)
    connected_outputs = [o for o, _ in pairs]
    if keep_outputs is True:
        keep = [o for o in first.output_names if o not in connected_outputs]
    elif not keep_outputs:
        keep = []
    else:
        keep = list(
            dict.fromkeys([keep_outputs] if isinstance(keep_outputs, str) else keep_outputs)
        )
        for name in keep:
            if name not in outputs1:
                near = close_matches(name, outputs1)
                problems.append(
                    f"cannot keep `{name}`: it is not an output of {first.name}"
                    + ("; did you mean " + ", ".join(f"`{m}`" for m in near) + "?" if near else "")
                )
    if problems:
        raise SurgeonError(
            f"cannot merge {first.name} into {second.name}: "
            f"{len(problems)} problem{'s' if len(problems) > 1 else ''}",
            problems=problems,
            hint="Check the connections with `surgeon inspect` on both models, or choose others with io_map (--map OUTPUT=INPUT on the command line).",
        )
    return keep


def plan_names(
    first: Model,
    second: Model,
    p1: onnx.ModelProto,
    p2: onnx.ModelProto,
    pairs: list[tuple[str, str]],
    keep: list[str],
    prefix1: str | None,
    prefix2: str | None,
) -> dict:
    """Which names of each graph are renamed so that the two fit in one graph.

    Returns:
        A dict: ``prefix1``, ``prefix2`` (resolved), ``first``/``second`` (tensor
        renames), ``second_nodes``, ``shared`` (inputs both read), ``map2`` (every rename
        of the second graph, connections included) and ``output_names``.
    """
    names1, nodes1 = _names(p1.graph)
    names2, nodes2 = _names(p2.graph)
    first_inputs = {i.name: i for i in first.inputs}
    inputs2 = {i.name: i for i in second.inputs}
    connected = {inp: out for out, inp in pairs}
    shared = [
        i
        for i in second.input_names
        if i not in connected
        and i in first_inputs
        and not compatibility_problems(first_inputs[i], inputs2[i], first.name, second.name)
    ]
    outputs2 = {o.name for o in p2.graph.output}
    namer = _Namer(names1 | names2)
    default1, default2 = _prefix_for(first, "first"), _prefix_for(second, "second")
    if default1 == default2:
        default2 = default2[:-1] + "_2/"
    prefix1 = default1 if prefix1 is None else prefix1
    prefix2 = default2 if prefix2 is None else prefix2
    rename1: dict[str, str] = {}
    rename2: dict[str, str] = {}
    for name in sorted(names2 & names1):
        if name in connected or name in shared:
            continue  # becomes the first's tensor of that name on purpose
        if name in outputs2 and name not in first_inputs and name not in keep:
            rename1[name] = namer(prefix1, name)  # keep the merged output's name
        else:
            rename2[name] = namer(prefix2, name)
    if (rename1 and not prefix1) or (rename2 and not prefix2):
        raise UsageError(
            "an empty prefix cannot resolve the name clashes between "
            f"{first.name} and {second.name}: "
            + ", ".join(f"`{n}`" for n in list(rename1) + list(rename2)),
            hint="Give a prefix such as prefix2='nms/' (--prefix2 nms/ on the command line).",
        )
    node_namer = _Namer(nodes1 | nodes2)
    node_rename2 = {n: node_namer(prefix2, n) for n in sorted(nodes1 & nodes2)}
    map2 = dict(rename2)
    map2.update({inp: rename1.get(out, out) for inp, out in connected.items()})
    return {
        "prefix1": prefix1,
        "prefix2": prefix2,
        "first": rename1,
        "second": rename2,
        "second_nodes": node_rename2,
        "shared": shared,
        "connected": connected,
        "map2": map2,
        "output_names": {o: map2.get(o, o) for o in second.output_names},
    }


def build_merged(
    first: Model,
    second: Model,
    p1_source: onnx.ModelProto,
    p2_source: onnx.ModelProto,
    opsets: list,
    naming: Mapping,
    keep: list[str],
) -> Model:
    """The merged model: copies of both graphs renamed per ``naming``, the first's nodes
    then the second's, the second's outputs (and the first's in ``keep``)."""
    p1, p2 = onnx.ModelProto(), onnx.ModelProto()
    p1.CopyFrom(p1_source)
    p2.CopyFrom(p2_source)
    # One data folder for the merged model (weights from a second folder come in).
    holder = share_folder([(first, p1), (second, p2)])
    map2 = naming["map2"]
    _rename(p1.graph, naming["first"], {})
    _rename(p2.graph, map2, naming["second_nodes"])

    g1, g2 = p1.graph, p2.graph
    graph = onnx.GraphProto()
    graph.name = f"{g1.name or 'first'}+{g2.name or 'second'}"
    graph.doc_string = g1.doc_string
    graph.input.extend(g1.input)
    dropped_inputs = {map2.get(i, i) for i in list(naming["connected"]) + naming["shared"]}
    graph.input.extend(v for v in g2.input if v.name not in dropped_inputs)
    graph.initializer.extend(g1.initializer)
    graph.initializer.extend(g2.initializer)
    graph.sparse_initializer.extend(g1.sparse_initializer)
    graph.sparse_initializer.extend(g2.sparse_initializer)
    graph.node.extend(g1.node)
    graph.node.extend(g2.node)
    io_names = {v.name for v in graph.input}
    seen_vi: set[str] = set()
    for v in list(g1.value_info) + list(g2.value_info):
        if v.name not in seen_vi and v.name not in io_names:
            seen_vi.add(v.name)
            graph.value_info.append(v)
    out_seen: set[str] = set()
    for v in g1.output:
        if v.name in keep and v.name not in out_seen:
            graph.output.append(v)
            out_seen.add(v.name)
    for v in g2.output:
        if v.name not in out_seen:
            graph.output.append(v)
            out_seen.add(v.name)

    proto = helper.make_model(graph, opset_imports=opsets)
    copy_model_metadata(first.proto, proto)
    proto.ir_version = max(
        p1.ir_version, p2.ir_version, helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    )
    functions = {(f.domain, f.name): f for f in p1.functions}
    for f in p2.functions:
        key = (f.domain, f.name)
        if key in functions and functions[key].SerializeToString() != f.SerializeToString():
            raise SurgeonError(
                f"cannot merge: both models define the local function {f.domain}::{f.name} differently"
            )
        functions.setdefault(key, f)
    del proto.functions[:]
    proto.functions.extend(functions.values())

    from surgeon.validation import check_structure

    structure = check_structure(proto)
    if structure:  # a bug in the merge, not in the user's models
        raise RuntimeError("the merged graph is malformed: " + "; ".join(structure[:5]))
    # The merged model says how both halves were made (e.g. the NMS parameters); the
    # contract appends the merge itself.
    history = first.provenance + second.provenance
    props = [p for p in proto.metadata_props if p.key != PROVENANCE_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    if history:
        proto.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(history))
    return holder.derive(proto)


def merge_correspondence(
    merged: Model,
    first: Model,
    second: Model,
    details: Mapping,
    feed_options: FeedOptions = FeedOptions(),
) -> Correspondence:
    """What a merge must reproduce: ``first`` then ``second`` run in sequence, bit for bit.

    The feeds are made for the merged model's inputs (so ``--shape`` and ``.npz`` name
    them); the reference chain feeds the second model through the same connections.
    """
    from surgeon.verification import Chain

    links = {c["input"]: c["output"] for c in details["connections"]}
    renamed2 = details["renamed"]["second"]
    for inp in second.input_names:
        if inp not in links:  # shared with the first, or fed from the merged input
            links[inp] = renamed2.get(inp, inp)
    # Reference names: a plain name is the last step's value; "0:name" picks the first
    # model's when the second also produces that name.
    pairs = [(details["output_names"][o], o) for o in second.output_names]
    pairs += [(o, f"0:{o}" if o in second.output_names else o) for o in details["kept_outputs"]]
    return Correspondence(
        f"merge {first.name} + {second.name}",
        pairs=pairs,
        reference=Chain([first, second], links=[links]),
        feeds=make_feeds(merged, feed_options),
    )


def verify_merge(
    merged: Model,
    first: Model,
    second: Model,
    details: Mapping,
    *,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance = Tolerance(),
):
    """Compare ``merged`` with ``first`` then ``second`` run in sequence, bit for bit
    unless ``tolerance`` relaxes it (the check :func:`merge` runs, for a merged model
    made or changed elsewhere)."""
    from surgeon.verification import verify

    wanted = merge_correspondence(merged, first, second, details, feed_options)
    values: dict[str, np.ndarray] = {}
    report = verify(
        merged,
        wanted.reference,
        pairs=wanted.pairs,
        feeds=wanted.feeds,
        feed_options=feed_options,
        tolerance=tolerance,
        options=options,
        title=wanted.title,
        collect=values,
    )
    _note_unexercised(second, details, report, values)
    return report


def _note_unexercised(second: Model, details: Mapping, report, values: Mapping) -> None:
    unexercised = _nms_not_exercised(second, details, values)
    if unexercised:
        report.notes.append(unexercised)


def _nms_not_exercised(second: Model, details: Mapping, values: Mapping) -> str | None:
    """A sentence when ``second`` is an NMS graph (built by surgeon) that kept no box on
    the verification's feeds: the bit-identity then covers only zero padding, which says
    nothing about the NMS itself."""
    records = second.provenance
    if not records or records[-1].get("edit") != "nms":
        return None
    from surgeon.edits.nms import DEFAULT_OUTPUTS

    spec = records[-1].get("params") or {}
    fmt = spec.get("output_format", "efficient")
    defaults = DEFAULT_OUTPUTS.get(fmt)
    if defaults is None:
        return None
    # The output holding the scores, under the name the user gave it, then the merge's.
    names = dict(zip(defaults, spec.get("output_names") or defaults, strict=False))
    key = {"efficient": "det_scores", "ultralytics": "output0", "mmdeploy": "dets"}[fmt]
    name = details["output_names"].get(names[key], names[key])
    value = values.get(name)
    if not isinstance(value, np.ndarray) or value.size == 0:
        return None
    scores = value if fmt == "efficient" else value[..., 4]  # boxes, then the score
    if np.any(scores != 0):
        return None
    return (
        "the NMS was not exercised: no box scored above the threshold on these inputs "
        f"(score > {spec.get('score')}), so only zero padding was compared; pass real "
        "inputs (an .npz of real images) to check detections"
    )
