"""The dynamic check: does a model really run at several sizes of its dynamic dims, and
are the items of a batch independent?

``check_dynamic`` picks the sizes by this rule (``sizes`` overrides it per dim):

- batch dims (axis 0, or named N/B/batch/batch_size/bs): the export value, 1 and 3;
- spatial dims (axes 2+ of a rank-4/5 input, or named H/W/height/width/...): the export
  value, 64 and 96 (multiples of 32, what strided backbones need);
- any other dim: the export value, 16 and 24.

A dim is a *batch* dim when it is named like one (N, B, batch, bs, anything containing
"batch"), or when it is axis 0 of an input of rank 2 or more and not named like a
sequence (seq_len, time, T, tokens, ...); ``batch`` overrides the rule. Unnamed dims
(``?``, ``-1``, blank, or no dim_param at all) are each their own dim, named
``input[axis]``.

The export value (the static size the dim had before ``reshape_io`` made it dynamic) comes
first when known; duplicates are dropped. It runs the first value of every dim once, then
varies one dim at a time, so a failure points at the dim that caused it. Outputs must have
their declared rank, their static dims, and, for a dim named like an input dim, that
dim's value. When something fails, the nodes onnxruntime names in its errors and the
nodes whose shape-like input (:data:`surgeon.baked.SHAPE_INPUTS`: Reshape, Expand, Tile,
Resize, ConstantOfShape, Slice, ...) is a constant holding an export value (or a product
of them), directly or through shape plumbing, are reported as suspects.

A batch means independent items. For each batch dim, its largest run (among the first
run and the runs that vary it) is split into its items, and each item runs alone (batch
1, the other dims unchanged): every output must stack the items' results on one axis
(the axis the output declares with the batch symbol, else the one that is 1 for an item
and B for the batch), or be the same for every item and the batch. Tolerance
``BATCH_TOLERANCE`` unless given: an element matches when |batch - item| <= atol *
max(1, max|item|) + rtol * |item|, atol = rtol = 1e-3, so that onnxruntime's
summation-order rounding (its reductions block by batch size) passes and mixing does
not. When it fails, every main-graph tensor is compared the same way, and each node
whose output does not follow the batch is judged by its own behaviour: run alone on the
batch assembled from its items' own batch-1 inputs, it must reproduce their batch-1
outputs. The node with the worst such error beyond tolerance is named (not the first in
node order, where rounding that crossed the tolerance downstream would blame an
innocent elementwise node): "baked constant in node `head/fold` (Reshape): shape
[1, -1, 6] folds the batch ..." or "node `bn` (ReduceMean) mixes the batch items ...".

Modules: :mod:`~surgeon.dynamic.check` (the sizes and runs), :mod:`~surgeon.dynamic.batch`
(the item check), :mod:`~surgeon.dynamic.suspects` (the nodes to blame, from
:mod:`surgeon.baked`), :mod:`~surgeon.dynamic.results` (the result types).
"""

from surgeon.dynamic.batch import BATCH_TOLERANCE, check_items, find_batch_mixer
from surgeon.dynamic.check import check_dynamic, dynamic_dims
from surgeon.dynamic.results import (
    DYNAMIC_SCHEMA,
    DimVariable,
    DynamicCheck,
    ItemCheck,
    ItemOutput,
    OutputCheck,
    SizeCase,
    Suspect,
)
from surgeon.dynamic.suspects import find_suspects

__all__ = [
    "BATCH_TOLERANCE",
    "DYNAMIC_SCHEMA",
    "DimVariable",
    "DynamicCheck",
    "ItemCheck",
    "ItemOutput",
    "OutputCheck",
    "SizeCase",
    "Suspect",
    "check_dynamic",
    "check_items",
    "dynamic_dims",
    "find_batch_mixer",
    "find_suspects",
]
