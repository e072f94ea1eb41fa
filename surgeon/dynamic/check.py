"""The size check of :func:`check_dynamic`: which dims are dynamic and what sizes to try
(the rule is in :mod:`surgeon.dynamic`), one run per size, and the output shapes each
run must have."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from surgeon.baked import SHAPE_INPUTS
from surgeon.compare import Tolerance
from surgeon.dims import dims_text
from surgeon.dynamic.batch import BATCH_TOLERANCE, batch_case, check_items, find_batch_mixer
from surgeon.dynamic.results import (
    ORT_NODE,
    DimVariable,
    DynamicCheck,
    OutputCheck,
    SizeCase,
    Suspect,
    short_error,
)
from surgeon.dynamic.suspects import add_origins, find_suspects
from surgeon.errors import SurgeonError, UsageError, unknown_name
from surgeon.feeds import (
    MAX_DIM,
    FeedOptions,
    NpzEntry,
    check_feed_size,
    make_feeds,
    read_npz_index,
    resolve_shapes,
)
from surgeon.model import Model, TensorInfo
from surgeon.runner import RunOptions

BATCH_NAMES = {"n", "b", "batch", "batch_size", "batchsize", "bs", "num_batches"}
SPATIAL_NAMES = {"h", "w", "height", "width", "d", "depth", "x", "y", "img_h", "img_w"}
SEQUENCE_NAMES = {"t", "l", "s", "len", "seq", "time"}
SEQUENCE_WORDS = ("seq", "length", "time", "token", "frame", "step")
DEFAULT_SIZES = {"batch": (1, 3), "spatial": (64, 96), "other": (16, 24)}


# ---------------------------------------------------------------------- check_dynamic
def _kind(name: str, axis: int, rank: int, named: bool) -> str:
    """batch, spatial or other (the module docstring's rule)."""
    low = name.lower()
    if low in BATCH_NAMES or "batch" in low:
        return "batch"
    if low in SPATIAL_NAMES or "height" in low or "width" in low:
        return "spatial"
    if named and (low in SEQUENCE_NAMES or any(w in low for w in SEQUENCE_WORDS)):
        # [seq, batch, C] layouts: axis 0 is time there, and time steps are not items.
        return "other"
    if axis == 0 and rank >= 2:
        # Rank 1 is excluded: a lone [N] axis is as often samples or tokens as items.
        return "batch"
    if rank in (4, 5) and axis >= 2:
        return "spatial"
    return "other"


def dynamic_dims(
    model: Model,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
    batch: Sequence[str] | None = None,
    *,
    first: Mapping[str, int] | None = None,
) -> list[DimVariable]:
    """The dynamic dims of ``model``'s inputs with the sizes to try (module docstring).

    Args:
        batch: The dims that are batch dims, overriding the naming rule (an empty list:
            none is).
        first: A size to try first per dim (a chosen shape, a given value's size),
            before ``sizes`` or the rule's sizes.

    Raises:
        UsageError: ``sizes`` or ``batch`` names a dim the inputs do not have, or
            ``sizes`` gives a size < 1.
    """
    sizes = dict(sizes or {})
    export = dict(export or {})
    found: dict[str, DimVariable] = {}
    for info in model.inputs:
        if info.shape is None:
            continue
        for axis, d in enumerate(info.shape):
            if isinstance(d, int) and d > 0:
                continue
            name = d if isinstance(d, str) else f"{info.name}[{axis}]"
            if name not in found:
                kind = _kind(name, axis, len(info.shape), isinstance(d, str))
                found[name] = DimVariable(name, [], kind, [])
            found[name].axes.append((info.name, axis))
    problems = []
    for name in batch or ():
        if name not in found:
            err = unknown_name("dynamic dim", name, list(found), model.name)
            problems.append(f"batch dims: {err.message}")
    if batch is not None:
        for var in found.values():
            if var.name in batch:
                var.kind = "batch"
            elif var.kind == "batch":
                var.kind = "other"
    for name, values in sizes.items():
        if name not in found:
            err = unknown_name("dynamic dim", name, list(found), model.name)
            problems.append(err.message + ("" if found else " (its inputs have no dynamic dims)"))
        elif not values or any(not 1 <= int(v) <= MAX_DIM for v in values):
            problems.append(
                f"sizes for `{name}` must be integers >= 1 (and below 2^63), got {list(values)}"
            )
    if problems:
        raise UsageError(f"cannot check {model.name} at the given sizes", problems=problems)
    for var in found.values():
        var.export = export.get(var.name)
        if first and var.name in first:
            head = [int(first[var.name])]
        else:
            head = [var.export] if var.export else []
        rest = sizes[var.name] if var.name in sizes else DEFAULT_SIZES[var.kind]
        if var.name in sizes and not (first and var.name in first):
            head = []  # the given sizes are the whole list
        var.values = list(dict.fromkeys(head + [int(v) for v in rest]))
    return list(found.values())


def size_cases(
    model: Model,
    variables: Sequence[DimVariable],
    given: Mapping[str, Sequence[int]] | None = None,
) -> list[SizeCase]:
    """The runs to make: every dim at its first size, then one dim varied at a time.
    ``given``: the shapes of given values, used for inputs of unknown rank."""
    base = {v.name: v.values[0] for v in variables}
    plans: list[tuple[dict[str, int], str | None]] = [(base, None)]
    for v in variables:
        for value in v.values[1:]:
            plans.append(({**base, v.name: value}, v.name))
    axis_var = {ax: v.name for v in variables for ax in v.axes}
    cases = []
    for dims, varied in plans:
        shapes = {}
        for info in model.inputs:
            if given and info.name in given and info.shape is None:
                shapes[info.name] = [int(n) for n in given[info.name]]
                continue
            shape = []
            for axis, d in enumerate(info.shape or ()):
                var = axis_var.get((info.name, axis))
                shape.append(dims[var] if var is not None else int(d))
            shapes[info.name] = shape
        cases.append(SizeCase(dict(dims), varied, shapes))
    return cases


def refuse_large_cases(
    model: Model,
    cases: Sequence[SizeCase],
    limit: int | None,
    given: Mapping[str, NpzEntry] | None = None,
) -> None:
    """Refuse, before anything runs, when the inputs of any case would pass ``limit``
    (rather than after the small sizes have run). ``given``: the inputs whose values
    come from an ``.npz``."""
    for case in cases:
        shapes = {k: tuple(v) for k, v in case.input_shapes.items()}
        check_feed_size(model, shapes, given or {}, limit, chosen_by="the sizes tried")


def given_dims(
    model: Model, options: FeedOptions
) -> tuple[dict[str, NpzEntry], dict[str, int], dict[str, int], list[str]]:
    """What the feed options fix for the size check.

    Returns:
        The ``.npz`` entries of the model's inputs; the first size of each dim a given
        value or a chosen shape (``shapes``/``dims``) sets; notes saying so.

    Raises:
        UsageError: The chosen shapes do not fit the model (unknown inputs or dims,
            wrong rank, a static dim contradicted), two given values disagree on a dim,
            or a chosen shape contradicts a given value.
    """
    index = read_npz_index(options.npz) if options.npz else {}
    infos = {i.name: i for i in model.inputs}
    index = {k: e for k, e in index.items() if k in infos}  # others: make_feeds names them
    # The chosen shapes are checked as in any run (unknown names, ranks, static dims).
    resolve_shapes(model, replace(options, npz=None), given={k: e.shape for k, e in index.items()})
    problems: list[str] = []
    pinned: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, entry in index.items():
        info = infos[name]
        if info.shape is None or len(info.shape) != len(entry.shape):
            continue  # unknown rank: nothing to pin; a wrong rank: make_feeds says so
        for axis, d in enumerate(info.shape):
            if isinstance(d, int) and d > 0:
                continue
            var = d if isinstance(d, str) else f"{name}[{axis}]"
            size = int(entry.shape[axis])
            if var in pinned and pinned[var] != size:
                problems.append(
                    f"the dim `{var}` is {pinned[var]} in the given value of `{origin[var]}` "
                    f"but {size} in that of `{name}`"
                )
                continue
            pinned.setdefault(var, size)
            origin.setdefault(var, name)
    first: dict[str, int] = {}
    for name, shape in options.shapes.items():
        info = infos.get(name)
        if info is None or info.shape is None or name in index:
            continue
        for axis, (d, size) in enumerate(zip(info.shape, shape, strict=False)):
            if not (isinstance(d, int) and d > 0):
                first[d if isinstance(d, str) else f"{name}[{axis}]"] = int(size)
    first.update(options.dims)
    for var, size in first.items():
        if var in pinned and pinned[var] != size:
            problems.append(
                f"the chosen size {var}={size} contradicts the given value of "
                f"`{origin[var]}`, where `{var}` is {pinned[var]}"
            )
    if problems:
        raise UsageError(
            f"the given input values and shapes of {model.name} do not agree", problems=problems
        )
    notes = []
    if index:
        notes.append(
            "given input values, used in every run their shape fits (elsewhere random): "
            + ", ".join(f"`{k}` {list(e.shape)}" for k, e in index.items())
        )
    return index, {**pinned, **first}, notes


def _expected(info: TensorInfo, dims: Mapping[str, int]) -> list[int | None] | None:
    if info.shape is None:
        return None
    return [
        d if isinstance(d, int) and d > 0 else (dims.get(d) if isinstance(d, str) else None)
        for d in info.shape
    ]


def _check_output(
    name: str, value: np.ndarray, info: TensorInfo, dims: Mapping[str, int]
) -> OutputCheck:
    if value is None or isinstance(value, (list, tuple, dict)):
        return OutputCheck(name, None, None, True)  # a sequence or optional: no shape to check
    shape = [int(s) for s in np.shape(value)]
    expected = _expected(info, dims)
    if expected is None:
        return OutputCheck(name, shape, None, True)
    if len(shape) != len(expected):
        return OutputCheck(
            name,
            shape,
            expected,
            False,
            f"rank {len(shape)}, but the model declares {dims_text(info.shape)}",
        )
    wrong = []
    for axis, (got, want, declared) in enumerate(zip(shape, expected, info.shape, strict=True)):
        if want is not None and got != want:
            why = f"{declared}={want}" if isinstance(declared, str) else "static"
            wrong.append(f"dim {axis} is {got}, expected {want} ({why})")
    return OutputCheck(name, shape, expected, not wrong, "; ".join(wrong))


def _mark_folded_outputs(case: SizeCase, item) -> None:
    """An output the item check found without the batch (its shape is not the items'
    stacked) has the wrong shape at that size, whatever its declaration allowed: the
    "sizes tried" row says so too, instead of "ok" beside a folded output."""
    for out in item.outputs:
        if out.ok or out.batch_axis is not None or out.shape == out.item_shape:
            continue
        for row in case.outputs:
            if row.name == out.name and row.ok:
                row.ok = False
                row.problem = (
                    f"does not carry the batch: one item gives {out.item_shape} "
                    "(see the batch items)"
                )


def _case_feeds(
    model: Model,
    case: SizeCase,
    options: FeedOptions,
    given: Mapping[str, NpzEntry],
    given_values: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The feeds of one run: a given value wherever its shape is the case's shape (the
    first case: always, its sizes are the given ones), random values elsewhere. The
    given values are read once, by the first case (into ``given_values``)."""
    shapes = {k: tuple(v) for k, v in case.input_shapes.items()}
    fits = {k for k, e in given.items() if tuple(e.shape) == shapes[k]}
    if not given_values and fits == set(given):
        # make_feeds reads and checks the .npz (dtypes, ranks, static dims).
        feeds = make_feeds(
            model,
            replace(options, shapes={k: v for k, v in shapes.items() if k not in given}, dims={}),
        )
        given_values.update({k: feeds[k] for k in given})
        return feeds
    feeds = make_feeds(model, replace(options, npz=None, shapes=shapes, dims={}))
    feeds.update({k: given_values[k] for k in fits if k in given_values})
    return feeds


def plan_cases(
    model: Model,
    sizes: Mapping[str, Sequence[int]] | None,
    export: Mapping[str, int] | None,
    batch: Sequence[str] | None,
    feed_options: FeedOptions,
) -> tuple[dict[str, NpzEntry], list[str], list, list[SizeCase]]:
    """The size cases to run ``model`` at, refused before anything runs when an input
    has unknown rank or a case's inputs would pass ``feed_options.max_feed_bytes``.

    Returns:
        (the inputs the feeds file gives, notes, the dynamic dims, the cases).
    """
    given, first, notes = given_dims(model, feed_options)
    unknown_rank = [i.name for i in model.inputs if i.shape is None and i.name not in given]
    if unknown_rank:
        raise UsageError(
            f"cannot check {model.name}: input(s) {', '.join(f'`{n}`' for n in unknown_rank)} "
            "have unknown rank",
            hint="Declare their dims first (surgeon reshape-io), or give their values.",
        )
    variables = dynamic_dims(model, sizes, export, batch, first=first)
    cases = size_cases(model, variables, {k: e.shape for k, e in given.items()})
    refuse_large_cases(model, cases, feed_options.max_feed_bytes, given)
    return given, notes, variables, cases


def run_cases(model: Model, session, cases, feed_options: FeedOptions, given):
    """Run ``session`` at every case, in order: yields (case, feeds, output values or
    None, the SurgeonError of a failed run or None). The given values are read from the
    feeds file once, by the first case."""
    given_values: dict[str, np.ndarray] = {}
    for case in cases:
        feeds = _case_feeds(model, case, feed_options, given, given_values)
        try:
            yield case, feeds, session.run(feeds), None
        except SurgeonError as e:
            yield case, feeds, None, e


def check_dynamic(
    model: Model,
    *,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    batch: Sequence[str] | None = None,
    batch_tolerance: Tolerance = BATCH_TOLERANCE,
) -> DynamicCheck:
    """Run ``model`` at several sizes of each dynamic input dim and check output shapes.

    Args:
        model: The model to check.
        sizes: Sizes to try per dim name (``{"H": [224, 320]}``); unnamed dims are named
            ``input[axis]``. Other dims follow the rule in the module docstring.
        export: The size each dim had at export, when known (tried first, and used to
            recognise baked constants).
        feed_options: The input values. An input whose value the ``.npz`` gives gets
            that value in every run where its shape fits: a value of static shape (a
            sample-rate scalar that picks an If branch) in every run; a value with
            dynamic dims sets the first size of those dims (so the first run uses it),
            and where a run varies them the input is random. ``shapes``/``dims`` choose
            the first size of the dims they set likewise. The other sizes come from
            ``sizes`` or the rule. Its ``seed`` seeds the random inputs and its
            ``max_feed_bytes`` bounds the inputs of one run (None: no limit). (The
            old ``seed=``/``max_feed_bytes=`` keywords said the same twice; they are
            gone.)
        options: onnxruntime settings.
        batch: The batch dims, overriding the rule of the module docstring (``[]``:
            none, which skips the item check).
        batch_tolerance: How close item i of a batch run must be to the batch-1 run of
            item i.

    Returns:
        A DynamicCheck, truthy when every size ran with the expected output shapes and
        the items of every batch dim are independent; when not, ``suspects`` names the
        nodes that likely hold a baked size or fold/mix the batch.

    Raises:
        UsageError: ``sizes`` or ``batch`` names unknown dims or dims a given value
            fixes, ``sizes`` gives sizes < 1 or beyond int64, the feed options do not fit
            the model, or the inputs of a run would take more than ``max_feed_bytes``.
        SurgeonError: A given value does not fit its input (dtype, rank, static dims).
    """
    from surgeon.runner import Session

    given, notes, variables, cases = plan_cases(model, sizes, export, batch, feed_options)
    if not variables:
        notes.append("the inputs have no dynamic dims: the model ran once, at its static shapes")
    declared = {o.name: o for o in model.outputs}
    # A model onnxruntime cannot load at all (an unknown op, a missing custom op library,
    # damaged weights) is not a size problem: the RuntimeFailure, with its hint, goes to
    # the caller (exit 2) instead of a table of sizes that "did not run".
    session = Session(model, options=options)
    batch_vars = [v for v in variables if v.kind == "batch"]
    runs: dict[int, tuple[dict, dict]] = {}  # id(case) -> (feeds, values), batch checks only
    for case, feeds, values, e in run_cases(model, session, cases, feed_options, given):
        if e is not None:
            match = ORT_NODE.search(e.message)
            case.failed_node = match.group(2) if match else None
            case.error = short_error(e.message)
            continue
        case.ran = True
        case.outputs = [
            _check_output(n, values[n], declared.get(n, TensorInfo(n, None, None)), case.dims)
            for n in model.output_names
        ]
        if any(case.dims[v.name] > 1 for v in batch_vars):
            runs[id(case)] = (feeds, values)
    check = DynamicCheck(model.name, variables, cases, notes=notes, seed=feed_options.seed)
    # Batch means independent items: each batch dim's largest run, split into its items.
    mixers: list[Suspect] = []
    for var in batch_vars:
        case = batch_case(var, cases)
        if case is None:
            if any(c.ran for c in cases):
                check.notes.append(
                    f"batch dim `{var.name}` ran at no size above 1 with the others at their "
                    "first sizes, so its items were not checked"
                )
            continue
        feeds, values = runs[id(case)]
        item = check_items(model, session, var, case, feeds, values, batch_tolerance)
        check.items.append(item)
        _mark_folded_outputs(case, item)
        if not item.passed and item.error is None:
            mixer = find_batch_mixer(model, var, feeds, item.size, batch_tolerance, options)
            if mixer is not None:
                item.mixer = mixer
                mixers.append(mixer)
            else:
                check.notes.append(
                    f"no single node mixes the items of `{var.name}`: each node whose output "
                    "differs, run alone on its items' own inputs stacked, reproduced their "
                    f"{var.name}=1 outputs within tolerance (or could not run alone, e.g. "
                    "a subgraph); the difference is rounding accumulated along the graph "
                    "(see the batch tolerance) or lies inside a subgraph"
                )
    runs.clear()
    if not check.passed:
        check.suspects = mixers + [
            s
            for s in find_suspects(model, variables, cases)
            if (s.node, s.constant) not in {(m.node, m.constant) for m in mixers}
        ]
        add_origins(model, check.suspects)
        if not check.suspects:
            check.notes.append(
                f"no baked constant was found in {'/'.join(SHAPE_INPUTS)} inputs; see "
                "onnxruntime's message for the failing node"
            )
    return check
