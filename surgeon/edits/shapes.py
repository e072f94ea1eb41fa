"""Input/output shapes: set dims static or symbolic after export (``reshape_io``), then
prove the model still gives the same values and really runs at several sizes.

``reshape_io`` is the ``dynamic_axes`` of an export, applied afterwards: it rewrites the
declared dims of inputs and outputs, re-runs ONNX shape inference, drops stale
value_info, and then checks the result twice over: at the original's input sizes the
edited model must give the original's values bit for bit, and ``check_dynamic`` must run
it at two or more sizes of every dynamic dim with outputs of the expected shapes.

The dims are parsed by :mod:`surgeon.dims`; the runtime check is
:func:`surgeon.dynamic.check_dynamic`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import onnx

from surgeon.compare import DiffReport, Tolerance
from surgeon.dims import Dim, as_dims, dims_list, dims_text
from surgeon.dynamic.batch import BATCH_TOLERANCE
from surgeon.dynamic.check import check_dynamic, dynamic_dims, refuse_large_cases, size_cases
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.produced import Produced, produced_outputs, rank_problem
from surgeon.errors import NameNotFoundError, SurgeonError, UsageError, unknown_name
from surgeon.feeds import (
    FeedOptions,
    make_feeds,
    resolve_shapes,
)
from surgeon.graph_facts import inferred_graph
from surgeon.model import Model, value_info_to_tensor_info
from surgeon.npz import read_npz_index
from surgeon.runner import RunOptions


# ---------------------------------------------------------------------- reshape_io
def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[Dim]) -> None:
    tt = vi.type.tensor_type
    tt.ClearField("shape")
    shape = tt.shape
    shape.SetInParent()  # a rank-0 spec must still say "scalar", not "unknown rank"
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def _clean_unknown(vi: onnx.ValueInfoProto) -> None:
    """Inference names unknown dims ``unk__3``; they name nothing, so leave them unnamed."""
    if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith("unk__"):
                d.ClearField("dim_param")


def _collect_specs(
    model: Model,
    specs: Mapping[str, str | Sequence[Dim]] | None,
    role: str,
    rank_changes: list[str] | None = None,
) -> dict[str, tuple[Dim, ...]]:
    """The parsed dims per name; a rank change is refused, or for outputs collected in
    ``rank_changes`` when given (the run decides: a declaration may be the wrong one)."""
    specs = dict(specs or {})
    infos = {i.name: i for i in (model.inputs if role == "input" else model.outputs)}
    parsed = {}
    errors: list[NameNotFoundError] = []
    problems: list[str] = []
    for name, spec in specs.items():
        if name not in infos:
            errors.append(unknown_name(role, name, list(infos), model.name, model_path=model.path))
            continue
        try:
            dims = as_dims(spec)
        except UsageError as e:
            problems.append(f"{role} `{name}`: {e.message}")
            continue
        old = infos[name].shape
        if old is not None and len(old) != len(dims) and rank_changes is not None:
            rank_changes.append(name)
        elif old is not None and len(old) != len(dims):
            problems.append(
                f"{role} `{name}` has rank {len(old)} ({dims_text(old)}); "
                f"the new dims {dims_text(dims)} have rank {len(dims)}"
            )
        parsed[name] = dims
    if errors or problems:
        all_problems = [e.message for e in errors] + problems
        if len(all_problems) == 1 and errors:
            raise errors[0]
        raise UsageError(f"cannot set the {role} dims of {model.name}", problems=all_problems)
    return parsed


def _fits(shapes: Mapping[str, Sequence[int]], model: Model) -> bool:
    for info in model.inputs:
        shape = shapes.get(info.name)
        if shape is None or info.shape is None:
            continue
        if len(shape) != len(info.shape):
            return False
        if any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(info.shape, shape, strict=True)
        ):
            return False
    return True


def _rewrite_dims(
    proto: onnx.ModelProto,
    in_specs: Mapping[str, tuple[Dim, ...]],
    out_specs: Mapping[str, tuple[Dim, ...]],
    old_outputs: Mapping,
    symbol_map: Mapping[str, str],
    out_types: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Set the new dims on ``proto`` in place, re-infer the outputs not given, refresh the
    value_info; returns the counts of value_info refreshed, cleared and added."""
    g = proto.graph
    for vi in g.input:
        if vi.name in in_specs:
            _set_dims(vi, in_specs[vi.name])
    for vi in g.output:
        if vi.name in out_specs:
            _set_dims(vi, out_specs[vi.name])
        elif vi.type.tensor_type.HasField("shape"):
            # Let inference decide afresh; the old dims are the fallback below.
            vi.type.tensor_type.ClearField("shape")
    old_value_info = list(g.value_info)
    del g.value_info[:]
    inferred = inferred_graph(Model(proto))  # None when inference gives up
    inferred_vi = {}
    inferred_out = {}
    if inferred is not None:
        inferred_vi = {v.name: v for v in inferred.value_info}
        inferred_out = {v.name: v for v in inferred.output}
    for vi in g.output:
        if vi.name in out_specs:
            continue
        old = old_outputs[vi.name].shape
        new = inferred_out.get(vi.name)
        new_info = value_info_to_tensor_info(new) if new is not None else None
        if new_info is not None and new_info.shape is not None:
            dims = []
            for axis, d in enumerate(new_info.shape):
                if isinstance(d, str) and d.startswith("unk__"):
                    d = None
                before = old[axis] if old is not None and len(old) == len(new_info.shape) else None
                if d is None and isinstance(before, str):
                    d = symbol_map.get(before, before)  # the export named it: keep the name
                dims.append(d)
            _set_dims(vi, dims)
        elif old is not None:
            _set_dims(vi, [symbol_map.get(d, d) if isinstance(d, str) else d for d in old])
    for vi in g.output:
        new = inferred_out.get(vi.name)
        tt = vi.type.tensor_type
        if (out_types or {}).get(vi.name):
            tt.elem_type = out_types[vi.name]  # what the run produced
        if not tt.elem_type and new is not None and new.type.tensor_type.elem_type:
            tt.elem_type = new.type.tensor_type.elem_type
        if not tt.elem_type:
            vi.ClearField("type")  # dims without an element type do not load; untyped does
    refreshed = cleared = 0
    for vi in old_value_info:
        new = inferred_vi.get(vi.name)
        if new is not None:
            g.value_info.append(new)
            _clean_unknown(g.value_info[-1])
            refreshed += 1
        else:
            # Stale: keep the element type, drop the shape inference could not confirm.
            kept = g.value_info.add()
            kept.CopyFrom(vi)
            if kept.type.tensor_type.HasField("shape"):
                kept.type.tensor_type.ClearField("shape")
                cleared += 1
    # Tensors inference typed that the model did not declare: declare them too.
    known = (
        {x.name for x in old_value_info} | {x.name for x in g.input} | {x.name for x in g.output}
    )
    added = [v for name, v in inferred_vi.items() if name not in known]
    for v in added:
        g.value_info.append(v)
        _clean_unknown(g.value_info[-1])
    return {"refreshed": refreshed, "cleared": cleared, "added": len(added)}


def reshape_io(
    model: Model,
    inputs: Mapping[str, str | Sequence[Dim]] | None = None,
    outputs: Mapping[str, str | Sequence[Dim]] | None = None,
    *,
    check: bool = True,
    sizes: Mapping[str, Sequence[int]] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    batch: Sequence[str] | None = None,
    batch_tolerance: Tolerance = BATCH_TOLERANCE,
    tolerance: Tolerance = Tolerance(),
    declare_outputs: bool = False,
) -> Edited:
    """Set the dims of inputs and outputs static or symbolic, then prove the model runs.

    Args:
        model: The model (not modified).
        inputs: Input name -> dims, as ``"Bx3xHxW"`` or a sequence of ints, names and
            None (unnamed dynamic).
        outputs: Output name -> dims, likewise. Outputs not given get their dims from
            shape inference, or keep theirs with input symbols renamed along.
        check: Run :func:`check_dynamic` on the result (its rows join the report).
        sizes: Sizes to try per dim name (see :func:`check_dynamic`).
        feed_options: Inputs for the comparison with the original at its sizes; its
            seed and ``max_feed_bytes`` apply to the runtime check too.
        options: onnxruntime settings for both checks (default: the value comparison
            runs with optimisations off, the runtime check with onnxruntime's defaults).
        batch, batch_tolerance: The batch dims and the tolerance of their item check
            (see :func:`check_dynamic`).
        tolerance: How close the values at the original's sizes must be (default
            bit-identical).
        declare_outputs: Declare every output's element type and dims as the model
            really produces them (run at the sizes the check tries, with the new input
            dims; see :mod:`surgeon.edits.produced`), replacing a stale declaration.
            Dims given in ``outputs`` still win. An output whose given dims change its
            declared rank runs the model likewise: the change is allowed when the model
            really produces that rank.

    Returns:
        Edited whose report holds the value comparison with the original at the
        original's sizes and one row per output per size tried; ``details`` has the old
        and new dims, ``export`` sizes, the value_info counts and ``dynamic`` (the
        check's dict).

    Raises:
        NameNotFoundError: An input or output that does not exist.
        UsageError: A dims spec that does not parse, changes an input's rank, or changes
            an output's rank to one the model does not produce (the message gives the
            shape it does produce); with ``declare_outputs``, a dynamic dim no run
            could vary or an output whose rank changes with the sizes.
        RuntimeFailure: When the model must run to learn its outputs, and cannot.
    """
    in_specs = _collect_specs(model, inputs, "input")
    rank_changes: list[str] = []
    out_specs = _collect_specs(model, outputs, "output", rank_changes)
    if not in_specs and not out_specs and not declare_outputs:
        raise UsageError(
            f"nothing to change in {model.name}: give the dims of an input or an output"
        )
    old_inputs = {i.name: i for i in model.inputs}
    old_outputs = {o.name: o for o in model.outputs}

    # Export sizes (a static dim made dynamic) and renamed symbols (batch -> B).
    export: dict[str, int] = {}
    renames: dict[str, set] = {}
    for name, dims in in_specs.items():
        old = old_inputs[name].shape or (None,) * len(dims)
        for axis, (o, n) in enumerate(zip(old, dims, strict=True)):
            var = n if isinstance(n, str) else f"{name}[{axis}]"
            if isinstance(o, int) and o > 0 and not isinstance(n, int):
                export.setdefault(var, o)
            if isinstance(o, str) and isinstance(n, str) and o != n:
                renames.setdefault(o, set()).add(n)
    symbol_map = {o: next(iter(n)) for o, n in renames.items() if len(n) == 1}
    params = {
        "inputs": {k: dims_text(v) for k, v in in_specs.items()},
        "outputs": {k: dims_text(v) for k, v in out_specs.items()},
    }
    produced: dict[str, Produced] = {}
    out_types: dict[str, int] = {}
    if declare_outputs or rank_changes:
        produced = _run_outputs(
            model, in_specs, old_outputs, sizes, export, feed_options, options, batch
        )
        problems = [
            p
            for p in (rank_problem(n, out_specs[n], produced.get(n)) for n in rank_changes)
            if p is not None
        ]
        if problems:
            raise UsageError(
                f"cannot set the output dims of {model.name}",
                problems=problems,
                hint="Give dims of the rank the model produces, or have every output "
                "declared as the model produces it.",
            )
    if declare_outputs:
        params["declare_outputs"] = True
        for name, p in produced.items():
            out_specs.setdefault(name, p.dims)
            if p.elem_type:
                out_types[name] = p.elem_type
    counts: dict[str, int] = {}
    dynamic_result: dict = {}

    def change(proto: onnx.ModelProto) -> None:
        counts.update(_rewrite_dims(proto, in_specs, out_specs, old_outputs, symbol_map, out_types))

    def correspondence(edited: Model) -> Correspondence:
        if check:
            # The sizes the runtime check will try are refused (too large, unknown dims)
            # now, before the value comparison runs.
            variables = dynamic_dims(edited, sizes, export, batch)
            refuse_large_cases(edited, size_cases(edited, variables), feed_options.max_feed_bytes)
        # Inputs the feeds file gives keep its values' shapes.
        given = (
            {k: e.shape for k, e in read_npz_index(feed_options.npz).items()}
            if feed_options.npz
            else {}
        )
        shapes = _comparable_shapes(model, edited, feed_options, given)
        if shapes is None:
            return Correspondence("reshape-io: runs at other sizes", unavailable=UNCOMPARABLE)
        # replace, not a fresh FeedOptions: the seed, values and size limit the caller
        # set all hold. dims={}: ``shapes`` already resolves every dim of every input.
        chosen = {k: v for k, v in shapes.items() if k not in given}
        return Correspondence(
            "reshape-io: same values at the original's sizes, and runs at other sizes",
            feeds=make_feeds(model, replace(feed_options, shapes=chosen, dims={})),
        )

    def finish(edited: Model, report: DiffReport, values) -> None:
        # The report's first rows compare values with the original; the rest are the
        # runtime check's, one per output per size.
        dynamic_result["value_rows"] = len(report.tensors)
        if check:
            dynamic = check_dynamic(
                edited,
                sizes=sizes,
                export=export,
                # The given values and the seed hold at every size; the chosen shapes
                # were for the original's sizes (the comparison above), not those tried.
                feed_options=replace(feed_options, shapes={}, dims={}),
                options=options,
                batch=batch,
                batch_tolerance=batch_tolerance,
            )
            report.tensors += dynamic.tensor_diffs()
            report.notes += [s.message() for s in dynamic.suspects] + dynamic.notes
            dynamic_result["dynamic"] = dynamic.to_dict()

    def details(edited: Model, report) -> dict:
        return {
            "inputs": [
                {"name": n, "old": dims_list(old_inputs[n].shape), "new": dims_list(d)}
                for n, d in in_specs.items()
            ],
            "outputs": [
                {
                    "name": o.name,
                    "old": dims_list(old_outputs[o.name].shape),
                    "new": dims_list(o.shape),
                    "given": o.name in (outputs or {}),
                    "produced": dims_list(produced[o.name].shape) if o.name in produced else None,
                    # declared from the run, not by the caller nor by inference
                    "as_run": declare_outputs
                    and o.name in produced
                    and o.name not in (outputs or {}),
                }
                for o in edited.outputs
            ],
            "export": export,
            "value_info": counts,
            "dynamic": dynamic_result.get("dynamic"),
            "value_rows": dynamic_result["value_rows"],
            "notes": [UNCOMPARABLE] if report.notes[:1] == [UNCOMPARABLE] else [],
        }

    # Values at the original's sizes must not change. Optimisations off by default: with
    # static dims onnxruntime may pick other kernels than with symbolic ones (see
    # surgeon.edits.extract.VERIFY_OPTIONS), and bit-identity is the promise here.
    return apply_edit(
        model,
        "reshape_io",
        params,
        change,
        correspondence,
        check=Check(
            True, None, feed_options, options or RunOptions(optimization="disabled"), tolerance
        ),
        label="reshaped",
        details=details,
        finish=finish,
    )


def _run_outputs(
    model: Model,
    in_specs: Mapping[str, tuple[Dim, ...]],
    old_outputs: Mapping,
    sizes,
    export: Mapping[str, int],
    feed_options: FeedOptions,
    options: RunOptions | None,
    batch: Sequence[str] | None,
) -> dict[str, Produced]:
    """The outputs as ``model`` with the new input dims produces them (the outputs'
    declared dims left out, so that a stale one cannot stop it loading)."""
    probe = model.copy()
    for vi in probe.proto.graph.input:
        if vi.name in in_specs:
            _set_dims(vi, in_specs[vi.name])
    for vi in probe.proto.graph.output:
        vi.ClearField("type")  # untyped outputs load; onnxruntime infers them
    return produced_outputs(
        probe,
        sizes=sizes,
        export=export,
        feed_options=feed_options,
        options=options,
        batch=batch,
        old={n: o.shape for n, o in old_outputs.items()},
    )


UNCOMPARABLE = (
    "the new static dims do not fit the original's inputs, so values could not be "
    "compared with it; only the runtime check below applies"
)


def _comparable_shapes(
    model: Model, edited: Model, feed_options: FeedOptions, given: dict[str, tuple]
) -> dict[str, tuple] | None:
    """Input shapes both the original and the edited model accept: the caller's for the
    original when they fit the edited model (``given``: the shapes of the feeds file's
    values), else the edited model's defaults when they fit the original; None when
    neither does."""
    try:
        ref_shapes = resolve_shapes(model, feed_options, given=given)
    except SurgeonError:
        ref_shapes = None
    if ref_shapes is not None and _fits(ref_shapes, edited):
        return ref_shapes
    try:
        # The caller's shapes, dims and values were for the original, which these
        # dims do not fit: the edited model's own defaults decide.
        new_shapes = resolve_shapes(edited, replace(feed_options, shapes={}, dims={}, npz=None))
    except SurgeonError:
        return None
    return new_shapes if _fits(new_shapes, model) else None
