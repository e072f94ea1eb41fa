"""What the statistics of a tapped tensor are (see :mod:`surgeon.statistics` for the
definition), and the reference way to compute them: numpy in float64 over the values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FLOAT16_MAX = 65504.0
# The scalars each tapped tensor's statistics nodes output, in this order; with
# counts=True the NaN and Inf counts follow.
STAT_FIELDS = ("min", "max", "mean", "squared_deviations", "zeros")
COUNT_FIELDS = (*STAT_FIELDS, "nan", "inf")
SEVERE = ("nan", "inf")
NEEDS_COUNTS = "needs-counts"
INTEGER_DTYPES = frozenset(
    {"bool", "int2", "uint2", "int4", "uint4"}
    | {f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)}
)


@dataclass
class TensorStats:
    """Statistics of one tapped tensor (definitions in the :mod:`surgeon.statistics` docstring)."""

    name: str
    node: str
    op: str
    index: int
    shape: list[int] | None
    dtype: str | None
    size: int = 0
    min: float | int | None = None
    max: float | int | None = None
    mean: float | None = None
    std: float | None = None
    nan: int = 0
    inf: int = 0
    zeros: float | None = None  # fraction of elements equal to zero
    flags: list[str] = field(default_factory=list)
    origin: str | None = None

    def to_dict(self) -> dict:
        from surgeon.compare import json_number

        def number(x):  # integer extremes stay exact in JSON
            return x if isinstance(x, int) else json_number(x)

        return {
            "name": self.name,
            "node": self.node,
            "op": self.op,
            "index": self.index,
            "shape": self.shape,
            "dtype": self.dtype,
            "size": self.size,
            "min": number(self.min),
            "max": number(self.max),
            "mean": json_number(self.mean),
            "std": json_number(self.std),
            "nan": self.nan,
            "inf": self.inf,
            "zeros": json_number(self.zeros),
            "flags": list(self.flags),
            "origin": self.origin,
        }


def fill_moments(
    s: TensorStats, mn: float, mx: float, mean: float, squared_deviations: float
) -> TensorStats:
    """Fill min/max/mean/std of ``s`` (whose size, dtype and counts are set) per the
    package's definition, from the raw extremes, float64 mean and sum of squared
    deviations however they were computed."""
    if s.dtype in INTEGER_DTYPES:
        s.min, s.max = int(mn), int(mx)
    elif s.nan == s.size:
        s.min = s.max = math.nan
    else:
        s.min, s.max = float(mn), float(mx)
    if s.nan:
        s.mean = s.std = math.nan
    elif s.inf:
        # Written out rather than left to the arithmetic: inf - inf inside a sum depends on
        # the order the sum is taken in, and the two modes sum in different orders.
        s.mean = (
            math.nan
            if (s.min == -math.inf and s.max == math.inf)
            else float(s.max if s.max == math.inf else s.min)
        )
        s.std = math.nan
    else:
        s.mean = float(mean)
        with np.errstate(over="ignore"):
            s.std = math.sqrt(squared_deviations / s.size)
    return s


def stats_from_array(name: str, node: str, op: str, index: int, value) -> TensorStats:
    """Statistics of one fetched value computed with numpy in float64 (the reference
    definition, see the package docstring)."""
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
    value = np.asarray(value)
    dtype = "str" if value.dtype.kind in "OUS" else value.dtype.name
    s = TensorStats(name, node, op, index, list(value.shape), dtype, size=int(value.size))
    if dtype == "str" or value.size == 0:
        return flag_stats(s)
    with np.errstate(invalid="ignore", over="ignore"):
        v = value.astype(np.float64)
        nan = np.isnan(v)
        s.nan = int(nan.sum())
        s.inf = int(np.isinf(v).sum())
        s.zeros = float(np.count_nonzero(v == 0)) / v.size
        if dtype in INTEGER_DTYPES:
            # In the integer's own dtype (int4/uint4 widened exactly): float64 rounds
            # 64-bit integers beyond 2**53.
            native = value if value.dtype.kind in "iub" else value.astype(np.int64)
            mn, mx = native.min(), native.max()
        elif s.nan < v.size:
            mn, mx = np.nanmin(v), np.nanmax(v)
        else:
            mn = mx = math.nan
        finite = not (s.nan or s.inf)
        mean = float(v.mean()) if finite else math.nan
        squared = float(np.square(v - mean).sum()) if finite else math.nan
    return flag_stats(fill_moments(s, mn, mx, mean, squared))


def flag_stats(s: TensorStats) -> TensorStats:
    """Set the flags of ``s`` from its numbers: ``nan``, ``inf``, and on float tensors
    ``all-zero``, ``constant`` and ``beyond-float16``."""
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
