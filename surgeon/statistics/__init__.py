"""Statistics of tapped tensors: with numpy over values, or with reduction nodes placed in
the graph right after each tensor's producer (so activations are freed as in a plain run).

Both ways give the same numbers. For a tensor ``x`` of ``size`` elements, with ``v`` its
values converted to float64 (exact for every ONNX type except 64-bit integers beyond 2**53):

* ``nan``, ``inf``: how many elements are NaN, and +Inf or -Inf.
* ``zeros``: the fraction of elements equal to zero (``-0.0`` included, NaN excluded).
* ``min``, ``max``: the smallest and largest element that is not NaN (``numpy.nanmin`` /
  ``nanmax``), so an Inf shows here. Integer and bool tensors give Python ints, exact at any
  magnitude (``int64`` near 2**60 included); float tensors give floats, exact too (every
  float type converts to float64 without rounding). NaN when every element is NaN.
* ``mean``, ``std``: ``numpy.mean(v)`` and ``numpy.std(v)`` (population, ``ddof=0``) over
  every element, in float64 and centered (``std`` is the root of the mean squared
  deviation from the mean, never ``E[x^2] - mean^2``). Non-finite elements are spelled out:
  a NaN makes both NaN; otherwise an Inf makes ``std`` NaN and ``mean`` that Inf, or NaN
  when both +Inf and -Inf are present (the exact arithmetic's answer; numpy's own sum can
  turn NaN when finite values overflow first). Finite values whose squares overflow
  float64 give ``std`` = Inf, as numpy does; finite values whose sum overflows give Inf or
  NaN depending on the order of the additions, which neither mode promises.
* An empty tensor has ``size`` 0 and none of the numbers above (they are None).
* Strings, sequences, maps and empty optionals have a kind and a size but no numbers.

Values mode (:func:`stats_from_array`) computes these with numpy on the fetched values.
Statistics mode (:func:`build_stats_model`) computes them in the graph, in float64 (and the
extremes of 64-bit integers in their own dtype), so only a few numbers per tensor leave
onnxruntime; the rare tensor holding NaN/Inf is measured again with exact counts
(:func:`recount_stats`). The two agree up to float64 rounding of the sums (numpy sums
pairwise, onnxruntime in its own order); counts, min and max are identical.

A tensor whose statistics nodes onnxruntime cannot build at the model's opset (an exotic
dtype, a 64-bit unsigned integer, an untyped tensor) is fetched whole instead and measured
with numpy: every tensor onnxruntime can compute can be tapped.

The package: :mod:`~surgeon.statistics.definition` (:class:`TensorStats`, the definition
and :func:`stats_from_array`) and :mod:`~surgeon.statistics.in_graph` (the reduction nodes,
:func:`build_stats_model`, :func:`stats_from_outputs`, :func:`recount_stats`).
"""

from surgeon.statistics.definition import (
    COUNT_FIELDS,
    FLOAT16_MAX,
    INTEGER_DTYPES,
    NEEDS_COUNTS,
    SEVERE,
    STAT_FIELDS,
    TensorStats,
    stats_from_array,
)
from surgeon.statistics.in_graph import (
    STATS_PREFIX,
    StatsOutputs,
    build_stats_model,
    recount_stats,
    run_sizes,
    stats_from_outputs,
)

__all__ = [
    "COUNT_FIELDS",
    "FLOAT16_MAX",
    "INTEGER_DTYPES",
    "NEEDS_COUNTS",
    "SEVERE",
    "STATS_PREFIX",
    "STAT_FIELDS",
    "StatsOutputs",
    "TensorStats",
    "build_stats_model",
    "recount_stats",
    "run_sizes",
    "stats_from_array",
    "stats_from_outputs",
]
