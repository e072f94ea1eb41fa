"""An int8 exclusion list: which nodes to keep in float so a QDQ model meets tolerance.

:func:`suggest_exclusions` answers "which ``nodes_to_exclude`` do I give onnxruntime's
``quantize_static``?" for a QDQ model and the float model it came from:

1. both models run on the same feeds with every tensor exposed; the QDQ model's tensors
   pair with the float model's (through Q->DQ chains) and every Q/DQ pair is run on the
   float model's values (:func:`surgeon.precision.analyse_precision`): its isolated
   error is the quantization error of that tensor alone;
2. each Q/DQ pair (a *site*) maps back to the float-model nodes that read it (a
   consuming op keeps its float name in the QDQ model; onnxruntime names the pair
   ``X_QuantizeLinear``/``X_DequantizeLinear`` after the tensor X, which is not a float
   node), and sites are taken worst first;
3. the list grows greedily: each site's readers join the list, quantization is taken out
   of every listed node (:func:`surgeon.precision.strip.strip_quantization`, an exact
   float path), and the stripped model's outputs are compared with the float model's;
   the first list that meets tolerance is the answer.

Greedy rather than a search over subsets: sites are few beyond tolerance in practice,
each step costs one run at the outputs, and "the worst first" is the order a person
would try by hand, so the list reads as a ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from surgeon.compare import DiffReport, Tolerance, compare_named
from surgeon.errors import SurgeonError
from surgeon.feeds import FeedOptions, describe_feeds, make_feeds, make_other_feeds
from surgeon.model import Model
from surgeon.precision.analysis import PrecisionReport, analyse_precision
from surgeon.precision.isolated import IsolatedError
from surgeon.precision.strip import (
    Stripped,
    exclusion_names,
    qdq_pairs,
    quantized_op_types,
    strip_quantization,
)
from surgeon.runner import RunOptions, run

SUGGEST_EXCLUDE_SCHEMA = "surgeon.suggest-exclude/1"
# A list longer than this says "quantization does not suit this model", not "these nodes".
DEFAULT_MAX_NODES = 10


@dataclass
class QdqSite:
    """One Q/DQ pair (or a quantized weight's DequantizeLinear) and who reads it.

    Attributes:
        dequantize: The DequantizeLinear node's label.
        tensor: Its output in the QDQ model.
        reference: The float-model tensor it stands for.
        kind: ``weight`` or ``activation``.
        nodes: The float-model nodes that read it (the names for ``nodes_to_exclude``).
        unit: Its isolated error (the quantization error of that tensor alone).
    """

    dequantize: str
    tensor: str
    reference: str
    kind: str
    nodes: list[str]
    unit: IsolatedError

    def to_dict(self) -> dict:
        return {
            "dequantize": self.dequantize,
            "tensor": self.tensor,
            "reference": self.reference,
            "kind": self.kind,
            "nodes": list(self.nodes),
            "rank": self.unit.rank,
            "severity": self.unit.severity.to_dict() if self.unit.severity else None,
            "isolated": self.unit.isolated.to_dict() if self.unit.isolated else None,
        }


@dataclass
class ExclusionStep:
    """One step of the greedy growth: the site taken, the nodes it added, the outputs."""

    site: QdqSite
    added: list[str]
    report: DiffReport

    def to_dict(self) -> dict:
        return {
            "site": self.site.dequantize,
            "added": list(self.added),
            "passed": self.report.passed,
            "worst_abs": self.report.worst_abs(),
            "summary": self.report.summary(),
        }


@dataclass
class ExclusionSuggestion:
    """The suggested ``nodes_to_exclude`` and the evidence for it.

    Truthy when the outputs meet tolerance with the list (an empty list when the QDQ
    model already does).

    Attributes:
        nodes_to_exclude: Float-model node names, worst first.
        sites: Every Q/DQ site that was ranked, worst first.
        steps: The greedy growth, one entry per list tried.
        before: The QDQ model's outputs against the float model's.
        after: The last stripped model's outputs (None when nothing was stripped).
        stripped: The last stripped model (None when nothing was stripped).
        precision: The isolated-error analysis the ranking came from.
        max_nodes: The limit on the list's length.
        limit_reached: The list stopped growing at ``max_nodes`` (or ran out of sites)
            before tolerance was met.
    """

    nodes_to_exclude: list[str]
    sites: list[QdqSite]
    steps: list[ExclusionStep]
    before: DiffReport
    after: DiffReport | None
    stripped: Stripped | None
    precision: PrecisionReport
    max_nodes: int
    limit_reached: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        final = self.after if self.after is not None else self.before
        return final.passed

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "schema": SUGGEST_EXCLUDE_SCHEMA,
            "passed": self.passed,
            "nodes_to_exclude": list(self.nodes_to_exclude),
            "max_nodes": self.max_nodes,
            "limit_reached": self.limit_reached,
            "tolerance": self.before.tolerance.to_dict(),
            "seed": self.before.seed,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after is not None else None,
            "steps": [s.to_dict() for s in self.steps],
            "sites": [s.to_dict() for s in self.sites],
            "stripped": None
            if self.stripped is None
            else {
                "rewired": [
                    {"node": n, "input": i, "was": was, "now": now}
                    for n, i, was, now in self.stripped.rewired
                ],
                "restored": list(self.stripped.restored),
                "kept": [{"node": n, "input": x, "why": w} for n, x, w in self.stripped.kept],
            },
            "notes": list(self.notes),
        }


def _all_values(model: Model, feeds, options: RunOptions) -> dict:
    outs = list(dict.fromkeys(o for n in model.proto.graph.node for o in n.output if o))
    return {**feeds, **run(model, feeds, outputs=outs, options=options)}


def _compare_outputs(
    title: str, candidate: Model, values, reference: Model, ref_values, tol, feeds, seed
) -> DiffReport:
    pairs = [(o, o) for o in reference.output_names]
    return DiffReport(
        title=title,
        candidate=candidate.name,
        reference=reference.name,
        tensors=compare_named(values, ref_values, pairs, tol),
        tolerance=tol,
        seed=seed,
        feeds=describe_feeds(feeds),
    )


def _check_inputs(int8: Model, float_model: Model) -> None:
    ops = {n.op_type for n in int8.proto.graph.node}
    if "DequantizeLinear" not in ops:
        hint = "Quantize it with onnxruntime's quantize_static(..., quant_format=QuantFormat.QDQ)."
        if any(op.startswith("QLinear") or op.startswith("QGemm") for op in ops):
            hint = (
                "It is in the QOperator format (QLinearConv, ...), which cannot be stripped "
                "node by node; " + hint[0].lower() + hint[1:]
            )
        raise SurgeonError(
            f"{int8.name} has no QuantizeLinear/DequantizeLinear nodes: no int8 QDQ model to "
            "suggest exclusions for",
            hint=hint,
        )
    missing = [o for o in float_model.output_names if o not in int8.output_names]
    if missing:
        raise SurgeonError(
            f"the outputs of {float_model.name} are not all outputs of {int8.name}",
            problems=[f"`{o}` is missing" for o in missing],
            hint="The exclusion list is verified at the float model's outputs, by name.",
        )


def _sites(int8: Model, float_model: Model, report: PrecisionReport) -> list[QdqSite]:
    """The ranked DQ nodes as sites, each with the nodes whose exclusion takes it away."""
    float_nodes = set(float_model.node_names())
    ops = quantized_op_types()
    by_output = {d.output[0]: p for p in qdq_pairs(int8.proto.graph) for d in p.dequantizes}
    sites = []
    for unit in report.ranking:
        if unit.op != "DequantizeLinear" or not unit.outputs:
            continue
        out = unit.outputs[0]
        pair = by_output.get(out.tensor)
        if pair is None:
            continue
        kind = "weight" if pair.weight or pair.value in report.pairing.constants else "activation"
        names = exclusion_names(pair, report.pairing, float_model, ops)
        nodes = [n for n in names if n in float_nodes]
        sites.append(QdqSite(unit.node, out.tensor, out.reference, kind, nodes, unit))
    return sites


def suggest_exclusions(
    int8: Model,
    float_model: Model,
    *,
    feed_options: FeedOptions = FeedOptions(),
    feeds: dict[str, np.ndarray] | None = None,
    tolerance: Tolerance = Tolerance(),
    max_nodes: int = DEFAULT_MAX_NODES,
    name_map: dict[str, str] | None = None,
    options: RunOptions | None = None,
) -> ExclusionSuggestion:
    """Suggest ``nodes_to_exclude`` for ``quantize_static`` and verify it by stripping.

    Args:
        int8: The QDQ model.
        float_model: The float model it was quantized from.
        feed_options: Seed, shapes and an ``.npz`` of inputs (when ``feeds`` is None).
        feeds: The inputs to use, instead of making them from ``feed_options``.
        tolerance: When an output of the stripped model matches the float model's.
        max_nodes: The longest list tried.
        name_map: Float tensor name -> QDQ tensor name, for tensors named differently.
        options: onnxruntime options (custom-op libraries, threads); optimisation is
            always disabled, so each model computes what its graph says.

    Returns:
        An :class:`ExclusionSuggestion`; truthy when the list meets tolerance.

    Raises:
        SurgeonError: The model has no Q/DQ nodes, or lacks an output of the float model;
            ``max_nodes`` is below 1.
    """
    if max_nodes < 1:
        raise SurgeonError(f"the list's limit must be at least 1 node, not {max_nodes}")
    _check_inputs(int8, float_model)
    run_options = RunOptions(
        optimization="disabled",
        custom_op_libraries=options.custom_op_libraries if options else (),
        threads=options.threads if options else 0,
    )
    if feeds is None:
        feeds = make_feeds(int8, feed_options)
    extra = [n for n in float_model.input_names if n not in feeds]
    ref_feeds = dict(feeds)
    ref_feeds.update(make_other_feeds(float_model, extra, feed_options, feeds)[0])
    ref_feeds = {n: ref_feeds[n] for n in float_model.input_names}
    ref_values = _all_values(float_model, ref_feeds, run_options)
    int8_values = _all_values(int8, feeds, run_options)
    seed = None if feed_options.npz else feed_options.seed
    before = _compare_outputs(
        "QDQ model against the float model",
        int8,
        int8_values,
        float_model,
        ref_values,
        tolerance,
        feeds,
        seed,
    )
    precision = analyse_precision(
        int8, float_model, ref_values, int8_values, tolerance, name_map=name_map, options=options
    )
    sites = _sites(int8, float_model, precision)
    result = ExclusionSuggestion([], sites, [], before, None, None, precision, max_nodes)
    if before.passed:
        return result
    excluded: list[str] = []
    for site in sites:
        added = [n for n in site.nodes if n not in excluded]
        if not added:
            continue
        if len(excluded) + len(added) > max_nodes:
            result.limit_reached = True
            break
        excluded += added
        stripped = strip_quantization(int8, float_model, precision.pairing, excluded)
        values = run(stripped.model, feeds, options=run_options)
        report = _compare_outputs(
            f"stripped of {len(excluded)} node(s) against the float model",
            stripped.model,
            values,
            float_model,
            ref_values,
            tolerance,
            feeds,
            seed,
        )
        result.steps.append(ExclusionStep(site, added, report))
        result.nodes_to_exclude = list(excluded)
        result.after, result.stripped = report, stripped
        if report.passed:
            return result
    else:
        result.limit_reached = True
        result.notes.append("every ranked Q/DQ pair was tried")
    return result


__all__ = [
    "DEFAULT_MAX_NODES",
    "SUGGEST_EXCLUDE_SCHEMA",
    "ExclusionStep",
    "ExclusionSuggestion",
    "QdqSite",
    "suggest_exclusions",
]
