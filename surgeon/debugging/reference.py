"""The reference side of ``debug``: what a reference is (a model, saved activations, or
the same model at another optimisation level), how its names pair with the tapped
tensors, the inputs it is run on, and the layer-by-layer comparison that names the
root-cause node."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from surgeon import fastops
from surgeon.compare import as_reference_dtype, compare_arrays
from surgeon.debugging._graph import DebugFacts
from surgeon.debugging.results import DebugOptions, DebugReport, LayerDiff, names_text
from surgeon.errors import RuntimeFailure, UsageError, close_matches, collect_unknown_names
from surgeon.feeds import FeedOptions, load_npz, make_other_feeds
from surgeon.model import Model
from surgeon.runner import RunOptions, run

# Where _run_reference leaves the values the reference was fed (a key no tensor can
# have: ONNX names are strings, this is not).
_REFERENCE_FEEDS = ("reference feeds",)


class Reference(NamedTuple):
    """What the tapped tensors are compared with.

    ``kind`` is ``model`` (another model, run on the same feeds), ``arrays`` (saved
    activations keyed by tensor name) or ``self`` (this model at another onnxruntime
    optimisation level); ``label`` names it in the report.
    """

    kind: str
    label: str
    source: Model | dict[str, np.ndarray]


def load_reference(reference, max_bytes: int | None = None) -> Reference | None:
    """``DebugOptions.reference`` as a :class:`Reference` (None stays None).

    Raises:
        UsageError: A path that is neither a model nor an ``.npz``.
    """
    from surgeon.loading import load

    if reference is None:
        return None
    if isinstance(reference, Model):
        return Reference("model", reference.name, reference)
    if isinstance(reference, Mapping):
        return Reference("arrays", "activations", dict(reference))
    path = Path(reference)
    if path.suffix == ".npz":
        return Reference("arrays", path.name, load_npz(path, max_bytes=max_bytes))
    if path.suffix == ".onnx" or path.exists():
        return Reference("model", path.name, load(path))
    raise UsageError(f"reference {reference}: expected a .onnx model or an .npz of activations")


def reference_only_inputs(model: Model, reference: Model, options: DebugOptions) -> list[str]:
    """Inputs of a reference model that no input of ``model`` feeds (by name, or through
    ``options.name_map``)."""
    name_map = dict(options.name_map)  # reference name -> model name
    inputs = set(model.input_names)
    return [i for i in reference.input_names if name_map.get(i, i) not in inputs]


def feeds_from_activations(
    model: Model, arrays: Mapping[str, np.ndarray], label: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The model's inputs taken from saved activations, checked against the model.

    Float values for an input of another float dtype (float32 activations saved from
    PyTorch for a float16 model) are cast to the model's dtype, with a note in the
    report: that is how the user would feed them. Any other dtype, or a shape that
    contradicts a fixed dim, is an error naming each input, not onnxruntime's raw one.
    """
    from surgeon.feeds import numpy_dtype

    feeds, notes, problems = {}, [], []
    for info_in in model.inputs:
        if info_in.name not in arrays:
            continue
        value = arrays[info_in.name]
        wanted = numpy_dtype(info_in.dtype) if info_in.dtype and info_in.dtype != "str" else None
        if isinstance(value, np.ndarray) and wanted is not None and value.dtype != wanted:
            if value.dtype.kind == "V" and value.dtype.itemsize == wanted.itemsize:
                value = value.view(wanted)  # np.savez stores bfloat16/float8 as raw void
            elif value.dtype.kind == "f" and _is_float_dtype(wanted):
                notes.append(
                    f"input `{info_in.name}`: {value.dtype.name} values from {label} fed as "
                    f"{wanted.name}, the model's dtype"
                )
                value = value.astype(wanted)
            else:
                problems.append(
                    f"`{info_in.name}` in {label} is {value.dtype.name}; {model.name} wants {info_in.dtype}"
                )
        if isinstance(value, np.ndarray) and info_in.shape is not None:
            fixed = [d if isinstance(d, int) and d > 0 else None for d in info_in.shape]
            if value.ndim != len(fixed) or any(
                d is not None and d != v for d, v in zip(fixed, value.shape, strict=True)
            ):
                problems.append(
                    f"`{info_in.name}` in {label} has shape {list(value.shape)}; {model.name} wants {info_in.shape_text()}"
                )
        feeds[info_in.name] = value
    if problems:
        raise UsageError(
            f"the inputs saved in {label} do not fit {model.name}",
            problems=problems,
            hint="Save the activations from the same model, or convert the inputs to the dtypes and shapes the model declares.",
        )
    return feeds, notes


def _is_float_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or "float" in dtype.name


def check_pairing(
    facts: DebugFacts, taps: list[str], ref: Reference, options: DebugOptions
) -> None:
    """Refuse, before any run, a reference that pairs with none of the tapped tensors:
    zero compared tensors is never a pass. The message lists the reference's unused
    names with close matches among the model's tappable tensors.

    Raises:
        UsageError: No tapped tensor has a value in the reference.
    """
    model = facts.model
    if ref.kind == "self":
        return
    to_ref = {v: k for k, v in dict(options.name_map).items()}
    if ref.kind == "arrays":
        available = set(ref.source)
        keys = list(ref.source)
    else:
        available = set(ref.source.tensor_names()) - set(ref.source.input_names)
        keys = DebugFacts(ref.source).node_outputs
    if any(to_ref.get(t, t) in available for t in taps):
        return
    inputs = set(model.input_names)
    unused = [k for k in keys if k not in inputs]
    problems = []
    for key in unused[:10]:
        matches = close_matches(key, facts.node_outputs)
        problems.append(
            f"`{key}`"
            + (f": did you mean {', '.join(f'`{m}`' for m in matches)}?" if matches else "")
        )
    if len(unused) > 10:
        problems.append(f"... and {len(unused) - 10} more")
    what = "its keys" if ref.kind == "arrays" else "its tensors"
    raise UsageError(
        f"nothing to compare: none of the {len(taps)} tapped tensor(s) of {model.name} has a "
        f"value in the reference {ref.label}"
        + (f"; {what} that are not inputs:" if problems else f" ({ref.label} holds only inputs)"),
        problems=problems,
        hint=(
            "Tap the tensors the reference holds, or pair reference names with model names "
            "in name_map (--tap NAME, --map REF=MODEL on the command line)."
        ),
    )


def compare_layers(
    report: DebugReport,
    facts: DebugFacts,
    taps: list[str],
    values: Mapping[str, object],
    feeds: Mapping[str, object],
    ref: Reference,
    options: DebugOptions,
    run_options: RunOptions,
    origin,
    fold=None,
) -> None:
    """Compare each tapped tensor with its reference value and name the root cause, into
    ``report`` (its ``layers``, ``unmatched``, ``root_cause`` and related fields).

    ``fold`` (a :class:`surgeon.debugging.in_graph_compare.Fold`, for a reference model
    compared inside onnxruntime): the tapped run's statistics and tap check are made in
    the merged run too, and handed to ``fold.finish`` before the layers are judged.

    Raises:
        NameNotFoundError: A ``name_map`` entry names no tensor.
        RuntimeFailure: The reference model cannot run.
    """
    model = facts.model
    name_map = dict(options.name_map)  # reference name -> model name
    to_ref = {v: k for k, v in name_map.items()}
    collect_unknown_names(
        "tensor", name_map.values(), model.tensor_names(), model.name, model_path=model.path
    )
    if ref.kind == "model":
        collect_unknown_names(
            "tensor",
            name_map.keys(),
            ref.source.tensor_names(),
            ref.source.name,
            model_path=ref.source.path,
        )
        if report.mode == "statistics":
            # the tapped run fetched no values: compare_layers_in_graph's path
            _compare_layers_in_graph(
                report, facts, taps, feeds, ref, options, run_options, origin, fold
            )
            return
    if ref.kind == "arrays":
        expected = ref.source
        collect_unknown_names("tensor", name_map.keys(), list(expected), ref.label)
    else:
        expected = _run_reference(report, model, taps, feeds, ref, options, run_options)
        reference_inputs = expected.pop(_REFERENCE_FEEDS)
    report.reference = ref.label
    report.tolerance = options.tolerance
    compared = _pair_layers(
        report, facts, taps, to_ref, _values_pair_diff(values, expected, options.tolerance)
    )
    if ref.kind == "arrays":
        used = {to_ref.get(t, t) for t in compared} | set(model.input_names)
        report.unused_reference = [k for k in expected if k not in used]
    _rank_root_causes(report, facts, compared, ref.kind == "self", origin)
    if ref.kind == "self" or not compared:
        return  # the same model at another level: see surgeon.debugging.isolation
    from surgeon.debugging.isolation import judge_by_isolated_error

    if ref.kind == "arrays":
        reference, reference_values = list(expected), expected
    else:
        reference, reference_values = ref.source, {**reference_inputs, **expected}
    judge_by_isolated_error(
        report, facts, values, feeds, reference, reference_values, options, run_options, origin
    )


def compares_in_graph(model: Model, ref: Reference | None, options: DebugOptions) -> bool:
    """True when the layer comparison with ``ref`` runs inside onnxruntime (see
    :mod:`surgeon.debugging.in_graph_compare`), so the tapped run need not fetch the
    candidate's values: a reference model at the model's own optimisation level that
    can share one model with it."""
    if ref is None or ref.kind != "model" or options.reference_optimization:
        return False  # (without importing the merge: 12 ms of a debug run without --ref)
    from surgeon.debugging.in_graph_compare import merge_refusal

    return merge_refusal(model, ref.source) is None


def _compare_layers_in_graph(
    report, facts, taps, feeds, ref: Reference, options, run_options, origin, fold=None
) -> None:
    """:func:`compare_layers` for a reference model, compared inside onnxruntime: the
    candidate's values never leave it (the tapped run was a statistics run).

    The isolated-error stage runs there too where it can (see
    :func:`surgeon.debugging.in_graph_compare.plan_isolation`): each unit's candidate
    nodes copied into the merged model, fed the reference's tensors, compared with the
    reference's outputs by the comparison nodes. So the reference's activations never
    leave onnxruntime either and no second session is built; units it cannot take keep
    the values path (their reference values fetched), and when onnxruntime refuses the
    merged model with units, it runs again without them (the values path for all).
    """
    from surgeon.debugging.in_graph_compare import compare_in_graph, plan_isolation
    from surgeon.debugging.isolation import judge_by_isolated_error
    from surgeon.edits.tap import learn_types
    from surgeon.precision.isolated import MeasuredOutput, MeasuredUnits
    from surgeon.precision.pairing import pair_tensors
    from surgeon.statistics.in_graph import static_types_at_feeds, with_shapes

    model, ref_model = facts.model, ref.source
    name_map = dict(options.name_map)  # reference name -> model name
    to_ref = {v: k for k, v in name_map.items()}
    available = set(ref_model.tensor_names())
    by_name = [(t, to_ref.get(t, t)) for t in taps if to_ref.get(t, t) in available]
    kept = dict.fromkeys(r for _, r in by_name)  # what the isolated stage is given
    # (the candidate's values: its feeds, as the isolated stage is given them)
    pairing = pair_tensors(model, ref_model, name_map=name_map, candidate_values=feeds)
    # the cumulative error of each tapped tensor paired through a Cast or Q/DQ chain (with
    # a value the isolated stage has: a compared tensor, or a reference weight)
    ref_feeds, own = _reference_feeds(report, model, feeds, ref, options)
    has_value = kept.keys() | set(pairing.reference_constants) | set(ref_feeds)
    through = [
        (t, pairing.pairs[t].reference)
        for t in taps
        if t in pairing.pairs and pairing.pairs[t].reference in has_value
    ]
    pairs = list(dict.fromkeys(by_name + through))
    types = learn_types(model, [c for c, _ in pairs], run_options)
    ref_types = learn_types(ref_model, list(dict.fromkeys(r for _, r in pairs)), run_options)
    inputs = set(model.input_names)
    shared = {
        i: name_map.get(i, i)
        for i, value in ref_feeds.items()
        if name_map.get(i, i) in inputs and value is feeds.get(name_map.get(i, i))
    }
    declared = (types, ref_types)
    # Shapes inferred at the feeds' shapes: a dynamic model's pairs then get the fast
    # comparison nodes too (its declared shapes leave them open, and the general nodes
    # are three times as many: 89k nodes against 860 on PP-OCRv4's recognizer). A plan:
    # a pair whose run shapes differ is compared again by the general nodes, and a run
    # that fails on the plan is made again as declared.
    # Where inference leaves a candidate's shape open, the tapped run measured it. A
    # reference tensor's shape is never assumed from its pair's: a wrong guess would cost
    # a failed run (row counts after NMS differ) or a broadcast to [K, K] before the
    # shapes are compared (review).
    # (surgeon's kernels compare any shapes: no plan needed, one attempt as declared)
    fused = fold is not None or fastops.available()
    ran = {s.name: s.shape for s in report.stats if s.shape is not None}
    refined = (
        declared
        if fused
        else (
            with_shapes(
                static_types_at_feeds(model, feeds, types),
                {c: ran[c] for c, _ in pairs if c in ran},
            ),
            static_types_at_feeds(ref_model, ref_feeds, ref_types),
        )
    )

    def attempt(types, ref_types, *, planned: bool):
        plan = plan_isolation(
            model,
            ref_model,
            pairing,
            list(kept),
            feeds,
            ref_feeds,
            types,
            ref_types,
            options.tolerance,
            run_options,
        )

        def merged_run(units, keep):
            return compare_in_graph(
                model,
                ref_model,
                pairs,
                types,
                ref_types,
                feeds,
                ref_feeds,
                shared,
                options.tolerance,
                run_options,
                keep_reference=keep,
                units=units,
                fold=fold,
            )

        try:
            return plan, merged_run(plan.units, plan.keep) if plan else merged_run((), list(kept))
        except RuntimeFailure:
            if planned or not plan or not plan.units:
                raise  # (a failed plan is made again as declared first, units and all)
            # a unit onnxruntime refuses: the values path finds which
            return None, merged_run((), list(kept))

    # The shapes inferred at the feeds, then as declared (there a unit onnxruntime
    # refuses sends every unit to the values path), then none at all: every pair on the
    # general nodes, which take any shape, so a declared shape the run does not follow
    # (another rank: the fast nodes' numbers cannot be joined) cannot stop the comparison.
    attempts = [(refined, True)] if refined != declared else []
    attempts.append((declared, False))
    shapeless = () if fused else (_without_shapes(types), _without_shapes(ref_types))
    if shapeless and shapeless != declared:
        attempts.append((shapeless, False))
    for k, (typed, planned) in enumerate(attempts):
        try:
            plan, result = attempt(*typed, planned=planned)
            break
        except RuntimeFailure as e:
            if fold is not None:
                fold.check()  # the candidate's own failure (its plain run) comes first
            if k == len(attempts) - 1:
                raise _random_feeds_failure(e, report, model, own) from None
    report.reference = ref.label
    report.tolerance = options.tolerance

    def pair_diff(t: str, ref_name: str):
        diff = result.diffs.get((t, ref_name))
        note = result.cast_notes.get((t, ref_name))
        if diff is not None and note:
            diff = dataclasses.replace(diff)
            diff.message = (diff.message + "; " if diff.message else "") + note
        return diff

    compared = _pair_layers(report, facts, taps, to_ref, pair_diff)
    _rank_root_causes(report, facts, compared, False, origin)
    if not compared:
        return
    cumulative = {t: result.diffs[(t, r)] for t, r in through}
    measured = None
    if plan:
        measured = MeasuredUnits(
            plan.has_reference,
            {o: MeasuredOutput(*m) for o, m in result.isolated.items()},
            result.overflowed,
        )
    judge_by_isolated_error(
        report,
        facts,
        {},
        feeds,
        ref_model,
        {**ref_feeds, **result.reference_values},
        options,
        run_options,
        origin,
        cumulative=cumulative,
        pairing=pairing,
        measured=measured,
    )


def _without_shapes(types: dict[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    """``types`` with every tensor's shape left open (element types kept)."""
    open_types = {}
    for name, t in types.items():
        copy = onnx.TypeProto()
        copy.CopyFrom(t)
        if copy.HasField("tensor_type"):
            copy.tensor_type.ClearField("shape")
        open_types[name] = copy
    return open_types


def _random_feeds_failure(e: RuntimeFailure, report, model: Model, own) -> RuntimeFailure:
    """``e``, naming the reference's inputs that were fed random values (the likely cause)."""
    randoms = [n for n in own if report.reference_feeds.get(n, "").startswith("random")]
    if not randoms:
        return e
    return RuntimeFailure(
        f"{e.message} (the reference ran on random values for its input(s) "
        f"{names_text(randoms)}, which {model.name} does not have)",
        hint=(
            "Give their values in the feeds file under the reference's input names "
            "(--feeds feeds.npz on the command line)."
        ),
    )


def _run_reference(report, model, taps, feeds, ref, options, run_options) -> dict:
    """The reference model's values of the tapped tensors, run on the model's feeds (its
    own inputs from the feeds file or random); where each input came from goes into
    ``report.reference_feeds``."""
    ref_model: Model = ref.source
    name_map = dict(options.name_map)  # reference name -> model name
    to_ref = {v: k for k, v in name_map.items()}
    available = set(ref_model.tensor_names())
    wanted = [to_ref.get(t, t) for t in taps if to_ref.get(t, t) in available]
    ref_options = run_options
    if ref.kind == "self" or options.reference_optimization:
        ref_options = RunOptions(
            optimization=options.reference_optimization or run_options.optimization,
            custom_op_libraries=run_options.custom_op_libraries,
            spinning=run_options.spinning,
        )
    ref_feeds, own = _reference_feeds(report, model, feeds, ref, options)
    try:
        values = run(ref_model, ref_feeds, outputs=wanted, options=ref_options)
        values[_REFERENCE_FEEDS] = ref_feeds
        return values
    except RuntimeFailure as e:
        raise _random_feeds_failure(e, report, model, own) from None


def _reference_feeds(report, model: Model, feeds, ref: Reference, options: DebugOptions):
    """The reference's feeds by its input names (the model's feeds, cast to the
    reference's dtype where they differ, and its own inputs), and its own inputs' names;
    where each came from goes into ``report.reference_feeds``."""
    ref_model: Model = ref.source
    name_map = dict(options.name_map)  # reference name -> model name
    ref_feeds = {}
    own = reference_only_inputs(model, ref_model, options) if ref.kind == "model" else []
    for info_in in ref_model.inputs:
        source = name_map.get(info_in.name, info_in.name)  # reference input <- model input
        if info_in.name in own:
            continue
        report.reference_feeds[info_in.name] = f"model input `{source}`"
        value = feeds[source]
        # e.g. a float16 model against its float32 original: same values, the reference's dtype
        if (
            isinstance(value, np.ndarray)
            and info_in.dtype
            and info_in.dtype != value.dtype.name
            and value.dtype.kind in "fiub"
        ):
            value = value.astype(info_in.dtype)
        ref_feeds[info_in.name] = value
    if own:
        ref_feeds.update(
            _feed_reference_only(report, model, ref_model, own, options.feed_options, ref_feeds)
        )
    return ref_feeds, own


def _feed_reference_only(
    report, model: Model, ref_model: Model, own: list[str], feed_options: FeedOptions, given
) -> dict:
    """Values for the inputs only the reference has: from the feeds file when it holds
    them, else random by the same seed rule as any input; the report says which."""
    extra, how = make_other_feeds(ref_model, own, feed_options, given)
    for input_name, source in how.items():
        report.reference_feeds[input_name] = (
            f"feeds file {Path(feed_options.npz).name}"
            if source != "random"
            else f"random (seed {feed_options.seed})"
        )
    randoms = [n for n, source in how.items() if source == "random"]
    if randoms:
        report.notes.append(
            f"the reference {ref_model.name} has input(s) {names_text(randoms)} that "
            f"{model.name} does not; fed random values (seed {feed_options.seed}): "
            "give their values in the feeds file (keys = the reference's input names) if "
            "the reference needs particular ones"
        )
    return extra


def _values_pair_diff(values, expected, tolerance):
    """The values path's comparison of a tapped tensor with its reference value (None
    when either is missing); a numeric candidate of another dtype is cast first."""

    def pair_diff(t: str, ref_name: str):
        if ref_name not in expected or t not in values:
            return None
        exp = expected[ref_name]
        actual, note = as_reference_dtype(values[t], exp)
        diff = compare_arrays(actual, exp, tolerance, name=t, reference=ref_name)
        if note:
            diff.message = (diff.message + "; " if diff.message else "") + note
        return diff

    return pair_diff


def _pair_layers(report, facts, taps, to_ref, pair_diff) -> set[str]:
    """One :class:`LayerDiff` per tapped tensor with a reference value, into
    ``report.layers`` (the rest into ``report.unmatched``); returns the compared names.
    ``pair_diff(tensor, reference name)`` gives the diff, None when there is no pair."""
    compared: set[str] = set()
    for i, t in enumerate(taps):
        ref_name = to_ref.get(t, t)
        diff = pair_diff(t, ref_name)
        if diff is None:
            report.unmatched.append(t)
            continue
        node, op, inputs = facts.node_info.get(t, ("?", "?", []))
        report.layers.append(LayerDiff(diff, node, op, i, inputs, diverged=not diff.passed))
        compared.add(t)
    return compared


def _rank_root_causes(report, facts: DebugFacts, compared, same_model: bool, origin) -> None:
    """Root-cause candidates, best first, into ``report.root_cause`` and
    ``report.other_roots``.

    A candidate is a diverged tensor none of whose compared inputs diverged. What that
    shows depends on which inputs were compared: graph inputs are the same values on both
    sides (the reference's own, or the model's feeds), constants are the same only when
    the reference is this very model (``same_model``), and an activation with no
    reference value shows nothing (the divergence may start before it).
    """
    diverged = {layer.diff.name for layer in report.layers if layer.diverged}
    constants = facts.constants
    graph_inputs = set(facts.model.input_names)
    roots = []
    for layer in report.layers:
        if not layer.diverged or any(x in diverged for x in layer.inputs):
            continue
        for x in dict.fromkeys(layer.inputs):
            if x in compared or x in graph_inputs or (x in constants and same_model):
                layer.matched_inputs.append(x)
            elif x not in constants:
                layer.uncompared_inputs.append(x)
        roots.append(layer)
    # Ranked by what the check shows (graph order within a rank): every input that could
    # be compared matches; some match and some were not compared; none was compared.
    # A node's own isolated error would judge them better; this claims only what holds.
    roots.sort(key=lambda layer: (layer.evidence_rank, layer.index))
    for layer in roots:
        layer.origin = origin(layer.node)
    if roots:
        report.root_cause = roots[0]
        report.other_roots = roots[1:]
        report.uncompared_inputs = list(roots[0].uncompared_inputs)
