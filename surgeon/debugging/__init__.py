"""``surgeon debug`` and :func:`debug`: tap intermediate tensors, find the first bad
layer, compare layer by layer against a reference.

Two ways to look at taps:

* **Statistics only** (no reference, nothing saved): each tapped tensor gets a handful of
  reduction nodes (min, max, sum, sum of squares, NaN/Inf/zero counts) placed right after
  its producer, and only those few numbers become graph outputs. onnxruntime can then
  free every activation as soon as its consumers ran, so tapping ``all`` costs about one
  plain run instead of keeping every activation alive (what marking every tensor as an
  output does).
* **Values** (a reference, or ``keep_values`` to save them): the tapped tensors become
  outputs and are compared or saved; statistics are computed with numpy from the same
  values.

The verdict blames a NaN/Inf where it is born: at the first node (in topological order)
that is not computed from constants only and turns finite inputs into a NaN/Inf (see
:func:`blame_nonfinite`). NaN/Inf in the user's inputs, and deliberate ones computed from
constants only (the ``-inf`` of an attention mask), are reported as such and do not fail
the run; neither do values that merely inherit them. With a reference it names the
*root-cause node*: a node whose output diverges while none of its compared inputs does,
and says which inputs had no reference value; a node whose inputs were all compared
ranks before one with uncompared inputs (graph order within a rank). A reference model's
own inputs, which the model lacks, are fed from the feeds file or at random by the seed
rule. A reference that pairs with no tapped tensor is an error.

The package, by seam: :mod:`~surgeon.debugging.results` (options, report and verdict),
:mod:`~surgeon.debugging.nonfinite` (NaN/Inf blame), :mod:`~surgeon.debugging.reference`
(references, pairing, layer-wise comparison), :mod:`~surgeon.debugging.orchestration`
(``debug`` itself) and ``_graph`` (the graph facts they read).
"""

from surgeon.debugging.nonfinite import blame_nonfinite, constant_tensors, rank_anomaly
from surgeon.debugging.orchestration import debug, save_values
from surgeon.debugging.results import (
    DEBUG_SCHEMA,
    DebugOptions,
    DebugReport,
    LayerDiff,
    NonFinite,
)
from surgeon.statistics import TensorStats, stats_from_array

__all__ = [
    "DEBUG_SCHEMA",
    "DebugOptions",
    "DebugReport",
    "LayerDiff",
    "NonFinite",
    "TensorStats",
    "blame_nonfinite",
    "constant_tensors",
    "debug",
    "rank_anomaly",
    "save_values",
    "stats_from_array",
]
