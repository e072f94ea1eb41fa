"""Rewrites of operators a deployment target lacks, each verified against the original.

``surgeon rewrite MODEL --rule NAME [--rule NAME ...] [--node NODE ...] -o OUT`` (and
:func:`surgeon.rewrite`) replaces nodes a target (TensorRT, NCNN, RKNN, an NPU, an older
runtime) rejects by an equivalent form built from operators it has, then runs the
rewritten model against the original in onnxruntime, at two sizes when the model has
dynamic dims and at two seeds otherwise. ``surgeon rewrite --list`` lists the rules.

A rule is a small object (:class:`surgeon.rewrites.rule.Rule`): ``matches(graph)`` finds
the nodes it rewrites (and those of its kind it refuses, saying why), ``apply(graph,
match)`` builds the replacement. Rules are rewritten one after the other, in the order
given. "Unchanged" for a rewrite: every output of the model equal to the original's,
bit-identical for the rules marked exact, within the tolerance for the others (they
compute in another order of floating-point operations: a decomposed LayerNormalization
differs from the fused kernel in the last bits).

The built-in rules, one module each, are the one explicit table :data:`RULES` (nothing
registers itself on import). A user's own rule is given as ``path/to/my_rule.py:MyRule``.
"""

from __future__ import annotations

# name -> "module:Class"; the order of `surgeon rewrite --list`.
RULES: dict[str, str] = {
    "gridsample": "surgeon.rewrites.gridsample:GridSampleRule",
    "einsum": "surgeon.rewrites.einsum:EinsumRule",
    "layernorm-decompose": "surgeon.rewrites.layernorm_decompose:LayerNormDecomposeRule",
    "layernorm-fuse": "surgeon.rewrites.layernorm_fuse:LayerNormFuseRule",
    "topk": "surgeon.rewrites.topk:TopKRule",
}
