"""``surgeon debug``: tap intermediate tensors, find the first bad layer, compare layer by
layer against a reference.

Two ways to look at taps:

* **Statistics only** (no reference, nothing saved): each tapped tensor gets a handful of
  reduction nodes (min, max, sum, sum of squares, NaN/Inf/zero counts) placed right after
  its producer, and only those few numbers become graph outputs. onnxruntime can then
  free every activation as soon as its consumers ran, so ``--tap all`` costs about one
  plain run instead of keeping every activation alive (what marking every tensor as an
  output does).
* **Values** (``--ref`` or ``--save``): the tapped tensors become outputs and are compared
  or saved; statistics are computed with numpy from the same values.

The verdict names the first anomalous tensor in topological order, and with a reference
the *root-cause node*: the first node whose output diverges while all its compared inputs
still match the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.compare import EXACT, DiffReport, TensorDiff, Tolerance, compare_arrays
from surgeon.edits.tap import add_outputs, learn_types, not_tappable, select_taps
from surgeon.errors import SurgeonError, UsageError, collect_unknown_names
from surgeon.feeds import FeedOptions, describe_feeds, load_npz, make_feeds
from surgeon.model import Model, dtype_name
from surgeon.runner import RunOptions, run
from surgeon.statistics import (
    SEVERE,
    TensorStats,
    build_stats_model,
    recount_stats,
    stats_from_array,
    stats_from_outputs,
)
from surgeon.verification import verify

DEBUG_SCHEMA = "surgeon.debug/1"


@dataclass(frozen=True)
class DebugOptions:
    """What ``debug`` does.

    Attributes:
        taps: Tensor or node names, globs, or ``all``.
        ops: Op types whose outputs are tapped too.
        reference: A Model, a path to a ``.onnx`` or ``.npz`` (activations keyed by
            tensor name), a dict of arrays, or None.
        name_map: Reference name -> model name, for tensors named differently.
        reference_optimization: Compare against the same model run at this onnxruntime
            optimisation level (when ``reference`` is None).
        tolerance: When a tensor matches its reference.
        keep_values: Return the tapped tensors' values (needed for ``--save``).
        optimization: onnxruntime level for the model itself. ``disabled`` (default)
            gives each node's output as the graph defines it, and makes the tap check
            bit-exact (taps block fusions that would change the last bits).
    """

    taps: tuple[str, ...] = ("all",)
    ops: tuple[str, ...] = ()
    reference: object = None
    name_map: Mapping[str, str] = field(default_factory=dict)
    reference_optimization: str | None = None
    tolerance: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-4, rtol=1e-4))
    keep_values: bool = False
    optimization: str = "disabled"
    custom_op_libraries: tuple[str, ...] = ()
    feed_options: FeedOptions = field(default_factory=FeedOptions)


@dataclass
class LayerDiff:
    """One tapped tensor compared with its reference, with its place in the graph."""

    diff: TensorDiff
    node: str
    op: str
    index: int
    inputs: list[str]
    diverged: bool
    origin: str | None = None

    def to_dict(self) -> dict:
        d = self.diff.to_dict()
        d.update(
            {
                "node": self.node,
                "op": self.op,
                "index": self.index,
                "inputs": self.inputs,
                "diverged": self.diverged,
                "origin": self.origin,
            }
        )
        return d


@dataclass
class DebugReport:
    """Everything ``debug`` found. Truthy when nothing failed: the tap check passed, no
    NaN/Inf appeared, and (with a reference) no tensor diverged."""

    model: str
    stats: list[TensorStats]
    tap_check: DiffReport | None
    not_tappable: dict[str, str]
    feeds: dict[str, dict]
    seed: int | None
    optimization: str
    reference: str | None = None
    tolerance: Tolerance | None = None
    layers: list[LayerDiff] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    first_anomaly: TensorStats | None = None
    root_cause: LayerDiff | None = None
    other_roots: list[LayerDiff] = field(default_factory=list)
    uncompared_inputs: list[str] = field(default_factory=list)
    mode: str = "statistics"
    shape_mismatches: list = field(default_factory=list)  # declared vs real (ShapeMismatch)
    float16: bool = False  # the model computes in float16 (matters for the tap check)
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    feed_values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def diverged(self) -> list[LayerDiff]:
        return [layer for layer in self.layers if layer.diverged]

    @property
    def passed(self) -> bool:
        if self.tap_check is not None and not self.tap_check.passed:
            return False
        if any(f in SEVERE for s in self.stats for f in s.flags):
            return False
        return not self.diverged

    def __bool__(self) -> bool:
        return self.passed

    def verdict(self) -> str:
        """The one-line answer the report leads with."""
        parts = []
        if self.tap_check is not None and not self.tap_check.passed:
            text = f"tap check FAILED: tapping changed the original outputs ({self.tap_check.summary()})"
            if self.float16:
                # Seen on the onnx operator corpus: onnxruntime's CPU computes float16
                # chains in float32 and rounds only where a tensor leaves the graph.
                text += (
                    ". This is a float16 model: onnxruntime rounds intermediate float16 results only "
                    "where a tensor is exposed, so tapping can move the last bits; to accept that, "
                    "check within tolerance with --optimization all --atol ... --rtol ..."
                )
            parts.append(text)
        if self.reference is not None:
            if self.root_cause is not None:
                rc = self.root_cause
                where = f"`{rc.node}` ({rc.op})" + (f" = {rc.origin}" if rc.origin else "")
                parts.append(
                    f"root cause: {where}: its output `{rc.diff.name}` diverges from the reference "
                    f"(max abs {rc.diff.max_abs:.3g}, cosine {rc.diff.cosine if rc.diff.cosine is not None else float('nan'):.6f}) "
                    "while all its inputs match"
                )
            elif self.layers:
                parts.append(f"all {len(self.layers)} compared tensors match the reference")
            else:
                parts.append("no tapped tensor has a reference value to compare with")
        severe = next((s for s in self.stats if any(f in SEVERE for f in s.flags)), None)
        other = next((s for s in self.stats if s.flags), None)
        if severe is not None:
            kind = "NaN" if "nan" in severe.flags else "Inf"
            origin = f" = {severe.origin}" if severe.origin else ""
            parts.append(
                f"first {kind} at `{severe.name}`, produced by `{severe.node}` ({severe.op}){origin}"
            )
        elif other is not None:
            parts.append(
                f"no NaN/Inf; first anomaly: {', '.join(other.flags)} at `{other.name}`, produced by `{other.node}` ({other.op})"
            )
        elif self.stats:
            parts.append(f"no anomaly in {len(self.stats)} tapped tensors")
        return "; ".join(parts) if parts else "nothing tapped"

    def to_dict(self) -> dict:
        return {
            "schema": DEBUG_SCHEMA,
            "model": self.model,
            "passed": self.passed,
            "verdict": self.verdict(),
            "mode": self.mode,
            "seed": self.seed,
            "feeds": self.feeds,
            "optimization": self.optimization,
            "tap_check": self.tap_check.to_dict() if self.tap_check is not None else None,
            "first_anomaly": self.first_anomaly.to_dict() if self.first_anomaly else None,
            "taps": [s.to_dict() for s in self.stats],
            "not_tappable": [{"tensor": t, "node": n} for t, n in self.not_tappable.items()],
            "reference": self.reference,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "root_cause": self.root_cause.to_dict() if self.root_cause else None,
            "other_root_causes": [r.to_dict() for r in self.other_roots],
            "uncompared_inputs": self.uncompared_inputs,
            "comparison": [layer.to_dict() for layer in self.layers],
            "unmatched": self.unmatched,
            "declared_shape_mismatches": [m.to_dict() for m in self.shape_mismatches],
        }


# ---------------------------------------------------------------------- references
def _load_reference(reference, model: Model):
    """A reference as (kind, description, object): ("model", name, Model) or
    ("arrays", name, dict)."""
    from surgeon.loading import load

    if reference is None:
        return None
    if isinstance(reference, Model):
        return ("model", reference.name, reference)
    if isinstance(reference, Mapping):
        return ("arrays", "activations", dict(reference))
    path = Path(reference)
    if path.suffix == ".npz":
        return ("arrays", path.name, load_npz(path))
    if path.suffix == ".onnx" or path.exists():
        return ("model", path.name, load(path))
    raise UsageError(f"reference {reference}: expected a .onnx model or an .npz of activations")


def _node_info(model: Model) -> dict[str, tuple[str, str, list[str]]]:
    """tensor -> (node name, op type, node inputs) for main-graph node outputs."""
    info = {}
    for i, n in enumerate(model.proto.graph.node):
        label = n.name or f"#{i}"
        for o in n.output:
            if o:
                info[o] = (label, n.op_type, [x for x in n.input if x])
    return info


def _origin_lookup(model: Model):
    """node name -> "module (Class), file:line" from exporter metadata, when available."""
    try:
        from surgeon.origin import node_origin
    except ImportError:  # the origin module is optional
        return lambda node: None

    def lookup(node: str) -> str | None:
        try:
            origin = node_origin(model, node)
        except Exception:  # exporter metadata is best-effort; never fail a debug run on it
            return None
        return origin.describe() if origin is not None else None

    return lookup


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
    run_opts = RunOptions(
        optimization=options.optimization, custom_op_libraries=tuple(options.custom_op_libraries)
    )
    ref = _load_reference(options.reference, model)
    if ref is None and options.reference_optimization:
        ref = ("self", f"{model.name} at optimization={options.reference_optimization}", model)
    info = _node_info(model)
    origin = _origin_lookup(model)
    order = {t: i for i, t in enumerate(taps)}

    # Feeds: for saved activations, the model's inputs must come from the same file.
    feed_options = options.feed_options
    if feeds is None:
        if ref is not None and ref[0] == "arrays":
            arrays = ref[2]
            given = {i: arrays[i] for i in model.input_names if i in arrays}
            user = make_feeds(model, feed_options) if feed_options.npz else {}
            missing = [
                i
                for i in model.input_names
                if i not in given and i not in (user if feed_options.npz else {})
            ]
            if missing:
                raise SurgeonError(
                    f"{ref[1]} holds no values for input(s) {', '.join(f'`{m}`' for m in missing)} of {model.name}; "
                    "the activations can only be compared on the inputs that produced them",
                    hint="Save the inputs in the .npz under the input names, or pass them with --inputs feeds.npz.",
                )
            feeds = {**user, **given}
        else:
            feeds = make_feeds(model, feed_options)
    feeds = dict(feeds)

    say = progress or (lambda phase: None)
    say(f"typing {len(taps)} tapped tensors")
    graph_outputs = set(model.output_names)
    types = learn_types(model, [t for t in taps if t not in graph_outputs], run_opts)
    say(f"running {model.name} with {len(taps)} taps and the tap check")
    for vi in model.proto.graph.output:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type)
    tap_tol = EXACT if options.optimization == "disabled" else options.tolerance
    want_values = ref is not None or options.keep_values or model.opset < 11
    stats: list[TensorStats] = []
    values: dict[str, np.ndarray] = {}
    collected: dict[str, np.ndarray] = {}
    # Values mode taps the tensors themselves; statistics mode a model whose only extra
    # outputs are per-tensor statistics. Either way one verified run gives the tap check
    # and the numbers.
    if want_values:
        mode = "values"
        candidate, fetch, cand_opts, sink = add_outputs(model, taps, types), taps, run_opts, values
    else:
        mode = "statistics"
        candidate, outs = build_stats_model(model, taps, types)
        fetch = [x for pair in outs.values() for x in pair]
        # Priority-based order runs each statistics node right after its tensor's producer,
        # so onnxruntime frees activations as in a plain run (its default order delays the
        # reductions and keeps every activation alive).
        cand_opts = stats_opts = dataclasses.replace(run_opts, execution_order="priority")
        sink = collected
    tap_check = verify(
        candidate,
        model,
        pairs=[(o, o) for o in model.output_names],
        feeds=feeds,
        tolerance=tap_tol,
        options=cand_opts,
        reference_options=run_opts,
        title="tap check: original outputs unchanged",
        fetch=fetch,
        collect=sink,
    )
    if want_values:
        for t in taps:
            if t in values:
                node, op, _ = info.get(t, ("?", "?", []))
                stats.append(stats_from_array(t, node, op, order[t], values[t]))
    else:
        for t in taps:
            node, op, _ = info.get(t, ("?", "?", []))
            dtype = dtype_name(types[t].tensor_type.elem_type) if t in types else None
            stats.append(stats_from_outputs(t, node, op, order[t], outs[t], collected, dtype))
        stats = recount_stats(model, stats, types, feeds, stats_opts, say)
    for s in stats:
        if s.flags:
            s.origin = origin(s.node)
    first_anomaly = next((s for s in stats if any(f in SEVERE for f in s.flags)), None) or next(
        (s for s in stats if s.flags), None
    )
    report = DebugReport(
        model=model.name,
        stats=stats,
        tap_check=tap_check,
        not_tappable=not_tappable(model),
        feeds=describe_feeds(feeds),
        seed=feed_options.seed,
        optimization=options.optimization,
        first_anomaly=first_anomaly,
        mode=mode,
    )
    report.feed_values = dict(feeds)
    if tap_check is not None:  # name the two sides apart in the report
        tap_check.candidate = f"{model.name} (tapped)"
    report.float16 = any(s.dtype == "float16" for s in stats)
    report.shape_mismatches = _declared_vs_real(
        model, feeds, stats, values if mode == "values" else collected
    )
    if options.keep_values:
        report.values = {t: values[t] for t in taps if t in values}
    if ref is not None:
        say(f"running the reference {ref[1]}")
        _compare(report, model, taps, values, feeds, ref, options, info, origin, run_opts)
    return report


def _declared_vs_real(model: Model, feeds, stats: list[TensorStats], values) -> list:
    """Where the model's declared dtypes/shapes disagree with what the run produced.

    In statistics mode only shapes and dtypes are known, so each tapped tensor is stood in
    for by a zero-stride array of its real shape (no memory is allocated).
    """
    from surgeon.shapecheck import declared_vs_actual

    seen: dict = dict(feeds)
    for name, value in values.items():
        if name in {s.name for s in stats} or name in model.output_names:
            seen[name] = value
    for s in stats:
        if s.name not in seen and s.shape is not None and s.dtype not in (None, "str"):
            try:  # as_strided too: it rejects ml_dtypes' float8_e5m2 ("'<f1' not understood")
                seen[s.name] = np.lib.stride_tricks.as_strided(
                    np.zeros(1, np.dtype(s.dtype)),
                    shape=tuple(s.shape),
                    strides=(0,) * len(s.shape),
                )
            except TypeError:
                continue
    try:
        return declared_vs_actual(model, seen)
    except Exception:  # a best-effort diagnostic must never fail the debug run
        return []


def _compare(report, model, taps, values, feeds, ref, options, info, origin, run_opts) -> None:
    kind, name, obj = ref
    name_map = dict(options.name_map)  # reference name -> model name
    to_ref = {v: k for k, v in name_map.items()}
    collect_unknown_names("tensor", name_map.values(), model.tensor_names(), model.name)
    if kind == "arrays":
        expected = obj
        collect_unknown_names("tensor", name_map.keys(), list(expected), name)
    else:
        ref_model: Model = obj
        if kind == "model":
            collect_unknown_names(
                "tensor", name_map.keys(), ref_model.tensor_names(), ref_model.name
            )
        available = set(ref_model.tensor_names())
        wanted = [to_ref.get(t, t) for t in taps if to_ref.get(t, t) in available]
        ref_opts = run_opts
        if kind == "self" or options.reference_optimization:
            ref_opts = RunOptions(
                optimization=options.reference_optimization or run_opts.optimization,
                custom_op_libraries=run_opts.custom_op_libraries,
            )
        ref_feeds = {}
        missing = []
        for info_in in ref_model.inputs:
            source = name_map.get(info_in.name, info_in.name)  # reference input <- model input
            if source not in feeds:
                missing.append(info_in.name)
                continue
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
        if missing:
            raise SurgeonError(
                f"the reference {ref_model.name} has input(s) {', '.join(f'`{m}`' for m in missing)} that {model.name} does not",
                hint="Map them with --map REF_INPUT=MODEL_INPUT.",
            )
        expected = run(ref_model, ref_feeds, outputs=wanted, options=ref_opts)
    report.reference = name
    report.tolerance = options.tolerance
    diverged_set: set[str] = set()
    compared: set[str] = set()
    for i, t in enumerate(taps):
        ref_name = to_ref.get(t, t)
        if ref_name not in expected or t not in values:
            report.unmatched.append(t)
            continue
        actual, exp = values[t], expected[ref_name]
        note = ""
        both_arrays = isinstance(actual, np.ndarray) and isinstance(exp, np.ndarray)
        if (
            both_arrays  # sequences and optionals are compared element by element as they are
            and actual.dtype != exp.dtype
            and actual.dtype.kind in "fiub"
            and exp.dtype.kind in "fiub"
        ):
            note = f"compared as {exp.dtype.name} (model has {actual.dtype.name})"
            actual = actual.astype(exp.dtype)
        diff = compare_arrays(actual, exp, options.tolerance, name=t, reference=ref_name)
        if note:
            diff.message = (diff.message + "; " if diff.message else "") + note
        node, op, inputs = info.get(t, ("?", "?", []))
        layer = LayerDiff(diff, node, op, i, inputs, diverged=not diff.passed)
        compared.add(t)
        if layer.diverged:
            diverged_set.add(t)
        report.layers.append(layer)
    roots = []
    for layer in report.layers:
        if not layer.diverged:
            continue
        if any(x in diverged_set for x in layer.inputs):
            continue
        roots.append(layer)
    for layer in roots:
        layer.origin = origin(layer.node)
    if roots:
        report.root_cause = roots[0]
        report.other_roots = roots[1:]
        activation_inputs = [x for x in roots[0].inputs if x in set(info) and x not in compared]
        report.uncompared_inputs = activation_inputs


def save_values(report: DebugReport, path: str | Path) -> Path:
    """Write the tapped tensors and the inputs that produced them to an ``.npz`` (keys =
    tensor names), atomically; the file can be given back as ``--ref``."""
    from surgeon.fileio import atomic_write

    # Tensors only: a sequence or an empty optional has no .npz form.
    merged = {**report.feed_values, **report.values}
    arrays = {k: v for k, v in merged.items() if isinstance(v, np.ndarray)}
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


__all__ = ["DebugOptions", "DebugReport", "TensorStats", "LayerDiff", "debug", "stats_from_array"]
