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
from dataclasses import replace

import numpy as np
import onnx

from surgeon.compare import EXACT, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.errors import UsageError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model, TensorInfo, tensor_nbytes, value_info_to_tensor_info
from surgeon.names import resolve_tensors
from surgeon.runner import RunOptions

# The verification runs onnxruntime with graph optimisations off unless told otherwise:
# fusions, layout changes and weight pre-packing depend on what is a constant and where
# the graph ends, so the subgraph and the original may get different kernels for the
# same nodes (a Conv whose weight became an input loses its pre-packed NCHWc kernel and
# differs in the last bit). Without them, both run the same kernels: bit-identity holds.
VERIFY_OPTIONS = RunOptions(optimization="disabled")

# Initializers larger than this are replaced by typed graph inputs in the copy given to
# ONNX shape inference: it serialises the model, which protobuf refuses above 2 GB, and
# big weights are never shape tensors whose values inference would need.
INFERENCE_WEIGHT_LIMIT = 1024


def subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors the subgraphs (If/Loop/Scan bodies) of ``node`` read."""
    reads: list[str] = []
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for name in _free_names(sub):
                if name not in reads:
                    reads.append(name)
    return reads


def _free_names(graph: onnx.GraphProto) -> list[str]:
    """Names ``graph`` uses without defining them (it reads them from an outer scope)."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {s.values.name for s in graph.sparse_initializer}
    for n in graph.node:
        local.update(o for o in n.output if o)
    free: list[str] = []
    for n in graph.node:
        for name in [x for x in n.input if x] + subgraph_reads(n):
            if name not in local and name not in free:
                free.append(name)
    for o in graph.output:
        if o.name not in local and o.name not in free:
            free.append(o.name)
    return free


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
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                producer[o] = i
    deps = {i: [x for x in n.input if x] + subgraph_reads(n) for i, n in enumerate(g.node)}
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


# ---------------------------------------------------------------------- boundary types
def _known(info: TensorInfo | None) -> bool:
    return info is not None and info.dtype is not None and info.shape is not None


def _clean(info: TensorInfo) -> TensorInfo:
    """Drop the placeholder symbols inference invents (``unk__3``): they name nothing."""
    if info.shape is None:
        return info
    shape = tuple(None if isinstance(d, str) and d.startswith("unk__") else d for d in info.shape)
    return TensorInfo(info.name, info.dtype, shape)


def inference_skeleton(model: Model) -> onnx.ModelProto:
    """A copy of ``model`` fit for ONNX shape inference at any size: large initializers
    become typed graph inputs (no weight bytes are copied)."""
    src = model.proto
    proto = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(proto, field, getattr(src, field))
    proto.opset_import.extend(src.opset_import)
    proto.functions.extend(src.functions)
    g, sg = proto.graph, src.graph
    g.name = sg.name
    g.node.extend(sg.node)
    g.input.extend(sg.input)
    g.output.extend(sg.output)
    g.value_info.extend(sg.value_info)
    declared = {v.name for v in sg.input}
    for t in sg.initializer:
        if tensor_nbytes(t) <= INFERENCE_WEIGHT_LIMIT:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return proto


def infer_infos(model: Model) -> dict[str, TensorInfo]:
    """Everything ONNX shape inference can say about the main graph's tensors (empty if
    inference gives up, which it does on some real models).

    Inference keeps the value_info and output shapes a model declares even when they are
    stale (exporters and older edits leave wrong ones, and onnxruntime runs such models),
    so it runs twice: from the inputs alone, which wins wherever it can tell, and with the
    declarations, which fills in what only they say (e.g. after a custom op).
    """
    fresh = inference_skeleton(model)
    del fresh.graph.value_info[:]
    for o in fresh.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    found: dict[str, TensorInfo] = {}
    for skeleton in (fresh, inference_skeleton(model)):
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=False, strict_mode=False, data_prop=True
            )
        except Exception:
            continue
        g = inferred.graph
        for v in list(g.value_info) + list(g.input) + list(g.output):
            info = _clean(value_info_to_tensor_info(v))
            if not _known(found.get(v.name)):
                found[v.name] = info
    return found


def _ort_types(model: Model, names: Sequence[str], options: RunOptions) -> dict[str, TensorInfo]:
    """Types onnxruntime assigns ``names`` when it builds a session (no run)."""
    from surgeon.runner import Session

    found = {}
    try:
        session = Session(model, extra_outputs=names, options=options)
    except Exception:  # a model onnxruntime cannot load; the run below will say why
        return {}
    for out in session._session.get_outputs():
        if out.name not in names or not out.type.startswith("tensor("):
            continue
        dtype = _ORT_DTYPES.get(out.type[len("tensor(") : -1])
        shape = out.shape if isinstance(out.shape, list) else None
        if shape == []:  # onnxruntime says [] for an unknown rank as well as for a scalar
            shape = None
        if shape is not None:
            shape = tuple(
                d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
                for d in shape
            )
        found[out.name] = _clean(TensorInfo(out.name, dtype, shape))
    return found


_ORT_DTYPES = {
    "float": "float32",
    "float16": "float16",
    "double": "float64",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "string": "str",
}


def _second_sizes(model: Model, first: Mapping[str, tuple[int, ...]]) -> dict[str, tuple]:
    """Input shapes for a second run: every symbolic dim moved to a distinct new value,
    so that a learned dim that follows one symbol can be recognised by its values."""
    symbols: dict[str, int] = {}
    shapes = {}
    for info in model.inputs:
        shape = list(first[info.name])
        for axis, d in enumerate(info.shape or ()):
            if isinstance(d, int) and d > 0:
                continue
            key = d if isinstance(d, str) else f"{info.name}[{axis}]"
            if key not in symbols:
                k = len(symbols)
                base = shape[axis]
                # Keep multiples of 32 for image-like sizes (strided convs), +k+1 for
                # small ones (batch), so every symbol gets its own new value.
                symbols[key] = base + 32 * (k + 1) if base >= 32 else base + k + 1
            shape[axis] = symbols[key]
        shapes[info.name] = tuple(shape)
    return shapes


def learn_from_runs(
    model: Model,
    names: Sequence[str],
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, TensorInfo], list[str]]:
    """Dtypes and shapes of ``names`` from running ``model``.

    The model runs once on ``feed_options``' inputs and, when its inputs have dynamic
    dims, once more with every dynamic dim changed: a dim that changes with an input
    symbol gets that symbol, one that changes otherwise is left unnamed, and one that
    stays put is static. When there is no second run (the inputs have static shapes,
    the model fails at other sizes, or the feeds come from a file or from ``feeds``) only
    the rank is learned: every dim is left unknown, and a note says so. ``feeds``, when
    given, are the first run's inputs (random values could be invalid axes, indices or
    sizes for the model).

    Returns:
        The learned infos and notes for the report.
    """
    from surgeon.errors import SurgeonError
    from surgeon.runner import run

    notes: list[str] = []
    caller_feeds = feeds is not None
    if feeds is None:
        feeds = make_feeds(model, feed_options)
    # The shapes the feeds really have (an .npz may give an input of unknown rank).
    first_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in feeds.items()}
    first = run(model, feeds, outputs=names, options=options)
    second = None
    dynamic = [i for i in model.inputs if i.is_dynamic]
    if dynamic and not feed_options.npz and not caller_feeds:
        shapes2 = _second_sizes(model, first_shapes)
        try:
            # replace: the caller's size limit holds for this run too (no npz here).
            feeds2 = make_feeds(model, replace(feed_options, shapes=shapes2, dims={}))
            second = run(model, feeds2, outputs=names, options=options)
        except SurgeonError:
            second = None
    # Value of each input symbol in each run, to name the dims that follow one.
    by_values: dict[tuple[int, int], list[str]] = {}
    if second is not None:
        for info in model.inputs:
            for axis, d in enumerate(info.shape or ()):
                if isinstance(d, str):
                    key = (first_shapes[info.name][axis], shapes2[info.name][axis])
                    if d not in by_values.setdefault(key, []):
                        by_values[key].append(d)
    learned = {}
    unconfirmed: list[str] = []  # names with dims a single run could not confirm
    for n in names:
        if first[n] is None or isinstance(first[n], (list, tuple, dict)):
            # A sequence, optional or map: no dtype or shape; its ONNX type comes from
            # non_tensor_types().
            learned[n] = TensorInfo(n, None, None)
            continue
        a = np.asarray(first[n])
        shape: tuple | None = tuple(int(d) for d in a.shape)
        if second is None:
            # One run shows the dims for these input values and sizes only: a shape that
            # depends on them (a size read from an input, NonZero, a dynamic dim) would
            # be frozen. Declared concrete, such dims can break the subgraph: an If branch
            # that never runs is still type-checked when onnxruntime loads the model,
            # and a Squeeze there of an axis that is not 1 at these sizes refuses to load.
            # Unknown dims cost nothing at run time. Nothing static is lost either: runs
            # are asked only when the declarations, ONNX shape inference and onnxruntime
            # do not even know the rank (boundary_infos).
            shape = (None,) * len(shape)
            if shape:
                unconfirmed.append(n)
        else:
            b = np.asarray(second[n])
            if b.ndim != a.ndim:
                shape = None
                notes.append(f"the rank of `{n}` changes with the input sizes; left unknown")
            else:
                dims = []
                for x, y in zip(a.shape, b.shape, strict=True):
                    if x == y:
                        dims.append(int(x))
                    else:
                        symbols = by_values.get((x, y), [])
                        dims.append(symbols[0] if len(symbols) == 1 else None)
                shape = tuple(dims)
        dtype = "str" if a.dtype.kind in "OUS" else a.dtype.name
        learned[n] = TensorInfo(n, dtype, shape)
    if unconfirmed:
        if not dynamic:
            why = "the model's input shapes are static, but a shape can follow input values"
        elif feed_options.npz or caller_feeds:
            why = "the inputs were given, so there is no second run at other sizes"
        else:
            why = "the model fails at other input sizes, so there is no second run"
        notes.append(
            "shapes of " + ", ".join(f"`{n}`" for n in unconfirmed) + " were seen in one run "
            f"only, at input shapes {_shapes_text(first_shapes)} ({why}); their rank is "
            "declared, their dims are left unknown"
        )
    return learned, notes


def _shapes_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in shapes.items())


def boundary_infos(
    model: Model,
    names: Sequence[str],
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    """Dtype and shape of each of ``names``, and where each came from.

    Sources, in order: ``declared`` (graph inputs, outputs, value_info, initializers),
    ``inferred`` (ONNX shape inference), ``onnxruntime`` (the session's typing) and
    ``run`` (running the original).
    """
    options = options or RunOptions()
    declared = model.value_infos()
    infos: dict[str, TensorInfo] = {}
    source: dict[str, str] = {}
    graph_io = set(model.input_names) | {t.name for t in model.proto.graph.initializer}
    for n in names:
        if n in graph_io and _known(declared.get(n)):
            infos[n], source[n] = declared[n], "declared"
    rest = [n for n in names if n not in infos]
    if rest:
        inferred = infer_infos(model)
        for n in rest:
            for where, table in (("inferred", inferred), ("declared", declared)):
                if _known(table.get(n)):
                    infos[n], source[n] = _clean(table[n]), where
                    break
    rest = [n for n in names if n not in infos]
    if rest:
        for n, info in _ort_types(model, rest, options).items():
            if _known(info):
                infos[n], source[n] = info, "onnxruntime"
    rest = [n for n in names if n not in infos]
    notes: list[str] = []
    if rest:
        learned, notes = learn_from_runs(model, rest, feed_options, options, feeds=feeds)
        for n in rest:
            infos[n], source[n] = learned[n], "run"
    return infos, source, notes


def _value_info(info: TensorInfo) -> onnx.ValueInfoProto:
    elem = onnx.TensorProto.STRING if info.dtype == "str" else onnx.TensorProto.UNDEFINED
    if info.dtype and info.dtype != "str":
        try:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype))
        except TypeError:
            elem = getattr(onnx.TensorProto, info.dtype.upper(), onnx.TensorProto.UNDEFINED)
    shape = list(info.shape) if info.shape is not None else None
    return onnx.helper.make_tensor_value_info(info.name, elem, shape)


# ---------------------------------------------------------------------- the edit
def non_tensor_types(model: Model, names: Sequence[str]) -> dict[str, onnx.TypeProto]:
    """ONNX types of those ``names`` that are not tensors (sequences, optionals, maps),
    from the model's declarations or ONNX shape inference; a TensorInfo cannot hold them,
    so build_subgraph copies these to the boundary as they are."""
    wanted = set(names)
    g = model.proto.graph
    candidates = list(g.input) + list(g.output) + list(g.value_info)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            inference_skeleton(model), check_type=False, strict_mode=False
        )
        candidates += list(inferred.graph.value_info) + list(inferred.graph.output)
    except Exception:  # inference gives up on some models
        pass
    found: dict[str, onnx.TypeProto] = {}
    for vi in candidates:
        kind = vi.type.WhichOneof("value")
        if vi.name in wanted and vi.name not in found and kind not in (None, "tensor_type"):
            found[vi.name] = vi.type
    return found


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
        return _value_info(infos[name])

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
    tolerance: Tolerance = EXACT,
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
