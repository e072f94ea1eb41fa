"""The batch-item check: item i of a batch-B run must equal the batch-1 run of item i
(:func:`check_items`), and when it does not, the first node where the items stop being
independent (:func:`find_batch_mixer`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from surgeon.baked import SHAPE_INPUTS, integer_constants
from surgeon.compare import Tolerance, compare_arrays
from surgeon.dynamic.results import (
    DimVariable,
    ItemCheck,
    ItemOutput,
    SizeCase,
    Suspect,
    short_error,
)
from surgeon.errors import SurgeonError
from surgeon.model import Model, TensorInfo
from surgeon.runner import RunOptions

# Item i of a batch-B run must equal the batch-1 run of item i, up to rounding. An element
# matches when |batch - item| <= atol * scale + rtol * |item|, where scale is
# max(1, max |item|) over the tensor's items: onnxruntime's CPU reductions block their
# loops by batch size, so a float32 sum is reassociated and its error grows with the
# magnitude of the tensor, not of the element (magika's LayerNorm Sum: 1.8e-4 absolute
# at a magnitude near 1e3). Measured with onnxruntime 1.32 on the CPU, B against 1:
# - rounding at magika's output (probabilities, scale 1): 2.2e-5 (seed 0) to 5.6e-5
#   (the worst of seeds 0-20 and B=2, 3, 8, 16); inside it up to 8e-4 x scale (a Tanh
#   that saturates keeps its input's absolute error while its own scale drops to 1);
#   the OCR det/cls models and the detector heads: bit-identical;
# - mixing (tests/test_batch.py): ReduceMean over the batch axis 2.3 at scale ~3.5,
#   Softmax over it 0.99 at scale 1, i.e. the order of the values themselves.
# 1e-3 x scale sits 18x above the worst output rounding seen and 300x below mixing.
# Inside the graph each node is judged alone (fed its items' own inputs), where only its
# own rounding counts, so rounding propagated along a chain never blames a node.
BATCH_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3)


@dataclass
class Gap:
    """How far ``actual`` is from ``expected`` under the item tolerance.

    ``excess`` is the worst element's difference over what the tolerance allows there
    (0 when bit-identical, <= 1 passes, inf for a shape, dtype or NaN/Inf mismatch);
    ``max_abs`` is the largest absolute difference (None when not comparable).
    """

    excess: float
    max_abs: float | None = None
    count: int = 0
    size: int = 0
    why: str = ""

    @property
    def passed(self) -> bool:
        return self.excess <= 1.0

    def text(self) -> str:
        if self.why:
            return self.why
        worst = f", max abs diff {self.max_abs:.3g}" if self.max_abs is not None else ""
        return f"{self.count} of {self.size} elements differ{worst}"


def magnitude(values: Sequence[np.ndarray]) -> float:
    """max(1, max finite |value|) over ``values``: the scale of the item tolerance's atol."""
    top = 1.0
    for v in values:
        if isinstance(v, np.ndarray) and v.size and v.dtype.kind in "fc":
            a = np.abs(v.astype(np.float64) if v.dtype.kind == "f" else v)
            finite = a[np.isfinite(a)]
            if finite.size:
                top = max(top, float(finite.max()))
    return top


def item_gap(actual, expected, tolerance: Tolerance, scale: float = 1.0) -> Gap:
    """Compare one item's tensor of the batch run with its batch-1 run. Cheap first: a
    shape check and one equality pass (the usual, bit-identical case costs nothing more);
    differences are measured only when there are some."""
    if not isinstance(actual, np.ndarray) or not isinstance(expected, np.ndarray):
        return Gap(0.0)
    size = int(expected.size)
    if actual.shape != expected.shape:
        return Gap(
            math.inf, None, size, size, f"shape {list(actual.shape)} != {list(expected.shape)}"
        )
    if actual.dtype != expected.dtype:
        return Gap(math.inf, None, size, size, f"dtype {actual.dtype} != {expected.dtype}")
    floating = expected.dtype.kind in "fc"
    if np.array_equal(actual, expected, equal_nan=floating):
        return Gap(0.0, 0.0, 0, size)
    if not floating or tolerance.exact:
        # integers, bools and --exact: any difference is one (compare_arrays words it)
        d = compare_arrays(actual, expected, Tolerance(0.0, 0.0, exact=tolerance.exact))
        return Gap(math.inf, d.max_abs, d.mismatches or 1, size)
    a = actual.astype(np.complex128 if expected.dtype.kind == "c" else np.float64)
    b = expected.astype(a.dtype)
    both = np.isfinite(a) & np.isfinite(b)
    # NaN matches NaN and an infinity the same infinity; anything else non-finite differs
    odd = ~both & ~((np.isnan(a) & np.isnan(b)) | (a == b))
    diff = np.abs(a - b)
    diff[~both] = 0.0
    allowed = tolerance.atol * scale + tolerance.rtol * np.abs(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff > allowed, np.where(allowed > 0, diff / allowed, math.inf), 0.0)
    count = int(np.count_nonzero(ratio) + np.count_nonzero(odd))
    excess = math.inf if odd.any() else float(ratio.max(initial=0.0))
    return Gap(excess, float(diff.max(initial=0.0)), count, size)


def stack_axes(shape: Sequence[int], item: Sequence[int], size: int) -> list[int]:
    """The axes on which ``size`` items of shape ``item`` can stack into ``shape``."""
    if len(shape) != len(item):
        return []
    return [
        k
        for k in range(len(shape))
        if item[k] == 1
        and shape[k] == size
        and all(shape[j] == item[j] for j in range(len(shape)) if j != k)
    ]


class _BatchRelation:
    """How one tensor of a batch-B run (``whole``) relates to the same tensor of the B
    batch-1 runs of its items (``parts``).

    The tensor *follows the batch* when it stacks the items' values on one axis (size 1
    for an item, B for the batch), or when every item gives the same value (constants,
    and shapes: ``Shape`` of a batch differs from an item's but depends on no item).
    """

    def __init__(self, whole, parts: Sequence, tolerance: Tolerance, axis: int | None = None):
        self.whole = whole
        self.parts = list(parts)
        self.size = len(self.parts)
        self.tolerance = tolerance
        self.declared_axis = axis
        self.tensor = isinstance(whole, np.ndarray) and all(
            isinstance(p, np.ndarray) for p in self.parts
        )
        self.item_shape: list[int] | None = None
        self.same_shapes = True
        self.invariant = True
        self.axes: dict[int, float] = {}  # passing stacking axis -> worst max abs
        self.excess = 0.0  # the best axis's worst excess (inf: no axis fits)
        self.best_axis: int | None = None  # the closest stacking axis, passing or not
        self.shared = False  # the same for every item, and shaped like one item
        self.failure: tuple[int, int, Gap] | None = None  # (axis, item, gap)
        self.scale = 1.0  # max(1, max |item|): what atol is multiplied by
        if not self.tensor:
            return
        self.item_shape = list(self.parts[0].shape)
        self.same_shapes = all(list(p.shape) == self.item_shape for p in self.parts)
        if not self.same_shapes:
            self.invariant = False
            self.excess = math.inf
            return
        self.scale = magnitude(self.parts)
        self.invariant = all(
            item_gap(p, self.parts[0], tolerance, self.scale).passed for p in self.parts[1:]
        )
        axes = stack_axes(list(whole.shape), self.item_shape, self.size)
        if axis is not None:
            axes = [k for k in axes if k == axis]
        best = math.inf
        for k in axes:
            gaps = [
                item_gap(np.take(whole, [i], axis=k), p, tolerance, self.scale)
                for i, p in enumerate(self.parts)
            ]
            i, worst = max(enumerate(gaps), key=lambda g: g[1].excess)
            if worst.passed:
                self.axes[k] = max(g.max_abs or 0.0 for g in gaps)
            elif self.failure is None:
                self.failure = (k, i, worst)
            if worst.excess < best or self.best_axis is None:
                best, self.best_axis = worst.excess, k
        # Invariance excuses only a tensor without a batch axis (a constant, a Shape): one
        # that has the batch's shape must stack its items (Softmax over the batch axis
        # of items that alone all give 1.0 does not).
        self.shared = self.invariant and list(whole.shape) == self.item_shape
        self.excess = 0.0 if self.axes or self.shared else best

    @property
    def stacked_axis(self) -> int | None:
        return min(self.axes) if self.axes else None

    @property
    def follows(self) -> bool:
        return not self.tensor or self.stacked_axis is not None or self.shared

    def assembled(self):
        """The batch assembled from the items' own values: stacked on the batch axis, or
        the batch's value when every item gives the same (a shape); None when the items
        do not stack (different shapes, or no axis to stack on)."""
        if not self.tensor or not self.same_shapes:
            return None
        if self.best_axis is not None:
            return np.concatenate(self.parts, axis=self.best_axis)
        if self.shared:
            return self.whole
        return None

    def problem(self, dim: str) -> str:
        """Why the tensor does not follow the batch, in words ('' when it does)."""
        shape, item = list(self.whole.shape), self.item_shape
        at = f"{dim}={self.size}"
        if not self.same_shapes:
            return f"the items' {dim}=1 runs give different shapes, which no batch of {self.size} can stack"
        if self.failure is not None:
            k, i, g = self.failure
            return f"item {i} (axis {k}) differs from its {dim}=1 run: {g.text()}"
        if shape == item:
            return (
                f"has no batch axis: it is {shape} at {at} as for one item, and not the same "
                "for every item and the batch, so the items are mixed"
            )
        folded = [
            k
            for k in range(len(shape))
            if len(shape) == len(item)
            and shape[k] == self.size * item[k]
            and all(shape[j] == item[j] for j in range(len(shape)) if j != k)
        ]
        text = f"does not carry the batch: it is {shape} at {at}, where one item gives {item}"
        if self.declared_axis is not None:
            text += f" (declared with {dim} on axis {self.declared_axis})"
        if folded:
            text += f"; the {self.size} items are folded into axis {folded[0]}"
        return text


def _item_feeds(feeds: Mapping[str, np.ndarray], var: DimVariable, index: int) -> dict:
    """The feeds of item ``index`` alone: each input cut to size 1 on the batch axes."""
    out = dict(feeds)
    for name, axis in var.axes:
        out[name] = np.take(out[name], [index], axis=axis)
    return out


def batch_case(var: DimVariable, cases: Sequence[SizeCase]) -> SizeCase | None:
    """The run whose items are checked: the largest size of ``var`` (above 1) among the
    first run and the runs that vary ``var``."""
    eligible = [
        c
        for c in cases
        if c.ran and c.dims[var.name] > 1 and (c.varied is None or c.varied == var.name)
    ]
    return max(eligible, key=lambda c: c.dims[var.name], default=None)


def _declared_batch_axis(info: TensorInfo | None, var: DimVariable) -> int | None:
    if info is None or info.shape is None:
        return None
    return next((k for k, d in enumerate(info.shape) if d == var.name), None)


def check_items(
    model: Model,
    session,
    var: DimVariable,
    case: SizeCase,
    feeds: Mapping[str, np.ndarray],
    values: Mapping[str, np.ndarray],
    tolerance: Tolerance = BATCH_TOLERANCE,
) -> ItemCheck:
    """Split the run ``case`` (``feeds`` gave ``values``) into its items along ``var``
    and check each output against the run of each item alone."""
    size = case.dims[var.name]
    check = ItemCheck(var.name, size, case.label, tolerance)
    declared = {o.name: o for o in model.outputs}
    parts: dict[str, list] = {n: [] for n in model.output_names}
    for i in range(size):
        try:
            item = session.run(_item_feeds(feeds, var, i))
        except SurgeonError as e:
            check.error = f"item {i} alone ({var.name}=1) did not run: {short_error(e.message)}"
            return check
        for n in parts:
            parts[n].append(item[n])
    for n in model.output_names:
        rel = _BatchRelation(
            values[n], parts[n], tolerance, _declared_batch_axis(declared.get(n), var)
        )
        if not rel.tensor:
            check.outputs.append(ItemOutput(n, True, problem="not a tensor: not compared"))
            continue
        axis = rel.stacked_axis
        # An output without a batch axis passes only when it is the same for every item
        # and for the batch (a constant); invariance alone is enough only inside the
        # graph, where a Shape of the batch differs from an item's and is still right.
        shared = (
            axis is None
            and rel.declared_axis is None
            and rel.invariant
            and item_gap(rel.whole, rel.parts[0], tolerance, rel.scale).passed
        )
        ok = axis is not None or shared
        worst = rel.axes.get(axis, 0.0) if axis is not None else None
        if axis is None and rel.failure is not None:  # the axis the items were compared on
            axis, worst = rel.failure[0], rel.failure[2].max_abs
        check.outputs.append(
            ItemOutput(
                n,
                ok,
                axis,
                list(rel.whole.shape),
                rel.item_shape,
                worst,
                "" if ok else rel.problem(var.name),
            )
        )
    return check


def _single_node_model(model: Model, node, values: Mapping[str, np.ndarray]) -> Model:
    """``node`` alone: its fed inputs become graph inputs, its initializers stay."""
    g = model.proto.graph
    initializers = {t.name: t for t in g.initializer}
    inputs = [
        onnx.helper.make_tensor_value_info(
            x, onnx.helper.np_dtype_to_tensor_dtype(values[x].dtype), values[x].shape
        )
        for x in dict.fromkeys(node.input)
        if x in values
    ]
    used = [initializers[x] for x in dict.fromkeys(node.input) if x in initializers]
    outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    graph = onnx.helper.make_graph([node], "isolated", inputs, outputs, used)
    proto = onnx.helper.make_model(
        graph, opset_imports=list(model.proto.opset_import), ir_version=model.proto.ir_version
    )
    proto.functions.extend(model.proto.functions)
    return model.derive(proto)  # its initializers' external data is where the model's is


def _isolated(
    model: Model,
    node,
    relations: Mapping[str, _BatchRelation],
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    options: RunOptions | None,
) -> tuple[str, _BatchRelation] | None:
    """Judge ``node`` by its own behaviour: run it alone on the batch assembled from its
    items' own inputs (each input's batch-1 values stacked on the batch axis) and relate
    its output to the items' batch-1 outputs. Rounding upstream cannot reach it, so an
    elementwise or per-item node is exact (or within its own rounding) whatever came
    before. Returns the worst output and its relation; None when the node cannot be
    judged alone (a subgraph, inputs that do not stack, or it does not run alone)."""
    from surgeon.runner import Session

    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    initializers = {t.name for t in model.proto.graph.initializer}
    values: dict[str, np.ndarray] = {}
    for x in node.input:
        if not x or x in initializers or x in values:
            continue
        if x in feeds:
            values[x] = feeds[x]  # a graph input: the batch feeds are the items stacked
            continue
        rel = relations.get(x)
        value = rel.assembled() if rel is not None else None
        if value is None:
            return None
        values[x] = value
    outputs = [o for o in node.output if o and o in relations and relations[o].tensor]
    if not outputs:
        return None
    try:
        got = Session(_single_node_model(model, node, values), options=options).run(values)
    except SurgeonError:
        return None
    judged = [
        (o, _BatchRelation(got[o], relations[o].parts, tolerance))
        for o in outputs
        if isinstance(got.get(o), np.ndarray) and relations[o].same_shapes
    ]
    return max(judged, key=lambda j: j[1].excess, default=None)


def find_batch_mixer(
    model: Model,
    var: DimVariable,
    feeds: Mapping[str, np.ndarray],
    size: int,
    tolerance: Tolerance = BATCH_TOLERANCE,
    options: RunOptions | None = None,
) -> Suspect | None:
    """The node that mixes (or folds) the items of a batch, judged by its own isolated
    behaviour: among the nodes whose output does not follow the batch in the full run,
    each is run alone on its items' own inputs stacked (see ``_isolated``), and the one
    with the worst isolated error beyond ``tolerance`` is named, wherever it sits in the
    node order. None when no node errs beyond tolerance on its own (accumulated
    rounding, or a subgraph), or the tapped model does not run."""
    from surgeon.runner import Session

    g = model.proto.graph
    names = [o for n in g.node for o in n.output if o]
    try:
        session = Session(model, extra_outputs=names, options=options)
        whole = session.run(feeds, names)
        items = [session.run(_item_feeds(feeds, var, i), names) for i in range(size)]
    except SurgeonError:
        return None
    relations = {}
    for n in names:
        relations[n] = _BatchRelation(whole.pop(n), [it.pop(n) for it in items], tolerance)
    del whole, items
    worst: tuple[float, object, str, _BatchRelation] | None = None
    for node in g.node:
        if all(relations[o].follows for o in node.output if o in relations):
            continue
        judged = _isolated(model, node, relations, feeds, tolerance, options)
        if judged is None or judged[1].excess <= 1.0:
            continue
        if worst is None or judged[1].excess > worst[0]:
            worst = (judged[1].excess, node, *judged)
    if worst is None:
        return None
    _, node, out, rel = worst
    label = node.name or out
    at = f"{var.name}={size}"
    shape, item = list(rel.whole.shape), rel.item_shape
    constants = integer_constants(model)
    if rel.best_axis is None:
        for index, role in SHAPE_INPUTS.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                values = [int(v) for v in np.ravel(constants[node.input[index]][1])]
                reason = (
                    f"folds the batch: at {at} its output is {shape}, where one item gives {item}"
                )
                return Suspect(
                    label,
                    node.op_type,
                    reason,
                    node.input[index],
                    role,
                    values,
                    source="batch",
                    batch_status="shape",
                )
    # A node whose own result moves by rounding only (a reduction whose kernel blocks by
    # batch size) is told apart from one that mixes values: the user chose a tolerance
    # below its rounding, and should read that, not "mixes".
    small = rel.failure is not None and (rel.failure[2].max_abs or 0.0) <= 1e-3 * rel.scale
    what = "changes with the batch size by rounding only" if small else "mixes the batch items"
    return Suspect(
        label,
        node.op_type,
        f"{what}: its output `{out}`, with the items' own inputs stacked, {rel.problem(var.name)}",
        source="batch",
        batch_status="mismatch" if rel.best_axis is not None or rel.shared else "shape",
    )
