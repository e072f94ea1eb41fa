"""The fold edit: constant folding and cleanup, verified against the original.

Built on onnx-graphsurgeon's ``fold_constants`` (which evaluates constant subgraphs with
onnxruntime, folds ``Shape`` of tensors whose inferred shape is static and the shape
arithmetic behind it, and inlines an ``If`` whose condition became a constant) and
``cleanup`` (unused nodes and initializers), repeated with shape inference in between
until nothing changes, then:

- duplicate initializers (same dtype, dims and bytes) are merged into one;
- dtype drift is repaired: a folded tensor whose dtype differs from what the original
  computed under that name is cast back when that keeps every value, else refused;
- inputs the caller binds to values (a sample rate, a mode flag) become constants, so the
  branches and arithmetic they decide fold too; the folded model no longer takes them.

"Unchanged" for a fold: every output equal to the original's (bound inputs fed their
bound values to the original), at the caller's sizes and at a second size where the
model has dynamic dims. Quantize/Dequantize nodes are never folded: a QDQ model's
targets read the pattern, and folding a weight's DequantizeLinear would remove it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from surgeon.compare import DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.sizes import runtime_correspondence, verify_other_size, with_fixed
from surgeon.errors import SurgeonError, UsageError, raise_name_errors, unknown_name
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model, copy_model_metadata, iter_graphs
from surgeon.protos import import_graphsurgeon, op_histogram
from surgeon.runner import RunOptions, inline_external_data

# Never folded: a QDQ model's pattern is what its targets read (see the module docstring).
NOT_FOLDED = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops whose constant weights onnxruntime's CPU kernels repack ("prepack") at session
# start; a weight folded from run-time tensor to initializer switches them to the packed
# path, which sums in another order (RT-DETR's decoder: 6e-8 after folding the Identity
# nodes torch writes for weights shared between cloned layers).
PREPACKED_OPS = frozenset({"MatMul", "Gemm", "LSTM", "GRU"})
MAX_PASSES = 8  # a fold that still changes the graph after 8 passes would be a folder bug


def infer_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Shape inference with data propagation (so Shape->Gather->Concat values are known),
    or the proto as it is and why inference failed."""
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True), None
    # ValueError: a proto above protobuf's 2 GB limit cannot be serialised for inference
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as e:
        return proto, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _dtypes(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor the model declares or infers."""
    g = proto.graph
    found = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            found.setdefault(v.name, v.type.tensor_type.elem_type)
    return found


def plan_bind(model: Model, bind: Mapping[str, object] | None) -> dict[str, np.ndarray]:
    """Check the inputs to fix to values: each must be an input, its value one element
    (a scalar, or a shape of ones the input's dims allow), exactly representable in the
    input's dtype.

    Raises:
        NameNotFoundError: Names that are not inputs (all at once).
        UsageError: A value of more than one element, or one the dtype cannot hold.
    """
    if not bind:
        return {}
    inputs = {i.name: i for i in model.inputs}
    raise_name_errors(
        [
            unknown_name("input", n, list(inputs), model.name, model_path=model.path)
            for n in bind
            if n not in inputs
        ],
        f"unknown inputs to bind in {model.name}",
    )
    bound, problems = {}, []
    for name, value in bind.items():
        info = inputs[name]
        arr = np.asarray(value)
        if arr.size != 1:
            problems.append(
                f"`{name}`: only a one-element value can be bound, not shape {list(arr.shape)}"
            )
            continue
        declared = info.shape
        if declared is not None:
            rank_ok = all(d in (1, None) or isinstance(d, str) for d in declared)
            if not rank_ok:
                problems.append(f"`{name}` is declared {info.shape_text()}: not one element")
                continue
            arr = arr.reshape([1] * len(declared))
        dtype = np.dtype(info.dtype) if info.dtype else None
        if dtype is not None and arr.dtype != dtype:
            cast = arr.astype(dtype)
            if not np.array_equal(cast.astype(arr.dtype), arr, equal_nan=True):
                problems.append(f"`{name}`: {arr.reshape(-1)[0]!r} does not fit its dtype {dtype}")
                continue
            arr = cast
        bound[name] = arr
    if problems:
        raise UsageError(f"cannot bind inputs of {model.name}", problems=problems)
    return bound


def _bind_inputs(proto: onnx.ModelProto, bound: Mapping[str, np.ndarray]) -> None:
    keep = [v for v in proto.graph.input if v.name not in bound]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    for name, value in bound.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))


def _fold_passes(
    proto: onnx.ModelProto, size_threshold: int | None
) -> tuple[onnx.ModelProto, int, str | None]:
    """Fold and clean up until the node count stops changing; (proto, passes, why shape
    inference failed on the last pass or None)."""
    from surgeon.runner import ort_module

    ort_module()  # quiets onnxruntime's logger: the folder runs sessions of its own
    gs = import_graphsurgeon()
    passes, why = 0, None
    count = -1
    while passes < MAX_PASSES:
        proto, why = infer_shapes(proto)
        graph = gs.import_onnx(proto)
        graph.fold_constants(
            fold_shapes=True,
            # Our own flattening below: onnx-graphsurgeon 0.6.1's leaves the If's outputs
            # without a producer when a branch output is a constant, an outer tensor or
            # also read inside the branch (silero_vad's If on sr has all of those).
            flatten_subgraphs=False,
            size_threshold=size_threshold,
            should_exclude_node=lambda node: node.op in NOT_FOLDED,
            # error_ok: a subgraph onnxruntime cannot evaluate stays unfolded, not fatal
            error_ok=True,
        )
        _flatten_fixed_ifs(gs, graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        folded = gs.export_onnx(graph, do_type_check=False)
        copy_model_metadata(proto, folded)
        proto = folded
        passes += 1
        nodes = sum(len(g.node) for g in iter_graphs(proto.graph))
        if nodes == count:
            break
        count = nodes
    return proto, passes, why


def _flatten_fixed_ifs(gs, graph) -> int:
    """Replace each main-graph ``If`` whose condition is a constant by the nodes of the
    branch it takes, each If output then copied from its branch output by an Identity
    (onnxruntime elides those; a later pass folds the constant ones). Nested Ifs that the
    inlining brings up are flattened in turn. Returns how many were flattened."""
    flattened = 0
    index = 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        if node.op != "If" or not isinstance(node.inputs[0], gs.Constant):
            index += 1
            continue
        cond = bool(np.asarray(node.inputs[0].values).reshape(-1)[0])
        branch = node.attrs["then_branch" if cond else "else_branch"]
        # A branch-local name the outer graph uses too gets a suffix (names stay as the
        # exporter wrote them otherwise, for the user to find in both models).
        outer_names = set(graph.tensors())
        for tensor in branch._local_tensors().values():
            if tensor.name in outer_names:
                tensor.name += f"__fold{flattened}"
        copies = []
        for outer, inner in zip(list(node.outputs), list(branch.outputs), strict=True):
            outer.inputs.clear()
            copies.append(
                gs.Node(
                    "Identity", name=f"{outer.name}__fold_copy", inputs=[inner], outputs=[outer]
                )
            )
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes[index : index + 1] = list(branch.nodes) + copies
        flattened += 1
    return flattened


def _deduplicate(proto: onnx.ModelProto) -> list[dict]:
    """Merge main-graph initializers of identical dtype, dims and bytes; the references
    (subgraphs' outer-scope reads included) move to the first. Graph outputs and inputs
    keep their names."""
    g = proto.graph
    protected = {v.name for v in g.output} | {v.name for v in g.input}
    first: dict[tuple, str] = {}
    merged: dict[str, str] = {}
    for t in g.initializer:
        if t.name in protected or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        data = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), hashlib.sha256(data.tobytes()).hexdigest())
        if key in first:
            merged[t.name] = first[key]
        else:
            first[key] = t.name
    if not merged:
        return []
    keep = [t for t in g.initializer if t.name not in merged]
    del g.initializer[:]
    g.initializer.extend(keep)
    for sub in iter_graphs(g):
        shadowed = {t.name for t in sub.initializer} | {v.name for v in sub.input}
        shadowed |= {o for n in sub.node for o in n.output}
        for n in sub.node:
            for i, name in enumerate(n.input):
                if name in merged and (sub is g or name not in shadowed):
                    n.input[i] = merged[name]
    return [{"removed": old, "kept": new} for old, new in merged.items()]


def _repair_dtypes(proto: onnx.ModelProto, before: Mapping[str, int]) -> list[dict]:
    """Cast folded initializers back to the dtype the original gave their tensor.

    Raises:
        SurgeonError: A folded value the original dtype cannot hold exactly.
    """
    repaired, problems = [], []
    for i, t in enumerate(proto.graph.initializer):
        want = before.get(t.name)
        if not want or want == t.data_type:
            continue
        data = numpy_helper.to_array(t)
        target = np.dtype(helper.tensor_dtype_to_np_dtype(want))
        cast = data.astype(target)
        if not np.array_equal(cast.astype(data.dtype), data, equal_nan=True):
            problems.append(
                f"`{t.name}` folded to {data.dtype}, and its values do not fit the "
                f"original's {target}"
            )
            continue
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(cast, t.name))
        repaired.append({"tensor": t.name, "from": str(data.dtype), "to": str(target)})
    if problems:
        raise SurgeonError(
            "the folder changed dtypes it cannot change back",
            problems=problems,
            hint="Fold less (a size threshold) or report the model: this is a folder bug.",
        )
    return repaired


def _shape_ops_left(proto: onnx.ModelProto) -> list[dict]:
    """Each Shape node left, and why its value could not be known."""
    inferred, _ = infer_shapes(proto)
    shapes = {}
    g = inferred.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in v.type.tensor_type.shape.dim
            ]
    left = []
    for sub in iter_graphs(proto.graph):
        for n in sub.node:
            if n.op_type != "Shape":
                continue
            src = n.input[0] if n.input else ""
            if sub is not proto.graph:
                why = (
                    "inside a subgraph (If/Loop/Scan body): its input's shape is not inferred there"
                )
            elif src not in shapes:
                why = f"the shape of `{src}` is not known (shape inference gave none)"
            else:
                dims = shapes[src]
                unknown = [str(d) for d in dims if not isinstance(d, int) or d <= 0]
                why = (
                    f"`{src}` has dynamic dims [{', '.join(map(str, dims))}]: "
                    + ", ".join(unknown)
                    + " not fixed (make them static with reshape-io to fold it)"
                    if unknown
                    else f"`{src}` is static {dims}, yet the Shape was not folded"
                )
            left.append({"node": n.name or "(unnamed)", "input": src, "why": why})
    return left


def _weights_made_constant(original: onnx.ModelProto, folded: onnx.ModelProto) -> list[str]:
    """Nodes of ops whose weights onnxruntime prepacks that read an initializer after
    folding where the original node (known by its output) read a tensor computed at run
    time."""
    computed = {o for n in original.graph.node for o in n.output}
    before = {n.output[0]: n for n in original.graph.node if n.op_type in PREPACKED_OPS}
    inits = {t.name for t in folded.graph.initializer}
    found = []
    for n in folded.graph.node:
        old = before.get(n.output[0]) if n.output else None
        if old is None or old.op_type != n.op_type:
            continue
        # by position: deduplication may have renamed the weight since
        if any(
            new in inits and was in computed
            for new, was in zip(n.input[1:], old.input[1:], strict=False)
        ):
            found.append(n.name or n.output[0])
    return found


def _initializer_stats(proto: onnx.ModelProto) -> tuple[int, int]:
    from surgeon.protos import tensor_nbytes

    inits = proto.graph.initializer
    return len(inits), sum(tensor_nbytes(t) for t in inits)


def fold(
    model: Model,
    bind: Mapping[str, object] | None = None,
    *,
    size_threshold: int | None = None,
    verify: bool = True,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance = Tolerance(),
) -> Edited:
    """Fold constants and clean up ``model``, then prove the outputs did not change.

    Args:
        model: The model (not modified).
        bind: Input name -> a one-element value: the input becomes that constant (so an
            ``If`` on it folds to one branch) and the folded model no longer takes it.
        size_threshold: Do not fold tensors larger than this many bytes (None: fold all).
        verify: Run the comparison with the original.
        feed_options: The inputs for the comparison; the bound inputs are fed their bound
            values, whatever these options say.
        options: onnxruntime settings of both sides (default: optimisations off);
            weight prepacking is off whatever they say.
        tolerance: When values count as equal (folding should keep them bit-identical;
            the report says whether they are).

    Returns:
        Edited whose ``details`` hold ``op_types`` (before/after per op type), ``nodes``,
        ``initializers`` (count and bytes before/after, ``deduplicated``), ``bound``,
        ``dtype_repairs``, ``shape_ops_left`` (node, input, why) and ``passes``.

    Raises:
        NameNotFoundError: ``bind`` names something that is not an input.
        UsageError: A bound value of more than one element, or one its dtype cannot hold.
        SurgeonError: The folder changed a dtype in a way that cannot be undone.
    """
    # Folding reads and rewrites weight values: external ones come into memory (from the
    # model's folder; onnx alone would look for them in the current folder).
    model = inline_external_data(model)
    bound = plan_bind(model, bind)
    # Prepacking off on both sides: a weight that folding made an initializer would take
    # onnxruntime's packed GEMM path and move the last bits (see PREPACKED_OPS), while
    # the check is about the values the fold computed; every other setting is the caller's.
    options = replace(options or RunOptions(optimization="disabled"), prepacking=False)
    if size_threshold is not None and size_threshold < 0:
        raise UsageError(f"size_threshold must be >= 0 bytes, not {size_threshold}")
    facts: dict = {}

    def change(proto: onnx.ModelProto) -> onnx.ModelProto:
        _bind_inputs(proto, bound)
        before, facts["inference"] = infer_shapes(proto)
        folded, facts["passes"], why = _fold_passes(proto, size_threshold)
        facts["deduplicated"] = _deduplicate(folded)
        facts["dtype_repairs"] = _repair_dtypes(folded, _dtypes(before))
        # The folder's value_info (shapes it inferred on the way) stays: static shapes
        # help the converters this is for. Stale entries for removed tensors go.
        live = {o for g in iter_graphs(folded.graph) for n in g.node for o in n.output}
        keep = [v for v in folded.graph.value_info if v.name in live]
        del folded.graph.value_info[:]
        folded.graph.value_info.extend(keep)
        return folded

    def correspondence(edited: Model) -> Correspondence:
        title = "fold: outputs unchanged" + (" (bound inputs fed their values)" if bound else "")
        feeds = make_feeds(model, with_fixed(feed_options, bound))
        feeds.update(bound)
        return runtime_correspondence(title, edited, model, feeds, options, tolerance)

    def finish(edited: Model, report: DiffReport, values) -> None:
        if report.tensors:  # not when the model did not run at all
            verify_other_size(edited, model, report, feed_options, options, tolerance, bound)

    def details(edited: Model, report) -> dict:
        before, after = (
            op_histogram(model.proto, include_subgraphs=True),
            op_histogram(edited.proto, include_subgraphs=True),
        )
        init_before, init_after = _initializer_stats(model.proto), _initializer_stats(edited.proto)
        kept = {t.name for t in edited.proto.graph.initializer}
        removed = [t.name for t in model.proto.graph.initializer if t.name not in kept]
        notes = [
            f"input `{n}` is bound to {v.reshape(-1)[0].item()!r}: the folded model no longer takes "
            "it and only computes what that value selects"
            for n, v in bound.items()
        ]
        if facts.get("inference"):
            notes.append(f"shape inference failed, so shapes did not fold: {facts['inference']}")
        packed = _weights_made_constant(model.proto, edited.proto)
        if packed:
            notes.append(
                f"{len(packed)} node(s) ({', '.join(packed[:3])}{', ...' if len(packed) > 3 else ''}) "
                "now read a constant weight the original computed at run time: checked with "
                "onnxruntime's weight prepacking off on both sides, as onnxruntime's packed "
                "kernels for constant weights sum in another order (last-bit differences)"
            )
        return {
            "op_types": {
                op: {"before": before.get(op, 0), "after": after.get(op, 0)}
                for op in sorted(set(before) | set(after))
            },
            "nodes": {"before": sum(before.values()), "after": sum(after.values())},
            "initializers": {
                "before": init_before[0],
                "after": init_after[0],
                "bytes_before": init_before[1],
                "bytes_after": init_after[1],
                "removed": removed,
                "deduplicated": facts["deduplicated"],
            },
            "bound": {n: v.reshape(-1)[0].item() for n, v in bound.items()},
            "dtype_repairs": facts["dtype_repairs"],
            "shape_ops_left": _shape_ops_left(edited.proto),
            "passes": facts["passes"],
            "notes": notes,
        }

    return apply_edit(
        model,
        "fold",
        {
            "bind": {n: v.reshape(-1)[0].item() for n, v in bound.items()},
            "size_threshold": size_threshold,
        },
        change,
        correspondence,
        check=Check(verify, None, feed_options, options, tolerance),
        label="folded",
        details=details,
        finish=finish,
    )
