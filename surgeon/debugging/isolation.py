"""The verdict of ``debug`` against a reference model or saved activations: each node's
own (isolated) error, from :mod:`surgeon.precision`.

Every candidate node whose inputs pair with reference values (by name, through the Casts
and QuantizeLinear -> DequantizeLinear chains converters insert) is run on the
reference's values at its inputs, all of them in one batched onnxruntime run. The root
cause is the node whose own error is worst beyond tolerance, whatever the node order,
with its cumulative error beside it. A NaN/Inf born in the candidate from finite inputs
(:mod:`~surgeon.debugging.nonfinite`) is named first, and when its node's own run makes
NaN/Inf too, that node is the root cause, so the two verdicts agree.

Exit codes follow the verdict: ``found`` and ``inherited`` fail unless the graph outputs
were compared and all are within tolerance (then the node is reported as where the model
comes closest to failing); ``accumulated`` (no node's own error is beyond tolerance, but
small errors add up along the graph) and ``clean`` pass unless a compared graph output is
beyond tolerance; ``unchecked`` (no node could be run on reference values) keeps the
comparison by graph position.

``--ref-optimization`` (the same model at another onnxruntime level) does not use it:
the isolated run always disables optimisation, so it would compare each node with
itself; the verdict by position stays there.
"""

from __future__ import annotations

from collections.abc import Mapping

from surgeon.debugging._graph import DebugFacts
from surgeon.debugging.results import DebugOptions, DebugReport
from surgeon.precision import PrecisionReport, analyse_precision
from surgeon.runner import RunOptions

# The verdicts that name a node as making the error (and fail the run).
FAILING_VERDICTS = ("found", "inherited")


def judge_by_isolated_error(
    report: DebugReport,
    facts: DebugFacts,
    values: Mapping[str, object],
    feeds: Mapping[str, object],
    reference,
    reference_values: Mapping[str, object],
    options: DebugOptions,
    run_options: RunOptions,
    origin,
    *,
    cumulative: Mapping[str, object] | None = None,
    pairing=None,
    measured=None,
) -> PrecisionReport:
    """Compute every checkable node's isolated error and set the root cause from it, into
    ``report`` (``precision``, ``root_cause``, ``other_roots``, each layer's ``isolated``).

    Args:
        reference: The reference Model, or the names of the saved activations.
        reference_values: Reference tensor -> value, the reference's inputs included.
        cumulative: Tapped tensor -> its diff with the reference, when it was compared
            without fetching the values (surgeon.debugging.in_graph_compare).
        pairing: The tensor pairing, when the caller made it already.
        measured: Units whose isolated errors were measured inside onnxruntime
            (surgeon.precision.isolated.MeasuredUnits); ``reference_values`` then need
            hold only the other units' values.
    """
    candidate_values = {**feeds, **values}
    precision = analyse_precision(
        facts.model,
        reference,
        reference_values,
        candidate_values,
        options.tolerance,
        name_map=dict(options.name_map),
        options=run_options,
        cumulative=cumulative,
        pairing=pairing,
        measured=measured,
    )
    report.precision = precision
    layers = {layer.diff.name: layer for layer in report.layers}
    _add_converter_pairs(report, facts, precision, layers)
    for unit in precision.run.units:
        if unit.isolated is None:
            continue
        layer = layers.get(unit.isolated.name)
        if layer is not None:
            layer.isolated = unit.isolated
            layer.severity = unit.severity
            layer.rank = unit.rank
    root = precision.root_cause
    if root.verdict == "unchecked":
        return precision  # nothing ran on reference values: the positional verdict stays
    outputs = set(facts.model.output_names)
    report.compared_outputs = [
        layer.diff.name for layer in report.layers if layer.diff.name in outputs
    ]
    report.diverged_outputs = [
        layer.diff.name for layer in report.layers if layer.diverged and layer.diff.name in outputs
    ]
    unit = _agree_with_nonfinite(report, precision) or root.unit
    beyond = [u for u in precision.ranking if u.severity.tier in ("non-finite", "beyond")]
    report.root_cause = None
    report.other_roots = []
    report.uncompared_inputs = []
    if root.verdict in FAILING_VERDICTS and unit is not None:
        report.root_cause = layers.get(unit.isolated.name)
        report.other_roots = [
            layers[u.isolated.name] for u in beyond if u is not unit and u.isolated.name in layers
        ]
        if report.root_cause is not None:
            report.root_cause.origin = origin(report.root_cause.node)
            # inputs with no reference value, computed inside the unit from earlier ones
            graph_inputs = set(facts.model.input_names)
            report.uncompared_inputs = [
                x
                for x in dict.fromkeys(report.root_cause.inputs)
                if x not in unit.fed and x not in facts.constants and x not in graph_inputs
            ]
    return precision


def _add_converter_pairs(report, facts, precision, layers) -> None:
    """Compared tensors paired through a Cast or a Q/DQ chain (not by name): their
    cumulative error, as a row of the comparison in tap order."""
    from surgeon.debugging.results import LayerDiff

    order = {s.name: s.index for s in report.stats}
    for unit in precision.run.units:
        c = unit.cumulative
        if c is None or c.name in layers or c.name not in order:
            continue
        node, op, inputs = facts.node_info.get(c.name, ("?", "?", []))
        layer = LayerDiff(c, node, op, order[c.name], inputs, diverged=not c.passed)
        report.layers.append(layer)
        layers[c.name] = layer
        if c.name in report.unmatched:
            report.unmatched.remove(c.name)
    report.layers.sort(key=lambda layer: layer.index)


def _agree_with_nonfinite(report: DebugReport, precision: PrecisionReport):
    """The unit of the first NaN/Inf born in the candidate, when its own run on the
    reference's inputs makes NaN/Inf too (else None)."""
    born = report.born
    if not born:
        return None
    for unit in precision.ranking:
        if unit.severity.tier == "non-finite" and any(
            p.tensor == born[0].tensor for p in unit.outputs
        ):
            return unit
    return None


def pairing_text(precision: PrecisionReport) -> str:
    """``paired 567 by name, 2 through Casts, 0 through Q/DQ; ...`` for the terminal."""
    counts = precision.pairing.counts()
    text = (
        f"paired {counts.get('name', 0)} by name, {counts.get('cast', 0)} through Casts, "
        f"{counts.get('qdq', 0)} through Q/DQ; {len(precision.ranking)} node(s) run on the "
        f"reference's values at their inputs ({precision.run.seconds:.2f} s)"
    )
    skipped = precision.not_evaluated
    if skipped:
        text += f", {len(skipped)} not (inputs with no reference value, or not runnable alone)"
    return text
