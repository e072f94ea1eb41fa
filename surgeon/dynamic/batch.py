"""The batch-item check: item i of a batch-B run must equal the batch-1 run of item i
(:func:`check_items`), and when it does not, the first node where the items stop being
independent (:func:`find_batch_mixer`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from surgeon.baked import SHAPE_INPUTS, integer_constants
from surgeon.compare import TensorDiff, Tolerance, compare_arrays
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

# Item i of a batch-B run must equal the batch-1 run of item i. Measured with onnxruntime
# 1.32 on the CPU (Conv, MatMul, Gemm, attention, Resize, InstanceNormalization, the
# sample detector; optimisations off and on, 1 and 4 threads, B up to 16): bit-identical.
# Kernels elsewhere may block their loops by batch size and round differently, so the
# default allows what reassociating a float32 sum can cost; mixing items costs far more.
BATCH_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-5)


class _BatchRelation:
    """How one tensor of a batch-B run relates to the same tensor of B batch-1 runs, fed
    item by item (so that only one batch-1 run is held at a time).

    The tensor *follows the batch* when it stacks the items' values on one axis (size 1
    for an item, B for the batch), or when every item gives the same value (constants,
    and shapes: ``Shape`` of a batch differs from an item's but depends on no item).
    """

    def __init__(self, whole, size: int, tolerance: Tolerance, axis: int | None = None):
        self.whole = whole
        self.size = size
        self.tolerance = tolerance
        self.tensor = isinstance(whole, np.ndarray)
        self.first = None
        self.item_shape: list[int] | None = None
        self.same_shapes = True
        self.invariant = True
        self.axes: dict[int, float] = {}  # stacking axis -> worst max abs so far
        self.failure: tuple[int, int, TensorDiff] | None = None  # (axis, item, diff)
        self.declared_axis = axis

    def add(self, index: int, value) -> None:
        if not self.tensor or not isinstance(value, np.ndarray) or not self.same_shapes:
            return
        if self.first is None:
            self.first = value
            self.item_shape = list(value.shape)
            shape, item = list(self.whole.shape), self.item_shape
            if len(shape) == len(item):
                for k in range(len(shape)):
                    others = all(shape[j] == item[j] for j in range(len(shape)) if j != k)
                    if item[k] == 1 and shape[k] == self.size and others:
                        self.axes[k] = 0.0
            if self.declared_axis is not None:
                self.axes = {k: v for k, v in self.axes.items() if k == self.declared_axis}
        elif list(value.shape) != self.item_shape:
            self.same_shapes = False
            self.invariant = False
            self.axes = {}
            return
        elif self.invariant:
            self.invariant = bool(compare_arrays(value, self.first, self.tolerance))
        for k in list(self.axes):
            d = compare_arrays(np.take(self.whole, [index], axis=k), value, self.tolerance)
            if d.passed:
                self.axes[k] = max(self.axes[k], d.max_abs or 0.0)
            else:
                del self.axes[k]
                if self.failure is None:
                    self.failure = (k, index, d)

    @property
    def stacked_axis(self) -> int | None:
        return min(self.axes) if self.axes else None

    @property
    def follows(self) -> bool:
        return not self.tensor or self.stacked_axis is not None or self.invariant

    def problem(self, dim: str) -> str:
        """Why the tensor does not follow the batch, in words ('' when it does)."""
        shape, item = list(self.whole.shape), self.item_shape
        at = f"{dim}={self.size}"
        if not self.same_shapes:
            return f"the items' {dim}=1 runs give different shapes, which no batch of {self.size} can stack"
        if self.failure is not None:
            k, i, d = self.failure
            worst = f", max abs diff {d.max_abs:.3g}" if d.max_abs is not None else ""
            return f"item {i} (axis {k}) differs from its {dim}=1 run: {d.message}{worst}"
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
    relations = {
        n: _BatchRelation(values[n], size, tolerance, _declared_batch_axis(declared.get(n), var))
        for n in model.output_names
    }
    for i in range(size):
        try:
            item = session.run(_item_feeds(feeds, var, i))
        except SurgeonError as e:
            check.error = f"item {i} alone ({var.name}=1) did not run: {short_error(e.message)}"
            return check
        for n, rel in relations.items():
            rel.add(i, item[n])
    for n, rel in relations.items():
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
            and bool(compare_arrays(rel.whole, rel.first, tolerance))
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


def find_batch_mixer(
    model: Model,
    var: DimVariable,
    feeds: Mapping[str, np.ndarray],
    size: int,
    tolerance: Tolerance = BATCH_TOLERANCE,
    options: RunOptions | None = None,
) -> Suspect | None:
    """The node where the items of a batch first stop being independent: the first node
    whose inputs all follow the batch (see ``_BatchRelation``) and whose output does not.
    None when no main-graph node can be named (or the tapped model does not run)."""
    from surgeon.edits.extract import subgraph_reads
    from surgeon.runner import Session

    g = model.proto.graph
    names = [o for n in g.node for o in n.output if o]
    try:
        session = Session(model, extra_outputs=names, options=options)
        whole = session.run(feeds, names)
        relations = {n: _BatchRelation(whole[n], size, tolerance) for n in names}
        del whole
        for i in range(size):
            item = session.run(_item_feeds(feeds, var, i), names)
            for n, rel in relations.items():
                rel.add(i, item[n])
    except SurgeonError:
        return None
    constants = integer_constants(model)
    broken: set[str] = set()
    for node in g.node:
        bad = [o for o in node.output if o in relations and not relations[o].follows]
        if not bad:
            continue
        if any(x in broken for x in list(node.input) + subgraph_reads(node)):
            broken.update(bad)
            continue
        rel = relations[bad[0]]
        label = node.name or bad[0]
        at = f"{var.name}={size}"
        shape, item = list(rel.whole.shape), rel.item_shape
        for index, role in SHAPE_INPUTS.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                values = [int(v) for v in np.ravel(constants[node.input[index]][1])]
                reason = (
                    f"folds the batch: at {at} its output is {shape}, where one item gives {item}"
                )
                return Suspect(
                    label, node.op_type, reason, node.input[index], role, values, source="batch"
                )
        return Suspect(
            label,
            node.op_type,
            f"mixes the batch items: its output `{bad[0]}` {rel.problem(var.name)}",
            source="batch",
        )
    return None
