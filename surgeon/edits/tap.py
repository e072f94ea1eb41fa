"""The tap edit: expose intermediate tensors as graph outputs.

"Unchanged" for a tap means: every original output of the tapped model is bit-identical
to the untapped model's on the same feeds. Tapped tensors get their dtype and shape from
ONNX shape inference where it can tell, and otherwise from onnxruntime, which types every
tensor when it builds a session (no run needed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.feeds import FeedOptions
from surgeon.model import Model
from surgeon.names import intermediate_tensors, resolve_tensors, subgraph_tensors
from surgeon.runner import RunOptions

# Taps are verified with onnxruntime's graph optimisations off: a tap blocks fusions
# (Conv+BatchNorm, ...) that would otherwise change the last bits of the outputs, and the
# promise of a tap is that the maths of the graph is untouched.
VERIFY_OPTIONS = RunOptions(optimization="disabled")


def select_taps(
    model: Model, names: Iterable[str] = ("all",), *, ops: Iterable[str] = ()
) -> list[str]:
    """Resolve tap names (tensor or node names, globs, ``all``) plus op types into tensor
    names of the main graph, in topological order.

    Graph inputs and initializers are not tapped (they are known without a run), so
    they are neither accepted nor suggested.

    Raises:
        NameNotFoundError: Unknown names, with suggestions among node outputs and node
            names; a graph input or weight named explicitly (the error says why).
    """
    chosen = set(
        resolve_tensors(model, list(names), ops=ops, allow_inputs=False, what="node or node output")
    )
    order = intermediate_tensors(model)
    return [t for t in topological_tensors(model, order) if t in chosen]


def topological_tensors(model: Model, order: Sequence[str] | None = None) -> list[str]:
    """Node outputs of the main graph in a topological order (node order when the model
    is sorted, which ONNX requires, else a Kahn sort)."""
    nodes = list(model.proto.graph.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    sorted_ok = all(
        produced.get(x, -1) < i for i, n in enumerate(nodes) for x in n.input if x in produced
    )
    if not sorted_ok:
        indeg = [len({x for x in n.input if x in produced}) for n in nodes]
        users: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            for x in {x for x in n.input if x in produced}:
                users.setdefault(produced[x], []).append(i)
        ready = [i for i, d in enumerate(indeg) if d == 0]
        seq = []
        while ready:
            i = ready.pop(0)
            seq.append(i)
            for u in users.get(i, ()):
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
        nodes = [nodes[i] for i in seq]
    out = []
    for n in nodes:
        out += [o for o in n.output if o]
    return list(dict.fromkeys(out))


def not_tappable(model: Model) -> dict[str, str]:
    """Tensors inside If/Loop/Scan bodies (name -> holding node): listed, never silently
    skipped, because the main graph cannot expose them."""
    return subgraph_tensors(model)


def learn_types(
    model: Model, names: Sequence[str], options: RunOptions | None = None
) -> dict[str, onnx.TypeProto]:
    """Types for ``names``: ONNX shape inference first, onnxruntime for the rest.

    onnxruntime types every tensor while building a session, so asking it costs a session,
    not a run. ``options`` provides the custom op libraries that session needs (its
    optimisation level is always "disabled": typing needs no optimisation).
    """
    from surgeon.edits.extract import inference_skeleton

    found: dict[str, onnx.TypeProto] = {}
    try:
        # The skeleton turns large initializers into typed inputs: inference serialises
        # the model, which would copy every weight several times (and fail above 2 GB).
        inferred = onnx.shape_inference.infer_shapes(
            inference_skeleton(model), strict_mode=False, data_prop=True
        )
        infos = list(inferred.graph.value_info) + list(inferred.graph.output)
    except Exception:  # inference gives up on some real models; onnxruntime still can type them
        infos = list(model.proto.graph.value_info) + list(model.proto.graph.output)
    wanted = set(names)  # a set: `in` on the list made typing quadratic in the taps
    for vi in infos:
        if vi.name in wanted and vi.type.tensor_type.elem_type:
            found[vi.name] = vi.type
    rest = [n for n in names if n not in found]
    if rest:
        from surgeon.runner import Session

        libraries = options.custom_op_libraries if options is not None else ()
        session = Session(
            model,
            extra_outputs=rest,
            options=RunOptions(optimization="disabled", custom_op_libraries=libraries),
        )
        for out in session._session.get_outputs():
            if out.name in rest:
                t = _type_from_ort(out.type, out.shape)
                if t is not None:
                    found[out.name] = t
    return found


_ORT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT,
    "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(bfloat16)": onnx.TensorProto.BFLOAT16,
    "tensor(double)": onnx.TensorProto.DOUBLE,
    "tensor(int8)": onnx.TensorProto.INT8,
    "tensor(int16)": onnx.TensorProto.INT16,
    "tensor(int32)": onnx.TensorProto.INT32,
    "tensor(int64)": onnx.TensorProto.INT64,
    "tensor(uint8)": onnx.TensorProto.UINT8,
    "tensor(uint16)": onnx.TensorProto.UINT16,
    "tensor(uint32)": onnx.TensorProto.UINT32,
    "tensor(uint64)": onnx.TensorProto.UINT64,
    "tensor(bool)": onnx.TensorProto.BOOL,
    "tensor(string)": onnx.TensorProto.STRING,
}


def _type_from_ort(type_str: str, shape) -> onnx.TypeProto | None:
    elem = _ORT_TYPES.get(type_str)
    if elem is None:
        return None
    dims = None
    # onnxruntime reports an unknown shape as [], the shape of a scalar: a scalar written
    # from it would be a wrong rank (ZipMap's input in a classic classifier export then
    # fails to load), so [] stays unknown; the type alone is all a tap needs.
    if isinstance(shape, (list, tuple)) and len(shape) > 0:
        dims = [d if isinstance(d, (int, str)) and d != -1 else None for d in shape]
    vi = onnx.helper.make_tensor_value_info("_", elem, dims)
    return vi.type


def add_outputs(
    model: Model, names: Sequence[str], types: Mapping[str, onnx.TypeProto] | None = None
) -> Model:
    """A copy of ``model`` with ``names`` appended as graph outputs (typed where known);
    not an edit (no provenance, no verification): debug's run-time view of a model."""
    copy = model.copy()
    append_outputs(copy.proto, names, types)
    return copy


def append_outputs(
    proto: onnx.ModelProto, names: Sequence[str], types: Mapping[str, onnx.TypeProto] | None = None
) -> None:
    """Append ``names`` to ``proto``'s graph outputs, in place (typed where known)."""
    existing = {o.name for o in proto.graph.output}
    for n in names:
        if n in existing:
            continue
        vi = proto.graph.output.add(name=n)
        if types and n in types:
            vi.type.CopyFrom(types[n])
        existing.add(n)


def tap(
    model: Model,
    names: Iterable[str] = ("all",),
    *,
    ops: Iterable[str] = (),
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    verify: bool = True,
    custom_op_libraries: Sequence[str] = (),
) -> Edited:
    """Expose intermediate tensors of ``model`` as graph outputs.

    Args:
        model: The model (not modified).
        names: Tensor names, node names (meaning their outputs), globs or ``all``.
        ops: Op types whose every output is tapped (e.g. ``["Conv"]``).
        feeds, feed_options: Inputs for the verification run.
        verify: Check that every original output stays bit-identical.
        custom_op_libraries: Shared libraries implementing the model's custom operators
            (loaded only when given).

    Returns:
        Edited with the tapped model; ``details["taps"]`` lists the new outputs in
        topological order and ``details["not_tappable"]`` the tensors inside subgraphs.

    Raises:
        NameNotFoundError: A name matches nothing (with close matches).
    """
    names = list(names)
    ops = list(ops)
    # plan: which tensors, and their types
    taps = select_taps(model, names, ops=ops)
    graph_outputs = set(model.output_names)
    new_taps = [t for t in taps if t not in graph_outputs]
    run_options = dataclasses.replace(
        VERIFY_OPTIONS, custom_op_libraries=tuple(custom_op_libraries)
    )
    types = learn_types(model, new_taps, run_options) if new_taps else {}
    untyped = [t for t in new_taps if t not in types]
    return apply_edit(
        model,
        "tap",
        {"names": names, "ops": ops},
        lambda proto: append_outputs(proto, new_taps, types),
        # the correspondence: every original output bit-identical
        lambda tapped: Correspondence(
            "tap: original outputs unchanged", pairs=[(o, o) for o in model.output_names]
        ),
        check=Check(verify, feeds, feed_options, run_options),
        label="tapped",
        details=lambda tapped, report: {
            "taps": taps,
            "untyped": untyped,
            "not_tappable": not_tappable(model),
        },
    )
