"""The extract edit: cut a subgraph out of a model, between given tensors.

"Unchanged" for an extract means: fed with the original's values at the cut inputs, the
subgraph reproduces the original's values at the cut outputs, bit for bit.

The graph is walked directly on the ModelProto (not ``onnx.utils.extract_model``, which
serialises the model and so fails above 2 GB and on weights held as external data):
needed nodes are kept in their original order, with the initializers they read, including
the outer-scope tensors that If/Loop/Scan bodies read. Types at the new boundaries come
from the model's declarations, then ONNX shape inference (on a copy whose large weights
are replaced by typed inputs, so it stays small), then onnxruntime's typing of the
session, and only then from runs of the original: two runs at different input sizes
tell which dims are static and which follow an input dim; a dim seen in a single run is
left unknown (only the rank is declared). Weights the original also lists as graph
inputs (old-style exports) stay listed so in the subgraph: onnxruntime pre-packs only
weights that cannot be overridden, and both sides must get the same kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from surgeon.compare import Tolerance
from surgeon.edits import Edited
from surgeon.edits.boundary import boundary_infos, non_tensor_types, value_info_of
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.errors import UsageError
from surgeon.feeds import FeedOptions
from surgeon.graph_facts import graph_facts
from surgeon.model import Model, TensorInfo, tensor_nbytes
from surgeon.names import resolve_tensors
from surgeon.runner import RunOptions

# The verification runs onnxruntime with graph optimisations off unless told otherwise:
# fusions, layout changes and weight pre-packing depend on what is a constant and where
# the graph ends, so the subgraph and the original may get different kernels for the
# same nodes (a Conv whose weight became an input loses its pre-packed NCHWc kernel and
# differs in the last bit). Without them, both run the same kernels: bit-identity holds.
VERIFY_OPTIONS = RunOptions(optimization="disabled")


def _resolve(model: Model, specs: Sequence[str], role: str) -> tuple[list[str], set[str]]:
    """Tensors for ``specs``; also the set of tensors that came from expanding a node name
    or a glob (those may be dropped when unused, explicit names may not)."""
    out: list[str] = []
    expanded: set[str] = set()
    tensor_names = set(model.tensor_names())
    for spec in specs:
        found = resolve_tensors(model, [spec], what=f"node or tensor (for {role})")
        if spec not in tensor_names:
            expanded.update(found)
        out += [f for f in found if f not in out]
    return out, expanded


def _split_specs(specs: Iterable[str] | str) -> list[str]:
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for spec in specs:
        out += [s.strip() for s in spec.split(",") if s.strip()]
    return out


def plan_extract(model: Model, inputs: Iterable[str] | str, outputs: Iterable[str] | str) -> dict:
    """Work out what the subgraph between ``inputs`` and ``outputs`` keeps.

    Returns:
        A dict with ``inputs`` and ``outputs`` (tensor names), ``nodes`` (indices of the
        kept main-graph nodes, in order), ``initializers`` (names) and ``dropped_inputs``
        (outputs of a named node that the subgraph does not read).

    Raises:
        NameNotFoundError: Unknown names (all of them, with suggestions).
        UsageError: An output does not depend on the inputs, depends on graph inputs that
            are not listed, or an explicitly named input is not needed.
    """
    in_specs, out_specs = _split_specs(inputs), _split_specs(outputs)
    if not in_specs or not out_specs:
        raise UsageError(
            f"extract from {model.name} needs at least one input and one output tensor",
            hint="e.g. inputs=['backbone/act0_out'], outputs=['head/conv_out'] "
            "(--inputs ... --outputs ... on the command line)",
        )
    # Resolve everything once first, so every unknown name is reported together.
    resolve_tensors(model, in_specs + out_specs, what="node or tensor")
    cut_inputs, expanded_inputs = _resolve(model, in_specs, "inputs")
    cut_outputs, _ = _resolve(model, out_specs, "outputs")

    g = model.proto.graph
    facts = graph_facts(model)
    producer = facts.producers
    deps = {i: facts.reads(i) for i in range(len(g.node))}
    inits = {t.name for t in g.initializer} | {s.values.name for s in g.sparse_initializer}
    graph_inputs = [v.name for v in g.input if v.name not in inits]
    cut = set(cut_inputs)

    keep_nodes: set[int] = set()
    keep_inits: set[str] = set()
    used_inputs: set[str] = set()
    problems: list[str] = []
    missing_all: list[str] = []
    for out in cut_outputs:
        reached_cut: set[str] = set()
        reached_graph: list[str] = []
        seen: set[str] = set()
        stack = [out]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in cut:
                reached_cut.add(t)
            elif t in producer:
                keep_nodes.add(producer[t])
                stack.extend(deps[producer[t]])
            elif t in inits:
                keep_inits.add(t)
            elif t in graph_inputs and t not in reached_graph:
                reached_graph.append(t)
        used_inputs |= reached_cut
        reached_graph.sort(key=graph_inputs.index)  # the model's order, not the walk's
        listed = ", ".join(f"`{i}`" for i in cut_inputs)
        if not reached_cut and not reached_graph:
            problems.append(
                f"output `{out}` does not depend on any input: it is computed from constants only"
            )
        elif not reached_cut:
            problems.append(
                f"output `{out}` does not depend on the given inputs ({listed}); it is computed "
                f"from graph input(s) {', '.join(f'`{x}`' for x in reached_graph)}"
            )
        elif reached_graph:
            problems.append(
                f"output `{out}` also depends on graph input(s) "
                f"{', '.join(f'`{x}`' for x in reached_graph)}, which are not listed as inputs"
            )
            missing_all += [x for x in reached_graph if x not in missing_all]
    unused = [i for i in cut_inputs if i not in used_inputs]
    for name in unused:
        if name not in expanded_inputs:
            problems.append(
                f"input `{name}` is not needed to compute the outputs (no path from it reaches "
                "them, or every path passes through another listed input)"
            )
    for i in sorted(keep_nodes):
        n = g.node[i]
        clash = [o for o in n.output if o in cut]
        if clash:
            label = n.name or f"#{i} ({n.op_type})"
            problems.append(
                f"input `{clash[0]}` is produced by node `{label}`, which the subgraph also needs "
                f"for its other outputs; list those outputs of `{label}` as inputs too, or cut "
                "at the node's inputs"
            )
    if problems:
        hint = None
        if missing_all:
            hint = "Add " + ", ".join(f"`{x}`" for x in missing_all) + " to the inputs."
        swapped = _upstream_outputs(cut_inputs, cut_outputs, producer, deps)
        if swapped:
            hint = (
                "; ".join(f"output `{o}` comes before input `{i}` in the graph" for o, i in swapped)
                + ": are the inputs and outputs of the cut the wrong way round?"
            )
        raise UsageError(
            f"cannot extract from {model.name} between the given inputs and outputs",
            problems=problems,
            hint=hint,
        )
    if not keep_nodes:
        # Every output is one of the inputs (or a constant): a 0-node model would "verify"
        # by comparing the feed with itself, a check that cannot fail.
        raise UsageError(
            f"nothing to extract from {model.name}: no node lies between the inputs and the outputs "
            f"({', '.join(f'`{o}`' for o in cut_outputs)})",
            hint="Name outputs computed from the inputs (e.g. a node's output further down the graph).",
        )
    return {
        "inputs": [i for i in cut_inputs if i in used_inputs],
        "outputs": cut_outputs,
        "nodes": sorted(keep_nodes),
        "initializers": [t.name for t in g.initializer if t.name in keep_inits],
        "sparse_initializers": [
            s.values.name for s in g.sparse_initializer if s.values.name in keep_inits
        ],
        "dropped_inputs": [i for i in cut_inputs if i not in used_inputs],
    }


def _upstream_outputs(cut_inputs, cut_outputs, producer, deps) -> list[tuple[str, str]]:
    """(output, input) pairs where the output is an ancestor of the input."""
    found = []
    for inp in cut_inputs:
        seen: set[str] = set()
        stack = list(deps[producer[inp]]) if inp in producer else []
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in producer:
                stack.extend(deps[producer[t]])
        found += [(o, inp) for o in cut_outputs if o in seen]
    return found[:3]


# ---------------------------------------------------------------------- the edit
def build_subgraph(
    model: Model,
    plan: Mapping,
    infos: Mapping[str, TensorInfo],
    types: Mapping[str, onnx.TypeProto] | None = None,
) -> Model:
    """A new Model holding only what ``plan`` keeps, with typed inputs and outputs
    (``types`` gives the boundary tensors that are sequences, optionals or maps)."""
    types = types or {}

    def boundary_value_info(name: str) -> onnx.ValueInfoProto:
        if name in types:
            vi = onnx.ValueInfoProto(name=name)
            vi.type.CopyFrom(types[name])
            return vi
        return value_info_of(infos[name])

    src = model.proto
    proto = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(proto, field, getattr(src, field))
    proto.doc_string = src.doc_string
    proto.opset_import.extend(src.opset_import)
    proto.functions.extend(src.functions)
    proto.metadata_props.extend(src.metadata_props)
    g, sg = proto.graph, src.graph
    g.name = sg.name
    g.doc_string = sg.doc_string
    declared_inputs = {v.name: v for v in sg.input}
    for name in plan["inputs"]:
        g.input.append(declared_inputs.get(name) or boundary_value_info(name))
    keep_inits = set(plan["initializers"])
    # Initializers the original also lists as graph inputs (old-style exports, IR 3/4)
    # stay listed in the subgraph, in the original's order: onnxruntime treats such a
    # weight as overridable (from IR 4 on) and does not pre-pack it, while a plain
    # initializer gets pre-packed kernels that differ in the last bits. Both sides must
    # see each weight the same way for the cut to be bit-exact.
    g.input.extend(v for v in sg.input if v.name in keep_inits)
    # CopyFrom, not a reference: the original Model keeps its own tensors (no aliasing).
    g.initializer.extend(t for t in sg.initializer if t.name in keep_inits)
    keep_sparse = set(plan.get("sparse_initializers", ()))
    g.sparse_initializer.extend(s for s in sg.sparse_initializer if s.values.name in keep_sparse)
    g.node.extend(sg.node[i] for i in plan["nodes"])
    for name in plan["outputs"]:
        g.output.append(boundary_value_info(name))
    produced = {o for n in g.node for o in n.output if o}
    boundary = set(plan["inputs"]) | set(plan["outputs"])
    g.value_info.extend(v for v in sg.value_info if v.name in produced and v.name not in boundary)
    g.quantization_annotation.extend(
        q for q in sg.quantization_annotation if q.tensor_name in produced | boundary
    )
    return model.with_proto(proto)


def extract(
    model: Model,
    inputs: Iterable[str] | str,
    outputs: Iterable[str] | str,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    tolerance: Tolerance = Tolerance(),
    options: RunOptions | None = None,
    verify: bool = True,
) -> Edited:
    """Cut the subgraph of ``model`` that computes ``outputs`` from ``inputs``.

    The subgraph keeps only the nodes it needs (in their original order), the
    initializers and constants they read, and gets dtypes and shapes at its new inputs
    and outputs. Works on models with external data and above 2 GB (nothing is
    serialised except to run onnxruntime).

    Args:
        model: The model (not modified).
        inputs: Tensor names where the subgraph starts (a node name means its outputs;
            outputs of a named node that the subgraph does not read are dropped). A
            comma-separated string is accepted.
        outputs: Tensor names the subgraph computes (node names mean their outputs).
        feeds, feed_options: Inputs of the original for the verification run (and for
            learning boundary shapes when nothing else can tell).
        tolerance: How close the subgraph's outputs must be to the original's; by
            default bit-identical (same kernels on the same values).
        options: onnxruntime settings for both models (default: optimisations off, see
            ``VERIFY_OPTIONS``; with them on, expect last-bit differences where the cut
            changes which kernels onnxruntime picks, and pass a tolerance).
        verify: Run the verification (the original with taps at the cut points, the
            subgraph fed with the tapped values).

    Returns:
        Edited whose ``details`` hold ``inputs``/``outputs`` (name, dtype, shape, source),
        node and initializer counts, ``dropped_inputs`` and ``notes``.

    Raises:
        NameNotFoundError: Unknown names, with suggestions.
        UsageError: The outputs do not depend on the inputs, need graph inputs that are
            not listed (named in the message), or a named input is not needed.
    """
    options = options or VERIFY_OPTIONS
    plan = plan_extract(model, inputs, outputs)
    boundary = list(dict.fromkeys(plan["inputs"] + plan["outputs"]))
    infos, source, notes = boundary_infos(model, boundary, feed_options, options, feeds=feeds)
    untyped = [n for n in boundary if infos[n].dtype is None]
    types = non_tensor_types(model, untyped) if untyped else {}

    def change(_: onnx.ModelProto) -> Model:
        # (``types`` only when there are any: callers may wrap the three-argument form.)
        if types:
            return build_subgraph(model, plan, infos, types)
        return build_subgraph(model, plan, infos)

    def details(sub: Model, report) -> dict:
        kept_bytes = sum(tensor_nbytes(t) for t in sub.proto.graph.initializer)
        return {
            "inputs": [dict(infos[n].to_dict(), source=source[n]) for n in plan["inputs"]],
            "outputs": [dict(infos[n].to_dict(), source=source[n]) for n in plan["outputs"]],
            "nodes": {
                "kept": len(plan["nodes"]),
                "removed": len(model.proto.graph.node) - len(plan["nodes"]),
            },
            "initializers": {"kept": len(plan["initializers"]), "bytes": kept_bytes},
            "dropped_inputs": plan["dropped_inputs"],
            "notes": notes,
        }

    return apply_edit(
        model,
        "extract",
        {"inputs": plan["inputs"], "outputs": plan["outputs"]},
        change,
        # fed with the original's values at the cut inputs, the same values at the outputs
        lambda sub: Correspondence(
            "extract: subgraph vs original at the cut points",
            pairs=[(o, o) for o in plan["outputs"]],
            candidate_inputs={i: i for i in plan["inputs"]},
            tolerance=tolerance,
        ),
        check=Check(verify, feeds, feed_options, options),
        label="extracted",
        copy=False,  # the subgraph is built from the parts it keeps, not from a full copy
        details=details,
    )
