"""Statistics of tapped tensors: with numpy over values, or with reduction nodes placed in
the graph right after each tensor's producer (so activations are freed as in a plain run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from surgeon.model import Model

FLOAT16_MAX = 65504.0
STATS_PREFIX = "surgeon_stats"
# Order of the numbers each statistics output carries.
STAT_FIELDS = ("min", "max", "sum", "sumsq", "zeros")
COUNT_FIELDS = ("min", "max", "sum", "sumsq", "nan", "inf", "zeros")
SEVERE = ("nan", "inf")


@dataclass
class TensorStats:
    """Statistics of one tapped tensor (min/max ignore NaN; mean/std include everything,
    so a NaN or Inf shows there too)."""

    name: str
    node: str
    op: str
    index: int
    shape: list[int] | None
    dtype: str | None
    size: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nan: int = 0
    inf: int = 0
    zeros: float | None = None  # fraction of elements equal to zero
    flags: list[str] = field(default_factory=list)
    origin: str | None = None

    def to_dict(self) -> dict:
        from surgeon.compare import json_number

        return {
            "name": self.name,
            "node": self.node,
            "op": self.op,
            "index": self.index,
            "shape": self.shape,
            "dtype": self.dtype,
            "size": self.size,
            "min": json_number(self.min),
            "max": json_number(self.max),
            "mean": json_number(self.mean),
            "std": json_number(self.std),
            "nan": self.nan,
            "inf": self.inf,
            "zeros": json_number(self.zeros),
            "flags": list(self.flags),
            "origin": self.origin,
        }


def stats_from_array(name: str, node: str, op: str, index: int, value: np.ndarray) -> TensorStats:
    """Statistics of one tensor computed with numpy (float64 accumulation)."""
    if value is None or isinstance(value, (list, tuple, dict)):
        # A sequence, map or empty optional: no single shape, no statistics.
        kind = (
            "empty optional"
            if value is None
            else "sequence"
            if isinstance(value, (list, tuple))
            else "map"
        )
        return TensorStats(name, node, op, index, None, kind, size=len(value or ()))
    s = TensorStats(
        name, node, op, index, list(value.shape), value.dtype.name, size=int(value.size)
    )
    if value.dtype.kind in "OUS" or value.size == 0:
        return _flag(s)
    x = value.astype(np.float64)
    nan = np.isnan(x)
    s.nan = int(nan.sum())
    s.inf = int(np.isinf(x).sum())
    s.zeros = float((x == 0).sum()) / x.size
    if s.nan < x.size:
        s.min = float(np.nanmin(x))
        s.max = float(np.nanmax(x))
    else:
        s.min = s.max = math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        s.mean = float(x.mean())
        s.std = float(x.std())
    return _flag(s)


def _stats_from_numbers(
    name: str, node: str, op: str, index: int, numbers: np.ndarray, shape, dtype
) -> TensorStats:
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
        return _flag(s)
    values = [float(v) for v in numbers]
    if len(values) == len(COUNT_FIELDS):
        mn, mx, total, sumsq, nan, inf, zeros = values
        s.nan, s.inf = int(round(nan)), int(round(inf))
    else:
        mn, mx, total, sumsq, zeros = values
        if not all(math.isfinite(v) for v in values):
            s.flags = ["needs-counts"]  # NaN/Inf (or overflow): measured again with counts
            return s
    s.zeros = zeros / size
    if s.nan == size:
        s.min = s.max = math.nan
    else:
        s.min, s.max = mn, mx
    s.mean = total / size
    with np.errstate(invalid="ignore"):
        var = sumsq / size - s.mean * s.mean
    s.std = math.sqrt(var) if var > 0 else (0.0 if var == var else math.nan)
    if s.nan or s.inf:
        s.mean = math.nan if s.nan or (mn == -math.inf and mx == math.inf) else s.mean
        s.std = math.nan
    return _flag(s)


def _flag(s: TensorStats) -> TensorStats:
    flags = []
    if s.nan:
        flags.append("nan")
    if s.inf:
        flags.append("inf")
    is_float = s.dtype is not None and (s.dtype.startswith("float") or s.dtype.startswith("bfloat"))
    if is_float and s.size:
        if s.zeros == 1.0:
            flags.append("all-zero")
        elif s.size > 1 and s.min is not None and s.min == s.max and math.isfinite(s.min):
            flags.append("constant")
        finite_extreme = [abs(v) for v in (s.min, s.max) if v is not None and math.isfinite(v)]
        if finite_extreme and max(finite_extreme) > FLOAT16_MAX:
            flags.append("beyond-float16")
    s.flags = flags
    return s


def build_stats_model(
    model: Model, taps: list[str], types: Mapping[str, onnx.TypeProto], *, counts: bool = False
) -> tuple[Model, dict[str, tuple[str, str]]]:
    """A copy of ``model`` with, after each tapped tensor's producer, reduction nodes whose
    only outputs are the tensor's statistics (a float vector, see STAT_FIELDS) and shape.

    Returns the new model and ``tap -> (stats output, shape output)``.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    taken = set(model.tensor_names()) | {n.name for n in graph.node}
    prefix = STATS_PREFIX
    while any(t.startswith(prefix) for t in taken):
        prefix += "_"
    graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/flat")
    )
    graph.initializer.append(
        onnx.numpy_helper.from_array(np.array(0.0, np.float32), f"{prefix}/zero")
    )
    wanted = set(taps)
    outputs: dict[str, tuple[str, str]] = {}
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        graph.node.append(node)
        for t in node.output:
            if t not in wanted or t in outputs:
                continue
            i = len(outputs)
            p = f"{prefix}/{i}"
            elem = types[t].tensor_type.elem_type if t in types else TensorProto.UNDEFINED
            if elem in (TensorProto.STRING, TensorProto.UNDEFINED):
                continue
            new = []
            x = t
            if elem != TensorProto.FLOAT:
                new.append(
                    helper.make_node(
                        "Cast", [t], [f"{p}/float"], name=f"{p}/cast", to=TensorProto.FLOAT
                    )
                )
                x = f"{p}/float"
            new.append(
                helper.make_node(
                    "Reshape", [x, f"{prefix}/flat"], [f"{p}/flat"], name=f"{p}/flatten"
                )
            )
            f = f"{p}/flat"
            parts = []
            for op in ("ReduceMin", "ReduceMax", "ReduceSum", "ReduceSumSquare"):
                out = f"{p}/{op}"
                new.append(helper.make_node(op, [f], [out], name=out, keepdims=1))
                parts.append(out)
            if counts:
                # Exact NaN / Inf / zero counts: mask, cast, sum (three passes each).
                for label, op in (("nan", "IsNaN"), ("inf", "IsInf"), ("zero", "Equal")):
                    mask, as_float, count = (
                        f"{p}/{label}_mask",
                        f"{p}/{label}_float",
                        f"{p}/{label}_count",
                    )
                    inputs = [f, f"{prefix}/zero"] if op == "Equal" else [f]
                    new.append(helper.make_node(op, inputs, [mask], name=mask))
                    new.append(
                        helper.make_node(
                            "Cast", [mask], [as_float], name=as_float, to=TensorProto.FLOAT
                        )
                    )
                    new.append(
                        helper.make_node("ReduceSum", [as_float], [count], name=count, keepdims=1)
                    )
                    parts.append(count)
            else:
                # Zero count: Equal -> Cast -> ReduceSum (measured 2.3x faster than
                # ReduceL1(Sign(x)) on onnxruntime's CPU, and exact even with NaN). NaN
                # shows in the sum and Inf in min/max; the rare tensor with either is
                # measured again with exact counts (counts=True) in a second run.
                mask, as_float, count = f"{p}/zero_mask", f"{p}/zero_float", f"{p}/zero_count"
                new.append(helper.make_node("Equal", [f, f"{prefix}/zero"], [mask], name=mask))
                new.append(
                    helper.make_node(
                        "Cast", [mask], [as_float], name=as_float, to=TensorProto.FLOAT
                    )
                )
                new.append(
                    helper.make_node("ReduceSum", [as_float], [count], name=count, keepdims=1)
                )
                parts.append(count)
            stats_out, shape_out = f"{p}/stats", f"{p}/shape"
            new.append(helper.make_node("Concat", parts, [stats_out], name=stats_out, axis=0))
            new.append(helper.make_node("Shape", [t], [shape_out], name=shape_out))
            graph.node.extend(new)
            graph.output.append(
                helper.make_tensor_value_info(stats_out, TensorProto.FLOAT, [len(parts)])
            )
            graph.output.append(helper.make_tensor_value_info(shape_out, TensorProto.INT64, [None]))
            outputs[t] = (stats_out, shape_out)
    return model.with_proto(proto), outputs
