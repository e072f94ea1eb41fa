"""The tap edit: expose intermediate tensors as graph outputs.

Tensors inside If/Loop/Scan bodies are tapped too, under qualified names
(``If_0/then_branch/x``); how they are carried out of their bodies is
:mod:`surgeon.edits.tap_bodies`.

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

from surgeon.compare import Tolerance
from surgeon.edits import Edited
from surgeon.edits.boundary import value_info_of
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.tap_bodies import (
    UNSTACKABLE,
    body_tensors,
    plan_body_taps,
    untappable_body_tensors,
)
from surgeon.errors import RuntimeFailure
from surgeon.feeds import FeedOptions
from surgeon.graph_facts import graph_facts, inferred_value_infos
from surgeon.model import Model
from surgeon.names import resolve_tensors
from surgeon.runner import RunOptions, runtime_infos

# Taps are verified with onnxruntime's graph optimisations off: a tap blocks fusions
# (Conv+BatchNorm, ...) that would otherwise change the last bits of the outputs, and the
# promise of a tap is that the maths of the graph is untouched.
VERIFY_OPTIONS = RunOptions(optimization="disabled")

# The tap check of a model that computes in float16. onnxruntime's CPU runs float16 chains
# in float32 and rounds to float16 only where a tensor is exposed (a graph output), so a
# tap adds a float16 rounding (relative error <= 2**-11) at each tapped tensor and the
# outputs move by a few float16 units in the last place; bit-identity cannot hold. Eight
# ulps at magnitude 1 (2**-10 each), as both atol (outputs near zero: softmax, sigmoid
# scores) and rtol: measured on four healthy onnxconverter-common conversions (PP-OCR cls
# and rec, ddddocr det; every tensor tapped) the outputs moved by 0.9, 0.9 and 2.8 ulps of
# their largest value, so 8 leaves room while a real change (a wrong value, a dropped
# node) stays far beyond it. float32 and float64 models stay bit-exact.
FLOAT16_ULP = 2.0**-10
FLOAT16_TAP_TOLERANCE = Tolerance(atol=8 * FLOAT16_ULP, rtol=8 * FLOAT16_ULP)


def computes_in_float16(types: Mapping[str, onnx.TypeProto]) -> bool:
    """True when any of these tensor types is float16 (a converted model's activations)."""
    return any(t.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for t in types.values())


def select_taps(
    model: Model, names: Iterable[str] = ("all",), *, ops: Iterable[str] = ()
) -> list[str]:
    """Resolve tap names (tensor or node names, globs, ``all``) plus op types into tensor
    names, in topological order: main-graph names, and qualified names of tensors inside
    If/Loop/Scan bodies (``If_0/then_branch/x``), placed before their holder's outputs.

    Graph inputs and initializers are not tapped (they are known without a run), so
    they are neither accepted nor suggested.

    Raises:
        NameNotFoundError: Unknown names, with suggestions among node outputs and node
            names; a graph input or weight named explicitly (the error says why).
    """
    chosen = set(
        resolve_tensors(
            model,
            list(names),
            ops=ops,
            allow_inputs=False,
            what="node or node output",
            bodies=True,
        )
    )
    facts = graph_facts(model)
    inside: dict[int, list[str]] = {}  # holder node index -> its body taps, in body order
    for name, t in body_tensors(model).items():
        if name in chosen:
            inside.setdefault(t.holder, []).append(name)
    order: list[str] = []
    for i in facts.node_order():
        order += inside.get(i, [])
        order += [o for o in facts.graph.node[i].output if o and o in chosen]
    return list(dict.fromkeys(order))


def not_tappable(model: Model) -> dict[str, str]:
    """Tensors inside bodies of ops other than If/Loop/Scan (name -> holding node):
    listed, never silently skipped, because they cannot be exposed."""
    return untappable_body_tensors(model)


def learn_types(
    model: Model, names: Sequence[str], options: RunOptions | None = None
) -> dict[str, onnx.TypeProto]:
    """Types for ``names``: ONNX shape inference first, onnxruntime for the rest.

    onnxruntime types every tensor while building a session, so asking it costs a session,
    not a run. ``options`` provides the custom op libraries that session needs (its
    optimisation level is always "disabled": typing needs no optimisation).
    """
    found: dict[str, onnx.TypeProto] = {}
    # Inference on the skeleton (cached per model); when it gives up, the declarations.
    infos = inferred_value_infos(model) or [
        *model.proto.graph.value_info,
        *model.proto.graph.output,
    ]
    wanted = set(names)  # a set: `in` on the list made typing quadratic in the taps
    for vi in infos:
        if vi.name in wanted and vi.name not in found and vi.type.tensor_type.elem_type:
            found[vi.name] = vi.type
    rest = [n for n in names if n not in found]
    if rest:
        libraries = options.custom_op_libraries if options is not None else ()
        typing = RunOptions(optimization="disabled", custom_op_libraries=libraries)
        for name, info in runtime_infos(model, rest, typing).items():
            if info.dtype is not None:
                found[name] = value_info_of(info).type
    return found


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
        topological order (body tensors under their qualified names, see
        :mod:`surgeon.edits.tap_bodies`), ``details["branch_markers"]`` the outputs
        saying which branch of each If on their way ran, and ``details["not_tappable"]``
        the body tensors that could not be exposed (-> the holding node, or the reason).

    Raises:
        NameNotFoundError: A name matches nothing (with close matches).
    """
    names = list(names)
    ops = list(ops)
    # plan: which tensors, and their types
    taps = select_taps(model, names, ops=ops)
    bodies = plan_body_taps(model, taps)
    graph_outputs = set(model.output_names)
    new_taps = [t for t in taps if t not in graph_outputs and t not in body_tensors(model)]
    run_options = dataclasses.replace(
        VERIFY_OPTIONS, custom_op_libraries=tuple(custom_op_libraries)
    )
    types = learn_types(model, new_taps, run_options) if new_taps else {}
    untyped = [t for t in new_taps if t not in types]
    unstackable: dict[str, str] = {}

    def change(proto: onnx.ModelProto) -> None:
        append_outputs(proto, new_taps, types)
        bodies.expose(proto)

    def edit() -> Edited:
        return apply_edit(
            model,
            "tap",
            {"names": names, "ops": ops},
            change,
            # the correspondence: every original output bit-identical
            lambda tapped: Correspondence(
                "tap: original outputs unchanged", pairs=[(o, o) for o in model.output_names]
            ),
            check=Check(verify, feeds, feed_options, run_options),
            label="tapped",
            details=lambda tapped, report: {
                "taps": [t for t in taps if t not in bodies.untyped and t not in unstackable],
                "untyped": untyped,
                "not_tappable": {
                    **not_tappable(model),
                    **{t: "(not a tensor, or its dtype unknown)" for t in bodies.untyped},
                    **unstackable,
                },
                "branch_markers": list(bodies.markers),
            },
        )

    while True:
        try:
            return edit()
        except RuntimeFailure:
            # A Loop/Scan tap whose shape changes between iterations cannot be stacked:
            # tap again with fewer of them (staged), listed as not tappable.
            narrower = bodies.narrower()
            if narrower is None:
                raise
            bodies, dropped = narrower
            unstackable.update(dict.fromkeys(dropped, UNSTACKABLE))
