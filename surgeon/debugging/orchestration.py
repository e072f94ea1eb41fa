"""``debug()``: tap the tensors, run once with the tap check, measure, blame NaN/Inf, and
compare with the reference; and :func:`save_values` for the tapped values."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from surgeon import fastops
from surgeon.compare import EXACT, DiffReport
from surgeon.debugging import bodies as body_taps
from surgeon.debugging._graph import DebugFacts
from surgeon.debugging.nonfinite import blame_nonfinite, rank_anomaly
from surgeon.debugging.reference import (
    Reference,
    check_pairing,
    compare_layers,
    compares_in_graph,
    feeds_from_activations,
    load_reference,
    reference_only_inputs,
)
from surgeon.debugging.results import DebugOptions, DebugReport
from surgeon.edits.tap import (
    FLOAT16_TAP_TOLERANCE,
    add_outputs,
    computes_in_float16,
    learn_types,
    not_tappable,
    select_taps,
)
from surgeon.edits.tap_bodies import UNSTACKABLE
from surgeon.errors import RuntimeFailure, SurgeonError, UsageError
from surgeon.feeds import describe_feeds, make_feeds
from surgeon.model import Model, dtype_name
from surgeon.protos import weight_bytes
from surgeon.runner import BorrowedWeights, RunOptions, run, through_file
from surgeon.statistics import (
    TensorStats,
    build_stats_model,
    recount_stats,
    run_sizes,
    stats_from_array,
    stats_from_outputs,
)
from surgeon.verification import reference_started, verify


def debug(
    model: Model,
    options: DebugOptions = DebugOptions(),
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DebugReport:
    """Tap tensors of ``model``, compute their statistics, and compare them with a
    reference if one is given.

    Raises:
        NameNotFoundError: Unknown tap names or ``name_map`` entries.
        SurgeonError: The reference cannot be used (e.g. activations without the model's
            inputs).
    """
    taps = select_taps(model, options.taps, ops=options.ops)
    if not taps:
        raise UsageError(f"nothing to tap in {model.name}: the selection matched no node outputs")
    bodies = body_taps.plan_debug_bodies(model, taps)  # taps inside If/Loop/Scan bodies
    taps = [t for t in taps if bodies is None or t not in bodies.untyped]
    # spinning=False: debug runs thousands of small statistics kernels, between which
    # onnxruntime's spinning threads took the cores of a loaded machine (the statistics
    # run 0.6 against 1.0-1.3 s on a YOLOv8n-size model, alternated in one process). Same work split, same numbers, so
    # the tap check stays bit-exact; every run of debug (the reference too) uses it.
    run_options = RunOptions(
        optimization=options.optimization,
        custom_op_libraries=tuple(options.custom_op_libraries),
        spinning=False,
    )
    ref = load_reference(options.reference, options.feed_options.max_feed_bytes)
    if ref is None and options.reference_optimization:
        ref = Reference(
            "self", f"{model.name} at optimization={options.reference_optimization}", model
        )
    ref = body_taps.expose_reference(ref, bodies)
    facts = DebugFacts(model)
    if bodies is not None:
        body_taps.add_body_facts(facts, bodies)
    origin = _origin_lookup(model)
    if ref is not None:
        check_pairing(facts, taps, ref, options)
    if ref is not None and ref.kind == "model":
        # The reference's own inputs (a sample rate the model holds as a constant) may be
        # given in the feeds file too; the model's feeds leave them out.
        own = frozenset(reference_only_inputs(model, ref.source, options))
        options = dataclasses.replace(
            options, feed_options=dataclasses.replace(options.feed_options, other_inputs=own)
        )
    notes: list[str] = []
    if feeds is None:
        feeds, notes = _make_feeds(model, ref, options)
    feeds = dict(feeds)
    # The tap check's plain run of the untapped model starts now, in a thread (see
    # _start_plain_run), and serves whichever path measures the taps below: it overlaps
    # the kernel check, the typing and the tapped model's making and session build.
    started = _start_plain_run(model, feeds, run_options)
    try:
        return _measure_and_compare(
            facts, taps, feeds, ref, options, run_options, notes, origin, bodies, progress, started
        )
    except Exception:
        # (an interruption, Ctrl-C or SIGTERM, is not waited for: the thread is a daemon)
        _abandon(started)
        raise


def _measure_and_compare(
    facts, taps, feeds, ref, options, run_options, notes, origin, bodies, progress, started
) -> DebugReport:
    """:func:`debug` once the feeds are made and the plain run ``started``."""
    model = facts.model
    say = progress or (lambda phase: None)
    # A reference model compared inside onnxruntime needs no candidate values: the
    # tapped run stays a statistics run (compare_layers then merges the two models).
    in_graph = bodies is None and compares_in_graph(model, ref, options)
    if in_graph and _folds(model, options):
        folded = _debug_folded(
            facts, taps, feeds, ref, options, run_options, notes, origin, say, started
        )
        if folded is not None:
            return folded
    has_ref, unstackable = ref is not None and not in_graph, {}
    while True:
        try:
            run = _tap_and_measure(
                facts, taps, feeds, options, run_options, has_ref, say, bodies, started
            )
            break
        except RuntimeFailure as failure:
            # A Loop/Scan tap whose shape changes between iterations cannot be stacked:
            # measure again with fewer of them (staged), and say which were dropped.
            bodies, dropped = body_taps.narrow_after(bodies, failure)
            taps = [t for t in taps if t not in dropped]
            unstackable.update(dict.fromkeys(dropped, UNSTACKABLE))
    if unstackable:
        run.notes.append(body_taps.dropped_note(list(unstackable)))
    body_results = body_taps.finish_body_taps(run.stats, run.values, bodies) if bodies else []
    report = _new_report(model, feeds, options, notes, run.mode)
    report.not_tappable.update(
        {t: "(not a tensor, or its dtype unknown)" for t in (bodies.untyped if bodies else ())}
    )
    report.not_tappable.update(unstackable)
    _fill_from_run(report, run, facts, feeds, origin, bodies)
    if bodies is not None:
        report.bodies = {"taps": [b.to_dict() for b in body_results]}
        executed = {s.name for s in run.stats}
        taps = [t for t in taps if t not in bodies.taps or t in executed]
    if options.keep_values:
        report.values = {t: run.values[t] for t in taps if t in run.values}
    if ref is not None:
        say(f"running the reference {ref.label}")
        compare_layers(report, facts, taps, run.values, feeds, ref, options, run_options, origin)
        if bodies is not None:
            lookup = body_taps.reference_lookup(report, model, feeds, ref, options, run_options)
            body_taps.refine_body_root(report, bodies, run.values, lookup)
    return report


def _new_report(
    model: Model, feeds: Mapping[str, np.ndarray], options: DebugOptions, notes, mode: str
) -> DebugReport:
    """A report before the tapped run: what the run's results are added to."""
    report = DebugReport(
        model=model.name,
        stats=[],
        tap_check=None,
        not_tappable=dict(not_tappable(model)),
        feeds=describe_feeds(feeds),
        seed=options.feed_options.seed,
        optimization=options.optimization,
        mode=mode,
        notes=list(notes),
    )
    report.feed_values = dict(feeds)
    return report


def _fill_from_run(
    report: DebugReport, run: _TapRun, facts: DebugFacts, feeds, origin, bodies=None
) -> None:
    """The tapped run's results into ``report``: statistics with the origins of flagged
    tensors, the tap check, where each NaN/Inf was born, the first anomaly, and the
    declared shapes the run contradicted."""
    model = facts.model
    for s in run.stats:
        if s.flags:
            s.origin = origin(s.node)
    nonfinite = blame_nonfinite(model, run.stats, feeds, facts=facts)
    if bodies is not None:
        body_taps.reblame_body_nonfinite(nonfinite, run.stats, bodies, facts)
    for x in nonfinite:
        if x.fails:
            x.origin = origin(x.node)
    report.stats = run.stats
    report.tap_check = run.tap_check
    report.nonfinite = nonfinite
    report.first_anomaly = rank_anomaly(run.stats, nonfinite, facts.constants)
    report.notes += run.notes
    if run.tap_check is not None:  # name the two sides apart in the report
        run.tap_check.candidate = f"{model.name} (tapped)"
    report.float16 = any(s.dtype == "float16" for s in run.stats)
    report.float16_tap_tolerance = (
        run.tap_check is not None and run.tap_check.tolerance == FLOAT16_TAP_TOLERANCE
    )
    report.shape_mismatches = _declared_vs_real(model, feeds, run.stats, run.values)


def _folds(model: Model, options: DebugOptions) -> bool:
    """Whether debug --ref folds the statistics run into the merged run (see
    :func:`_debug_folded`): surgeon's kernels built, no values kept, opset 11 or later
    (statistics mode's condition)."""
    return fastops.available() and not options.keep_values and model.opset >= 11


def _debug_folded(
    facts: DebugFacts,
    taps,
    feeds,
    ref,
    options: DebugOptions,
    run_options,
    notes,
    origin,
    say,
    started=None,
) -> DebugReport | None:
    """debug --ref with the candidate measured in the merged run of the layer comparison
    (:class:`surgeon.debugging.in_graph_compare.Fold`): one run of the candidate fewer.

    The tap check compares the merged model's copies of the original outputs with a plain
    run of the untapped model (bit for bit, as the statistics run's), made in a thread
    while the merged model is built where the weights are small. The statistics are
    surgeon's kernel's, as in the statistics run (NaN/Inf counted at once). What follows
    is debug's usual path: NaN/Inf blame, first anomaly, then the layers. None when
    declined (a float16 or bfloat16 model): the caller takes the usual path.
    """
    from surgeon.debugging.in_graph_compare import Fold
    from surgeon.verification import tap_check_report

    model = facts.model
    say(f"typing {len(taps)} tapped tensors")
    types = _tap_types(model, taps, run_options)
    narrow = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if any(t.tensor_type.elem_type in narrow for t in types.values()):
        # Declined: a measuring node on a float16 tensor makes onnxruntime round it where
        # it otherwise computes the chain in float32 (the reference's copy would not
        # be), so the pairs are compared apart from the statistics (debug's usual path).
        return None
    tap_tolerance, tolerance_notes = _tap_tolerance(options, types)
    report = _new_report(model, feeds, options, notes, "statistics")
    outputs = list(model.output_names)
    say(f"running {model.name} and {ref.label} with {len(taps)} taps and the tap check")
    plain = started  # (overlapping the merged model's build; None: run in turn)
    expected: dict[str, np.ndarray] = {}

    def plain_values() -> dict[str, np.ndarray]:
        if not expected:
            expected.update(
                plain.result()
                if plain is not None
                else run(model, feeds, options=dataclasses.replace(run_options, memory_arena=False))
            )
        return expected

    def finish(stats_outputs, values) -> None:
        tap_check = tap_check_report(
            model,
            {o: values[o] for o in outputs if o in values},
            plain_values(),
            feeds,
            tap_tolerance,
            "tap check: original outputs unchanged",
        )
        stats = []
        for i, t in enumerate(taps):
            node, op, _ = facts.node_info.get(t, ("?", "?", []))
            dtype = dtype_name(types[t].tensor_type.elem_type) if t in types else None
            stats.append(stats_from_outputs(t, node, op, i, stats_outputs[t], values, dtype))
        run_result = _TapRun("statistics", stats, tap_check, values, tolerance_notes)
        _fill_from_run(report, run_result, facts, feeds, origin)

    if plain is None:
        # Large weights: the plain run goes first and its session is gone before the
        # merged model's is built (both would hold the weights; review).
        plain_values()
    fold = Fold(
        taps=taps,
        types=types,
        outputs=outputs,
        before_run=plain_values,
        finish=finish,
        check=plain_values,
    )
    compare_layers(report, facts, taps, {}, feeds, ref, options, run_options, origin, fold)
    return report


def _tap_types(model: Model, taps, run_options) -> dict:
    """The types of ``taps`` (learn_types; graph outputs as declared where they give an
    element type)."""
    graph_outputs = set(model.output_names)
    types = learn_types(model, [t for t in taps if t not in graph_outputs], run_options)
    for vi in model.proto.graph.output:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type)
    return types


def _tap_tolerance(options: DebugOptions, types) -> tuple:
    """The tap check's tolerance (bit-identity at optimisation level disabled, except for
    a float16 model) and the note that explains a float16 allowance."""
    tolerance = EXACT if options.optimization == "disabled" else options.tolerance
    if options.optimization == "disabled" and computes_in_float16(types):
        tolerance = FLOAT16_TAP_TOLERANCE
        return tolerance, [
            "float16 model: the tap check allows atol="
            f"{tolerance.atol:.3g}, rtol={tolerance.rtol:.3g} (8 float16 ulps at 1) "
            "instead of bit-identity, because onnxruntime's CPU computes float16 chains in "
            "float32 and rounds only where a tensor is exposed, so a tap moves the last bits"
        ]
    return tolerance, []


def _make_feeds(model: Model, ref: Reference | None, options: DebugOptions):
    """The model's feeds and notes about them: for saved activations, the model's inputs
    come from the same file (the feeds file may add the ones it lacks).

    Raises:
        SurgeonError: Saved activations without some of the model's inputs.
    """
    feed_options = options.feed_options
    if ref is None or ref.kind != "arrays":
        return make_feeds(model, feed_options), []
    arrays = ref.source
    user = make_feeds(model, feed_options) if feed_options.npz else {}
    missing = [i for i in model.input_names if i not in arrays and i not in user]
    if missing:
        raise SurgeonError(
            f"{ref.label} holds no values for input(s) {', '.join(f'`{m}`' for m in missing)} "
            f"of {model.name}; the activations can only be compared on the inputs that "
            "produced them",
            hint=(
                "Save the inputs in the .npz under the input names, or give them in a feeds "
                "file (--feeds feeds.npz on the command line)."
            ),
        )
    given, notes = feeds_from_activations(model, arrays, ref.label)
    return {**user, **given}, notes


@dataclass
class _TapRun:
    """What the tapped run gave: statistics per tapped tensor, the tap check, and the
    values (of the tapped tensors in values mode, of the statistics outputs otherwise)."""

    mode: str
    stats: list[TensorStats]
    tap_check: DiffReport | None
    values: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def _tap_and_measure(
    facts: DebugFacts,
    taps,
    feeds,
    options: DebugOptions,
    run_options,
    has_reference,
    say,
    bodies,
    started=None,
) -> _TapRun:
    """One verified run of the tapped model: the tap check (original outputs unchanged)
    and the statistics of every tapped tensor.

    Values mode taps the tensors themselves (needed for a reference, for saving them, and
    before opset 11); statistics mode a model whose only extra outputs are per-tensor
    statistics, so onnxruntime can free each activation as in a plain run.
    """
    model = facts.model
    inside = bodies.taps if bodies is not None else {}  # typed and exposed by the plan
    want_values = has_reference or options.keep_values or model.opset < 11 or bool(inside)
    return _measure(facts, taps, feeds, options, run_options, say, bodies, want_values, started)


def _start_plain_run(model: Model, feeds, run_options: RunOptions):
    """The plain run of the untapped model (the tap check's reference values), started in
    a thread; None where the weights are large (both sessions would hold them for that
    moment) or go through a scratch file (an interrupted run would leave it behind): run
    in turn then.

    It takes onnxruntime's arena where the measuring runs do (fastops.plain_arena: the
    kernel library built, weights at most fastops.ARENA_WEIGHTS):
    without it every activation is a fresh allocation the kernel zeroes page by page.
    YOLOv8n-size --tap all: 0.75-0.87 -> 0.69-0.78 s, CPU 1.13-1.29 -> 1.04-1.16 s, peak
    148 -> 171 MiB (1.21 -> 1.40x the plain run's; the target is 1.5x). What the arena
    held stays in the process after the session is gone, under the statistics run's
    peak, which is why larger models go without it."""
    from surgeon.verification import Overlap

    weights = _weight_bytes(model)
    if weights > ALONGSIDE_WEIGHTS or through_file(model):
        return None
    options = dataclasses.replace(run_options, memory_arena=fastops.plain_arena(weights))
    return Overlap(model, feeds, list(model.output_names), options)


def _abandon(started) -> None:
    """Wait for a plain run left in its thread, its error dropped (a program that ends with
    onnxruntime running in another thread aborts in its teardown)."""
    if started is not None:
        with contextlib.suppress(Exception):
            started.result()


def _measure(
    facts: DebugFacts, taps, feeds, options, run_options, say, bodies, want_values, started
) -> _TapRun:
    """:func:`_tap_and_measure` once its plain run is started (``started``)."""
    model = facts.model
    say(f"typing {len(taps)} tapped tensors")
    inside = bodies.taps if bodies is not None else {}  # typed and exposed by the plan
    inside_types = dict(bodies.types) if bodies is not None else {}
    types = _tap_types(model, [t for t in taps if t not in inside], run_options)
    say(f"running {model.name} with {len(taps)} taps and the tap check")
    tap_tolerance, notes = _tap_tolerance(options, {**types, **inside_types})

    def checked_run(candidate, fetch, candidate_options, sink, weights=None, started=None):
        # (the plain run: ``started`` in its thread, see _start_plain_run, or run in turn)
        with reference_started(started):
            return verify(
                candidate,
                model,
                pairs=[(o, o) for o in model.output_names],
                feeds=feeds,
                tolerance=tap_tolerance,
                options=candidate_options,
                reference_options=run_options,
                title="tap check: original outputs unchanged",
                fetch=fetch,
                collect=sink,
                candidate_initializers=weights,
            )

    def values_run(notes: list[str]) -> _TapRun:
        values: dict[str, np.ndarray] = {}
        main = [t for t in taps if t not in inside]
        candidate = add_outputs(model, main, types)
        fetch = taps
        if bodies is not None:  # body taps and branch markers (surgeon.edits.tap_bodies)
            candidate, fetch = bodies.exposed(candidate), [*taps, *bodies.markers]
        tap_check = checked_run(candidate, fetch, run_options, values, started=started)
        stats = []
        for i, t in enumerate(taps):
            if t in values:
                node, op, _ = facts.node_info.get(t, ("?", "?", []))
                stats.append(stats_from_array(t, node, op, i, values[t]))
        return _TapRun("values", stats, tap_check, values, notes)

    if want_values:
        return values_run(notes)
    # The statistics model holds no copy of the weights, nor do its serialised bytes:
    # onnxruntime gets them as arrays, read when its session is built and dropped once
    # it holds its own copy (YOLOv8n-size: peak 224 -> 212 MiB, then 13 MB less).
    weights = BorrowedWeights(model)
    sizes = run_sizes(model, feeds, {t: types[t] for t in taps if t in types})
    candidate, outs = build_stats_model(model, taps, types, borrowed=weights.names, sizes=sizes)
    # Priority-based order runs each statistics node right after its tensor's producer,
    # so onnxruntime frees activations as in a plain run (its default order delays the
    # reductions and keeps every activation alive).
    # Without onnxruntime's arena: it grows by doubling to the largest float64 copy and
    # keeps that peak. With the CLI's map_large_buffers (surgeon.commands.debug), the
    # process's peak on a YOLOv8n-size model went from 297 to 244 MiB (neither alone
    # changed it much).
    stats_options = dataclasses.replace(
        run_options, execution_order="priority", memory_arena=fastops.measuring_arena(model)
    )
    collected: dict[str, np.ndarray] = {}
    fetch = [x for pair in outs.values() for x in pair]
    try:
        # The tap check's plain run overlaps the statistics session's build (one core
        # builds, the other runs: YOLOv8n-size, 1.15 -> 0.90 s) where the weights are
        # small, as both sessions hold them for that moment. A model that cannot run
        # fails here, then in values_run's plain run with its own error.
        tap_check = checked_run(
            candidate, fetch, stats_options, collected, weights=weights, started=started
        )
    except RuntimeFailure as e:
        _abandon(started)  # (its failure, the model's own, comes again in values_run)
        # The statistics nodes are surgeon's, not the user's: if onnxruntime cannot run
        # them (a kernel missing at run time), measure the tensors themselves instead of
        # blaming the model. A failure of the model itself fails this run as well.
        return values_run(
            notes
            + [
                "onnxruntime could not run surgeon's statistics nodes "
                f"({e.message}); the tapped tensors were measured with numpy instead"
            ]
        )
    stats = []
    for i, t in enumerate(taps):
        node, op, _ = facts.node_info.get(t, ("?", "?", []))
        dtype = dtype_name(types[t].tensor_type.elem_type) if t in types else None
        stats.append(stats_from_outputs(t, node, op, i, outs[t], collected, dtype))
    stats = recount_stats(model, stats, types, feeds, stats_options, say)
    return _TapRun("statistics", stats, tap_check, collected, notes)


# Models with at most this many weight bytes have the tap check's plain run overlap the
# statistics session's build (both sessions hold the weights meanwhile).
ALONGSIDE_WEIGHTS = 256 * 2**20


def _weight_bytes(model: Model) -> int:
    return weight_bytes(model.proto)


def _origin_lookup(model: Model) -> Callable[[str], str | None]:
    """node label -> "module (Class), file:line" from exporter metadata, when available.
    The model's metadata is read on the first question (most runs ask none)."""
    from surgeon.origin import origins

    table = None

    def lookup(node: str) -> str | None:
        nonlocal table
        if table is None:
            table = origins(model)
        origin = table.get(node)
        return origin.describe() if origin is not None else None

    return lookup


def _declared_vs_real(model: Model, feeds, stats: list[TensorStats], values) -> list:
    """Where the model's declared dtypes/shapes disagree with what the run produced.

    In statistics mode only shapes and dtypes are known, so each tapped tensor is stood in
    for by a zero-stride array of its real shape (no memory is allocated).
    """
    from surgeon.shapecheck import declared_vs_actual

    seen: dict = dict(feeds)
    wanted = {s.name for s in stats} | set(model.output_names)  # once, not per value
    for name, value in values.items():
        if name in wanted:
            seen[name] = value
    for s in stats:
        if s.name not in seen and s.shape is not None and s.dtype not in (None, "str"):
            try:  # as_strided too: it rejects ml_dtypes' float8_e5m2 ("'<f1' not understood")
                seen[s.name] = np.lib.stride_tricks.as_strided(
                    np.zeros(1, np.dtype(s.dtype)),
                    shape=tuple(s.shape),
                    strides=(0,) * len(s.shape),
                )
            except (TypeError, ValueError):  # (ValueError: numpy holds at most 64 dims)
                continue
    return declared_vs_actual(model, seen)


def save_values(report: DebugReport, path: str | Path) -> Path:
    """Write the tapped tensors and the inputs that produced them to an ``.npz`` (keys =
    tensor names, whatever they are), atomically; the file can be given back as the
    reference (``DebugOptions.reference``)."""
    from surgeon.fileio import save_npz

    # Tensors only: a sequence or an empty optional has no .npz form.
    merged = {**report.feed_values, **report.values}
    return save_npz(path, {k: v for k, v in merged.items() if isinstance(v, np.ndarray)})
