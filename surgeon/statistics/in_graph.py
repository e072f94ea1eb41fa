"""Statistics computed in the graph: reduction nodes placed right after each tapped
tensor's producer, so only a few numbers per tensor leave onnxruntime and activations are
freed as in a plain run (see :mod:`surgeon.statistics` for what they compute)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from surgeon import fastops
from surgeon.errors import SurgeonError
from surgeon.model import Model, dtype_name
from surgeon.protos import copy_without_nodes, fill_node
from surgeon.statistics.definition import (
    COUNT_FIELDS,
    INTEGER_DTYPES,
    NEEDS_COUNTS,
    TensorStats,
    fill_moments,
    flag_stats,
    stats_from_array,
)

STATS_PREFIX = "surgeon_stats"


@dataclass(frozen=True)
class StatsOutputs:
    """The graph outputs that carry one tapped tensor's statistics: either ``numbers``
    (scalars, one per field of STAT_FIELDS or COUNT_FIELDS) and ``shape``, or ``value``,
    the tensor itself, measured with numpy. Iterating gives the output names."""

    numbers: tuple[str, ...] = ()
    shape: str | None = None
    value: str | None = None
    # A large tensor's moments and zeros, per chunk of its flattened elements: (mean,
    # sum of squared deviations, zero count) of each, combined in Python. ``numbers``
    # then holds min and max only.
    chunks: tuple[tuple[str, str, str], ...] = ()
    chunk_size: int = 0
    # surgeon.fastops' TensorStats: one float64 vector of the COUNT_FIELDS numbers.
    packed: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(
            [
                *self.numbers,
                *([self.packed] if self.packed else ()),
                *([self.shape] if self.shape else ()),
                *([self.value] if self.value else ()),
                *(name for pair in self.chunks for name in pair),
            ]
        )


# Element types whose extremes and zero count are taken on the tensor itself, not on its
# float64 copy (float64 is that copy).
_NATIVE = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64)
# Narrow floats onnxruntime's CPU computes in float32 behind casts it inserts.
_ROUNDED = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


# Fetched whole rather than measured in the graph: no numbers (strings), no known type
# (sequences, maps, untyped), or no exact float64 form and no ReduceMin kernel (uint64).
_FETCHED = (TensorProto.STRING, TensorProto.UNDEFINED, TensorProto.UINT64)


# Tensors above this many elements get their float64 moments a chunk at a time: the
# float64 copy and its centred copy then take 2 x 8 x CHUNK bytes instead of 16 bytes per
# element of the whole tensor (a YOLOv8n-size model at 640: its 1.6M-element tensors
# took 26 MB at once). Chan's pairwise combination keeps numpy's float64 numbers.
CHUNK = 2**18


@dataclass(frozen=True)
class _Constants:
    prefix: str
    chunks: int = 0  # chunk bounds needed: 0 .. chunks

    def bound(self, j: int) -> str:
        """The flat index j * CHUNK, as a 1-element int64 tensor (Slice's starts/ends)."""
        return f"{self.prefix}/bound_{j}"

    @property
    def axis0(self) -> str:
        return f"{self.prefix}/axis0"

    def zero(self, elem: int) -> str:
        return f"{self.prefix}/zero_{elem}"

    @property
    def flat(self) -> str:
        return f"{self.prefix}/flat"

    @property
    def pos_inf(self) -> str:
        return f"{self.prefix}/pos_inf"

    @property
    def neg_inf(self) -> str:
        return f"{self.prefix}/neg_inf"

    def initializers(self) -> list[onnx.TensorProto]:
        zeros = [(e, np.zeros((), helper.tensor_dtype_to_np_dtype(e))) for e in _NATIVE]
        return (
            [onnx.numpy_helper.from_array(z, self.zero(e)) for e, z in zeros]
            + [
                onnx.numpy_helper.from_array(np.array([-1], np.int64), self.flat),
                onnx.numpy_helper.from_array(np.array(math.inf), self.pos_inf),
                onnx.numpy_helper.from_array(np.array(-math.inf), self.neg_inf),
                onnx.numpy_helper.from_array(np.array([0], np.int64), self.axis0),
            ]
            + [
                onnx.numpy_helper.from_array(np.array([j * CHUNK], np.int64), self.bound(j))
                for j in range(self.chunks + 1 if self.chunks else 0)
            ]
        )


def _builders(nodes: list[onnx.NodeProto], infos: list[onnx.ValueInfoProto]):
    """``add(op, inputs, out, **attrs)`` appends a node named after its one output;
    ``reduce(op, source, out, elem)`` a scalar reduction (keepdims=0) whose output is
    typed in ``infos``. Both return the output's name."""

    def add(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(fill_node(onnx.NodeProto(), op, inputs, out, **attrs))
        return out

    def reduce(op: str, source: str, out: str, elem: int) -> str:
        add(op, [source], out, keepdims=0)
        infos.append(helper.make_tensor_value_info(out, elem, []))
        return out

    return add, reduce


def _stats_nodes(
    p: str,
    x: str,
    elem: int,
    counts: bool,
    c: _Constants,
    small: bool = False,
    chunks: int = 0,
) -> tuple[list[onnx.NodeProto], StatsOutputs, list[onnx.ValueInfoProto]]:
    """Nodes computing the statistics of tensor ``x`` (element type ``elem``), names under
    ``p``; with the outputs they define and those outputs' types. ``small``: the tensor
    is known to hold fewer than 2**24 elements (float32 counts it exactly). ``chunks``:
    take the moments over that many chunks of CHUNK flattened elements (float32 and
    float64 tensors of a known size, without counts; see :func:`_chunked_moments`).

    Each statistic is its own scalar output (keepdims=0): no Reshape/Concat nodes, whose
    per-node cost shows at a few thousand nodes.
    """
    nodes, infos = [], []
    add, reduce = _builders(nodes, infos)

    if chunks:
        return _chunked_stats_nodes(p, x, elem, c, chunks)
    # The sums are taken on a float64 copy: exact for every type but 64-bit integers
    # (whose extremes are taken in their own dtype), and sums of float32 values keep their
    # low digits. Its Shape is the tensor's; taking it from the copy keeps Shape off
    # exotic dtypes (onnxruntime has no Shape(19) kernel for float8).
    source = x
    if elem in _ROUNDED:
        # onnxruntime's CPU runs most float16/bfloat16 ops in float32 and inserts casts
        # around them; a Cast of ours right after one is fused with it (float32 -> double),
        # which skips the rounding to float16 and gives numbers the tensor never held
        # (seen on every Conv of a converted OCR model). A Reshape in between keeps the
        # tensor materialised in its own dtype at every optimisation level (measured;
        # an Identity is removed at level basic and above).
        source = add("Reshape", [x, c.flat], f"{p}/rounded")
    d = (
        source
        if elem == TensorProto.DOUBLE
        else add("Cast", [source], f"{p}/double", to=TensorProto.DOUBLE)
    )
    # (The Reshape above flattened a narrow float: its Shape comes from the tensor, which
    # onnxruntime's Shape kernel takes for float16 and bfloat16.)
    shape = add("Shape", [x if elem in _ROUNDED else d], f"{p}/shape")
    infos.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [None]))
    # Extremes and zeros on the tensor itself where that is exact and cheaper: int64
    # (float64 rounds beyond 2**53) and float32 (half the bytes of the copy).
    native = x if elem in _NATIVE else d
    native_elem = elem if elem in _NATIVE else TensorProto.DOUBLE
    low = high = native
    extreme_elem = native_elem
    if counts:
        nan_mask = add("IsNaN", [d], f"{p}/nan_mask")
        if elem != TensorProto.INT64:  # integers hold no NaN
            # min/max ignore NaN: a NaN becomes the neutral element of each reduction.
            low = add("Where", [nan_mask, c.pos_inf, d], f"{p}/nan_as_pos_inf")
            high = add("Where", [nan_mask, c.neg_inf, d], f"{p}/nan_as_neg_inf")
            extreme_elem = TensorProto.DOUBLE
    # Without counts, a NaN shows as a NaN mean and that tensor is measured again.
    numbers = [
        reduce("ReduceMin", low, f"{p}/min", extreme_elem),
        reduce("ReduceMax", high, f"{p}/max", extreme_elem),
    ]
    # Centered second moment (two passes): sum((x - mean)^2), stable where
    # sum(x^2)/n - mean^2 cancels catastrophically (a constant -8.764 gave std 0.075).
    # (Tried: the plain sums, with the centered form computed only where they would
    # cancel, on a slice that is empty elsewhere. It saves the Sub's pass but takes 12
    # more nodes per tensor, and onnxruntime's session creation costs about 0.5 ms per
    # node on this machine class: 2.9 against 1.7 s on a YOLOv8n-size model, for the
    # same run time. An If per tensor was worse: a subgraph session each.)
    mean = reduce("ReduceMean", d, f"{p}/mean", TensorProto.DOUBLE)
    centered = add("Sub", [d, mean], f"{p}/centered")
    numbers += [
        mean,
        reduce("ReduceSumSquare", centered, f"{p}/squared_deviations", TensorProto.DOUBLE),
    ]
    masks = [("zero", add("Equal", [native, c.zero(native_elem)], f"{p}/zero_mask"))]
    if counts:
        masks += [("nan", nan_mask), ("inf", add("IsInf", [d], f"{p}/inf_mask"))]
    # Counts: mask -> Cast -> ReduceSum (measured 2.3x faster than ReduceL1(Sign(x)) on
    # onnxruntime's CPU). float32 sums are exact below 2**24 and twice as fast as float64,
    # which is exact below 2**53; int64 is 8x slower (no vectorised kernel).
    count_elem = TensorProto.FLOAT if small and not counts else TensorProto.DOUBLE
    for label, mask in masks:
        as_number = add("Cast", [mask], f"{p}/{label}_as_number", to=count_elem)
        numbers.append(reduce("ReduceSum", as_number, f"{p}/{label}_count", count_elem))
    return nodes, StatsOutputs(numbers=tuple(numbers), shape=shape), infos


def _chunked_stats_nodes(
    p: str, x: str, elem: int, c: _Constants, chunks: int
) -> tuple[list[onnx.NodeProto], StatsOutputs, list[onnx.ValueInfoProto]]:
    """:func:`_stats_nodes` for a large float32/float64 tensor: extremes on the tensor
    itself; per chunk of its flattened elements (a Slice), the float64 moments (its
    float64 copy, its mean and centred sum of squares) and the zero count, freed chunk by
    chunk."""
    nodes, infos = [], []
    add, reduce = _builders(nodes, infos)

    shape = add("Shape", [x], f"{p}/shape")
    infos.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [None]))
    numbers = [
        reduce("ReduceMin", x, f"{p}/min", elem),
        reduce("ReduceMax", x, f"{p}/max", elem),
    ]
    flat = add("Reshape", [x, c.flat], f"{p}/flat")
    parts = []
    for j in range(chunks):
        q = f"{p}/chunk{j}"
        part = add("Slice", [flat, c.bound(j), c.bound(j + 1), c.axis0], f"{q}/part")
        d = (
            part
            if elem == TensorProto.DOUBLE
            else add("Cast", [part], f"{q}/double", to=TensorProto.DOUBLE)
        )
        mean = reduce("ReduceMean", d, f"{q}/mean", TensorProto.DOUBLE)
        centered = add("Sub", [d, mean], f"{q}/centered")
        squared = reduce("ReduceSumSquare", centered, f"{q}/squared_deviations", TensorProto.DOUBLE)
        # Zeros per chunk too: a mask and its float copy of the whole tensor took 5 bytes
        # per element at once (16 MB on a 3.2M-element Concat). float32 counts a chunk
        # exactly (CHUNK < 2**24).
        zero = add("Equal", [part, c.zero(elem)], f"{q}/zero_mask")
        as_number = add("Cast", [zero], f"{q}/zero_as_number", to=TensorProto.FLOAT)
        zeros = reduce("ReduceSum", as_number, f"{q}/zero_count", TensorProto.FLOAT)
        parts.append((mean, squared, zeros))
    return (
        nodes,
        StatsOutputs(numbers=tuple(numbers), shape=shape, chunks=tuple(parts), chunk_size=CHUNK),
        infos,
    )


def combine_chunks(
    means: list[float], squared: list[float], size: int, chunk: int
) -> tuple[float, float]:
    """The mean and sum of squared deviations of ``size`` elements from those of their
    consecutive chunks of ``chunk`` elements (the last one shorter): Chan et al.'s pairwise
    update, without the cancellation of sum(x^2) - n mean^2."""
    if not all(math.isfinite(v) for v in (*means, *squared)):
        return math.nan, math.nan  # NaN/Inf (or overflow): measured again with the counts
    counts = [chunk] * (len(means) - 1) + [size - chunk * (len(means) - 1)]
    mean = math.fsum(n * m for n, m in zip(counts, means, strict=True)) / size
    spread = math.fsum(n * (m - mean) ** 2 for n, m in zip(counts, means, strict=True))
    return mean, math.fsum(squared) + spread


def _static_size(t: onnx.TypeProto) -> float:
    """The element count of a tensor type with a fully static shape, else infinity."""
    tt = t.tensor_type
    if not _all_dims(t):  # (an exporter's -1 is an unknown dim, not a negative count)
        return math.inf
    return math.prod(d.dim_value for d in tt.shape.dim)


@functools.cache
def _onnxruntime_builds(elem: int, opset: int, ir_version: int, counts: bool) -> bool:
    """Whether onnxruntime has kernels for the statistics nodes of an ``elem`` tensor at
    this opset (one session on a tiny model, cached). Kernels are registered per opset
    and dtype, so a type a model computes with may still lack a Cast or Reduce here."""
    from surgeon.runner import RunOptions, Session

    c = _Constants("const")
    nodes, outs, infos = _stats_nodes("probe", "x", elem, counts, c)
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", elem, None)], infos, c.initializers()
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version
    try:
        Session(Model(proto), options=RunOptions(optimization="disabled"))
    except SurgeonError:
        return False
    return True


# float32 tensors at these opsets: onnxruntime has every kernel the statistics nodes use
# (a test checks the probe agrees), so the common case skips the probe's session (80 ms
# of a YOLOv8n-size debug run). Other types and opsets are probed.
_KNOWN_TO_BUILD = {TensorProto.FLOAT: range(11, 22)}


def _builds(elem: int, opset: int, ir_version: int, counts: bool) -> bool:
    """:func:`_onnxruntime_builds`, answered without a session where the answer is known."""
    return opset in _KNOWN_TO_BUILD.get(elem, ()) or _onnxruntime_builds(
        elem, opset, ir_version, counts
    )


def inferred_at_feeds(model: Model, feeds: Mapping[str, object]) -> dict[str, onnx.TypeProto]:
    """The types ONNX shape inference gives every tensor of ``model``'s main graph with
    its inputs at the feeds' shapes (empty when inference gives up). Only a plan: a shape
    found here can differ at run time (a wrong declaration, an op inference gets wrong),
    so whoever builds on it checks the run's shapes.

    The last result is kept on the model (the statistics and the layer comparison of one
    debug run ask for the same feeds)."""
    from surgeon.graph_facts import _fingerprint, inference_skeleton

    key = (
        tuple(
            (name, tuple(getattr(value, "shape", ()) or ()))
            for name, value in sorted(feeds.items())
        ),
        _fingerprint(model.proto.graph),  # a graph edited in place (names, counts)
    )
    cached = model.__dict__.get("_inferred_at_feeds")
    if cached is not None and cached[0] == key and cached[1] is model.proto.graph:
        return cached[2]
    skeleton = inference_skeleton(model)
    for vi in skeleton.graph.input:
        value = feeds.get(vi.name)
        shape = getattr(value, "shape", None)
        if shape is None or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape
        dims.ClearField("dim")
        for d in shape:
            dims.dim.add(dim_value=int(d))
    try:
        graph = onnx.shape_inference.infer_shapes(
            skeleton, check_type=False, strict_mode=False, data_prop=True
        ).graph
        found = {vi.name: vi.type for vi in [*graph.value_info, *graph.output]}
    except Exception:  # noqa: BLE001 - inference raises several types on real models; no plan then
        found = {}
    model.__dict__["_inferred_at_feeds"] = (key, model.proto.graph, found)
    return found


def run_sizes(
    model: Model, feeds: Mapping[str, object], types: Mapping[str, onnx.TypeProto]
) -> dict[str, int]:
    """Element counts of the typed tensors whose declared shape is not static, as ONNX
    shape inference gives them with the inputs at the feeds' shapes (nothing when every
    type is static, or when inference gives up). Only a plan: :func:`stats_from_outputs`
    checks each against the run's real shape, and a tensor of another size is measured
    again whole."""
    dynamic = [t for t, ty in types.items() if _static_size(ty) == math.inf]
    if not dynamic:
        return {}
    inferred = inferred_at_feeds(model, feeds)
    return {
        t: int(n) for t in dynamic if t in inferred and (n := _static_size(inferred[t])) < math.inf
    }


def static_types_at_feeds(
    model: Model, feeds: Mapping[str, object], types: Mapping[str, onnx.TypeProto]
) -> dict[str, onnx.TypeProto]:
    """``types`` with the shapes left open made static where shape inference at the
    feeds' shapes (:func:`inferred_at_feeds`) gives every dim, of the same element type
    and rank, agreeing with every dim already declared. A plan, as there: the caller
    checks the run's shapes."""
    open_ = [t for t, ty in types.items() if ty.HasField("tensor_type") and not _all_dims(ty)]
    if not open_:
        return dict(types)
    inferred = inferred_at_feeds(model, feeds)
    out = dict(types)
    for t in open_:
        found = inferred.get(t)
        if found is None or not _all_dims(found):
            continue
        declared, seen = types[t].tensor_type, found.tensor_type
        if declared.elem_type == seen.elem_type and _admits(
            declared, [e.dim_value for e in seen.shape.dim]
        ):
            out[t] = found
    return out


def with_shapes(
    types: Mapping[str, onnx.TypeProto], shapes: Mapping[str, Sequence[int]]
) -> dict[str, onnx.TypeProto]:
    """``types`` with each shape still open replaced by the one in ``shapes`` where that
    agrees with it (same rank, every known dim equal). A plan, as for
    :func:`static_types_at_feeds`."""
    out = dict(types)
    for t, shape in shapes.items():
        ty = types.get(t)
        if ty is None or not ty.HasField("tensor_type") or _all_dims(ty):
            continue
        declared = ty.tensor_type
        if _admits(declared, shape):
            out[t] = onnx.helper.make_tensor_type_proto(declared.elem_type, [int(n) for n in shape])
    return out


def _admits(declared: onnx.TypeProto.Tensor, dims: Sequence[int]) -> bool:
    """The declared tensor type admits the shape ``dims``: no shape declared, or the
    same rank with every known dim equal."""
    if not declared.HasField("shape"):
        return True
    return len(declared.shape.dim) == len(dims) and all(
        not _known(d) or d.dim_value == n for d, n in zip(declared.shape.dim, dims, strict=True)
    )


def _known(d) -> bool:
    """A dim given as a number (exporters write -1 for an unknown one)."""
    return d.HasField("dim_value") and d.dim_value >= 0


def _all_dims(t: onnx.TypeProto) -> bool:
    """Every dim of a tensor type is a known number."""
    tt = t.tensor_type
    return tt.HasField("shape") and all(_known(d) for d in tt.shape.dim)


def build_stats_model(
    model: Model,
    taps: list[str],
    types: Mapping[str, onnx.TypeProto],
    *,
    counts: bool = False,
    borrowed: Collection[str] = (),
    sizes: Mapping[str, int] | None = None,
) -> tuple[Model, dict[str, StatsOutputs]]:
    """A copy of ``model`` with, after each tapped tensor's producer, reduction nodes whose
    only outputs are the tensor's statistics, extremes and shape.

    A tensor whose statistics onnxruntime cannot compute in the graph (see the package
    docstring) is fetched as it is instead (``StatsOutputs.value``): a slower path, never
    an error from a node surgeon inserted.

    Args:
        counts: Also count NaN and Inf exactly, and take min/max ignoring NaN (the second
            pass, for the few tensors whose first-pass numbers are not finite).
        borrowed: Initializers left out of the new model: the caller hands them to
            onnxruntime itself (``surgeon.runner.Session(..., initializers=...)`` with
            ``surgeon.runner.borrowable_weights``), so the weights are not copied.
        sizes: Element counts expected at run time where the types leave them open
            (:func:`run_sizes`), so large tensors of dynamic models are chunked too.

    Returns:
        The new model and ``tap -> StatsOutputs`` for every tap.
    """
    proto = copy_without_nodes(model.proto, frozenset(borrowed))
    graph = proto.graph
    taken = set(model.tensor_names()) | {n.name for n in model.proto.graph.node}
    prefix = STATS_PREFIX
    while any(t.startswith(prefix) for t in taken):
        prefix += "_"
    # Chunks are for tensors whose element count is known before the run (the run's
    # shape is checked against it: a tensor of another size is measured again whole).
    planned = sizes or {}
    sizes = {t: planned.get(t, _static_size(types[t])) if t in types else math.inf for t in taps}
    chunked = {
        t: math.ceil(n / CHUNK)
        for t, n in sizes.items()
        if not counts
        and CHUNK < n < math.inf
        and types[t].tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE)
    }
    fused = fastops.available()
    if fused:
        chunked = {}
        proto.opset_import.add(domain=fastops.DOMAIN, version=1)
    c = _Constants(prefix, max(chunked.values(), default=0))
    graph.initializer.extend(c.initializers())
    wanted = set(taps)
    outputs: dict[str, StatsOutputs] = {}
    for node in model.proto.graph.node:
        graph.node.append(node)
        for t in node.output:
            if t not in wanted or t in outputs:
                continue
            elem = types[t].tensor_type.elem_type if t in types else TensorProto.UNDEFINED
            if fused and elem in fastops.STATS_TYPES:
                outputs[t] = add_fused_stats(graph, t, f"{prefix}/{len(outputs)}")
                continue
            if (
                elem in _FETCHED
                or model.opset < 11
                or not _builds(elem, model.opset, model.proto.ir_version, counts)
            ):
                # Strings, sequences, maps, untyped tensors, uint64 and dtypes without
                # kernels: the value itself (the runner exposes it; types are inferred).
                outputs[t] = StatsOutputs(value=t)
                continue
            new, outs, infos = _stats_nodes(
                f"{prefix}/{len(outputs)}", t, elem, counts, c, sizes[t] < 2**24, chunked.get(t, 0)
            )
            graph.node.extend(new)
            graph.output.extend(infos)
            outputs[t] = outs
    for t in taps:  # graph inputs or names no node produces: nothing to insert after
        outputs.setdefault(t, StatsOutputs(value=t))
    return model.with_proto(proto), outputs


def add_fused_stats(graph: onnx.GraphProto, tensor: str, prefix: str) -> StatsOutputs:
    """Append one node of surgeon's kernel library measuring ``tensor`` (every number,
    NaN/Inf counts included, in one pass; see :mod:`surgeon.fastops`) and make its
    outputs graph outputs. Only where ``fastops.available()``, for a tensor whose element
    type is in ``fastops.STATS_TYPES``; the model must import ``fastops.DOMAIN``."""
    numbers, shape = f"{prefix}/stats", f"{prefix}/shape"
    node = fill_node(graph.node.add(), fastops.STATS, [tensor], numbers)
    node.output.append(shape)
    node.domain = fastops.DOMAIN
    graph.output.extend(
        [
            helper.make_tensor_value_info(numbers, TensorProto.DOUBLE, [7]),
            helper.make_tensor_value_info(shape, TensorProto.INT64, [None]),
        ]
    )
    return StatsOutputs(packed=numbers, shape=shape)


def _stats_from_numbers(
    name: str, node: str, op: str, index: int, numbers: list, shape, dtype: str | None
) -> TensorStats:
    """TensorStats from the scalars of :func:`_stats_nodes` (STAT_FIELDS or COUNT_FIELDS
    order; Python ints for 64-bit integer extremes and counts)."""
    size = int(np.prod(shape)) if shape is not None else 0
    s = TensorStats(
        name,
        node,
        op,
        index,
        [int(d) for d in shape] if shape is not None else None,
        dtype,
        size=size,
    )
    if size == 0:
        return flag_stats(s)
    if len(numbers) == len(COUNT_FIELDS):
        mn, mx, mean, squared, zeros, nan, inf = numbers
        s.nan, s.inf = int(nan), int(inf)
    else:
        mn, mx, mean, squared, zeros = numbers
        if dtype not in INTEGER_DTYPES and not all(
            math.isfinite(v) for v in (mean, squared, mn, mx)
        ):
            s.flags = [NEEDS_COUNTS]  # NaN/Inf (or overflow): measured again with counts
            return s
    s.zeros = zeros / size
    return flag_stats(fill_moments(s, mn, mx, mean, squared))


def stats_from_outputs(
    name: str,
    node: str,
    op: str,
    index: int,
    outputs: StatsOutputs,
    values: Mapping[str, object],
    dtype: str | None,
) -> TensorStats:
    """TensorStats of one tap from a run of :func:`build_stats_model`'s model.

    Args:
        outputs: The tap's entry in the mapping ``build_stats_model`` returned.
        values: The run's outputs by name.
        dtype: The tap's dtype name (``dtype_name`` of its element type), if known.
    """
    if outputs.value is not None:
        return stats_from_array(name, node, op, index, values[outputs.value])
    shape = values[outputs.shape]
    if outputs.packed is not None:
        numbers = np.asarray(values[outputs.packed]).tolist()
        return _stats_from_numbers(name, node, op, index, numbers, shape, dtype)
    arrays = [np.asarray(values[n]) for n in outputs.numbers]
    numbers = [a.item() for a in arrays]
    if outputs.chunks:
        size = int(np.prod(shape))
        k = len(outputs.chunks)
        if not (outputs.chunk_size * (k - 1) < size <= outputs.chunk_size * k):
            # The run's tensor is not the size the chunks were laid out for (a declared
            # shape that was wrong): measure it again whole, with the counts.
            s = TensorStats(name, node, op, index, [int(d) for d in shape], dtype, size=size)
            s.flags = [NEEDS_COUNTS]
            return s
        means = [float(np.asarray(values[m])) for m, _, _ in outputs.chunks]
        squares = [float(np.asarray(values[q])) for _, q, _ in outputs.chunks]
        zeros = sum(int(np.asarray(values[z])) for _, _, z in outputs.chunks)
        mean, squared = combine_chunks(means, squares, size, outputs.chunk_size)
        numbers = [numbers[0], numbers[1], mean, squared, zeros]
    s = _stats_from_numbers(name, node, op, index, numbers, shape, dtype)
    if not outputs.chunks and arrays[-1].dtype == np.float32 and s.size >= 2**24:
        # Counted in float32 on a declared shape smaller than the real one: not exact.
        s.flags = [NEEDS_COUNTS]
    return s


def recount_stats(
    model: Model,
    stats: list[TensorStats],
    types: Mapping[str, onnx.TypeProto],
    feeds: Mapping[str, np.ndarray],
    options,
    progress: Callable[[str], None] | None = None,
) -> list[TensorStats]:
    """``stats`` with each entry flagged ``needs-counts`` measured again, with exact NaN/Inf
    counts and NaN-ignoring extremes, in one more run (still without keeping activations
    alive). The first pass leaves those counts out because almost no tensor needs them."""
    from surgeon.runner import run

    recount = {s.name: i for i, s in enumerate(stats) if s.flags == [NEEDS_COUNTS]}
    if not recount:
        return stats
    if progress is not None:
        progress(f"counting NaN/Inf in {len(recount)} tensors")
    count_model, count_outs = build_stats_model(model, list(recount), types, counts=True)
    names = list(dict.fromkeys(x for outs in count_outs.values() for x in outs))
    try:
        again = run(count_model, feeds, outputs=names, options=options)
    except SurgeonError:
        # The model itself just ran on these feeds, so the failure is in the nodes surgeon
        # inserted: never blame the model for them; fetch the tensors and use numpy.
        count_outs = {t: StatsOutputs(value=t) for t in recount}
        again = run(model, feeds, outputs=list(recount), options=options)
    stats = list(stats)
    for t, i in recount.items():
        old = stats[i]
        dtype = dtype_name(types[t].tensor_type.elem_type) if t in types else old.dtype
        stats[i] = stats_from_outputs(t, old.node, old.op, old.index, count_outs[t], again, dtype)
    return stats
