"""`surgeon rewrite`: replace operators a target lacks by equivalent forms, verified."""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.commands import _common
from surgeon.outcomes import EditOutcome

HELP = "rewrite operators a target lacks (GridSample, Einsum, TopK, ...); verified"
DESCRIPTION = (
    HELP + "\n\nEach --rule replaces the nodes it matches (all of them, or only those given with\n"
    "--node) by a form built from operators the target has; rules run in the order given.\n"
    "`surgeon rewrite --list` lists them:\n"
    "  gridsample           GridSample (bilinear/nearest, any padding) -> GatherElements\n"
    "  einsum               Einsum -> MatMul/Transpose/Reshape/ReduceSum\n"
    "  layernorm-decompose  LayerNormalization -> ReduceMean/Sub/Mul/Sqrt/... (opset < 17)\n"
    "  layernorm-fuse       the exporters' decomposed layer norm -> LayerNormalization\n"
    "  topk                 TopK -> rank counting + ScatterElements/GatherElements; exact,\n"
    "                       but it compares every pair along the axis: L x L memory per\n"
    "                       row (about 16 bytes a pair: 140 MB for L = 3,000)\n"
    "Your own rule: --rule path/to/my_rule.py:MyRule (see the README).\n\n"
    "Verification: every output against the original's, at the given sizes and at a\n"
    "second size where the model has dynamic dims (at a second seed where it has none);\n"
    "bit-identical for exact rules (topk), within --atol/--rtol for the others. A node a\n"
    "rule cannot rewrite (an unsupported mode) is an error naming the node and attribute.\n"
    "Exit 0 when it passed (and -o was written), 1 when it failed (nothing written), 2 on\n"
    "bad input.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.rules [{name, exact, summary}],\n"
    "details.rewritten [{rule, node, op, output, what, replaced, added}], details.op_types\n"
    "{OP: {before, after}}, details.nodes, details.bit_identical; --list: schema\n"
    "surgeon.rewrite-rules/1 with rules [{name, exact, summary}].\n\n"
    "examples:\n"
    "  surgeon rewrite --list\n"
    "  surgeon rewrite detr.onnx --rule gridsample -o detr_nogs.onnx\n"
    "  surgeon rewrite model.onnx --rule einsum --rule layernorm-decompose -o lowered.onnx\n"
    "  surgeon rewrite model.onnx --rule my_rule.py:SwishToSigmoid -o out.onnx"
)

RULES_SCHEMA = "surgeon.rewrite-rules/1"


@dataclass(frozen=True)
class RewriteOutcome(EditOutcome):
    """What ``surgeon rewrite`` did (``surgeon.edit/1``)."""


@dataclass(frozen=True)
class RuleListing:
    """The built-in rules (``surgeon.rewrite-rules/1``)."""

    rules: tuple[dict, ...]
    passed: bool = True

    def to_dict(self) -> dict:
        return {"schema": RULES_SCHEMA, "rules": [dict(r) for r in self.rules]}


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="the .onnx file")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="NAME",
        help="a built-in rule (see --list) or path/to/rule.py:Class; repeatable, run in order",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE",
        help="rewrite only this node (a node name or its first output); repeatable "
        "(default: every node the rules match)",
    )
    parser.add_argument("--list", action="store_true", help="list the built-in rules and exit")
    _common.add_output_arguments(parser, what="the rewritten model")
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def list_rules() -> RuleListing:
    """Every built-in rule's name, exactness and summary."""
    from surgeon.rewrites import RULES
    from surgeon.rewrites.rule import load_rule

    rules = []
    for name in RULES:
        rule = load_rule(name)
        rules.append({"name": name, "exact": bool(rule.exact), "summary": rule.summary})
    return RuleListing(tuple(rules))


def run(args, ctx) -> int:
    from surgeon.errors import UsageError

    if args.list:
        if args.model or args.rule or args.node:
            raise UsageError("--list takes no model, --rule or --node: it lists the rules")
        return ctx.finish(list_rules())
    if not args.model:
        raise UsageError(
            "no model given", hint="surgeon rewrite MODEL.onnx --rule NAME -o OUT.onnx"
        )
    if not args.rule:
        raise UsageError(
            "no --rule given: nothing to rewrite",
            hint="Name one (`surgeon rewrite --list` lists them), e.g. --rule einsum.",
        )
    from surgeon.rewrites.apply import rewrite
    from surgeon.rewrites.rule import load_rule

    for spec in args.rule:  # an unknown rule is refused before the model is even read
        load_rule(spec)
    # rewrite() rewrites first and verifies after: bad input is exit 2 before any run
    model, feeds, options, tol = _common.load_model_to_edit(args)
    with ctx.status("rewrite: rewriting and verifying"):
        edited = rewrite(
            model,
            args.rule,
            nodes=args.node or None,
            feed_options=feeds,
            options=options,
            tolerance=tol,
        )
    written = _common.save_if_passed(edited, args)
    return ctx.finish(RewriteOutcome(edited, args.model, args.output, written))
