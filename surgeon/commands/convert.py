"""`surgeon convert`: the model at another opset, verified against the original."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "convert to another opset (up or down); every blocking node named; verified"
DESCRIPTION = (
    HELP + "\n\nEvery node is judged on its own before anything is converted: kept as it is where\n"
    "the target opset's version of its op means the same for it (only wider types, an\n"
    "attribute it does not use), converted alone through onnx's version converter\n"
    "otherwise, and named with what it would need when neither works (e.g. GridSample\n"
    "below 16, Resize below 13, ConstantOfShape below 9, negative Gather indices below\n"
    "11). Going up, onnx's converter converts the whole model once no node blocks it.\n\n"
    "Verification: the converted model's outputs against the original's, at the given\n"
    "sizes and at a second size where the model has dynamic dims, with the shared\n"
    "tolerance (another opset's kernels may round differently). Exit 0 when it passed (and\n"
    "-o was written), 1 when it failed (nothing written), 2 when the conversion is refused\n"
    "(every blocking node listed) or the input is bad.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.from, details.to, details.ir_version\n"
    "{before, after}, details.op_types, details.nodes, details.nodes_kept,\n"
    "details.nodes_adapted, details.nodes_rewritten, details.probes; a refusal is the error document, each blocker\n"
    "one of its problems.\n\n"
    "example:\n  surgeon convert model.onnx --opset 11 -o model_op11.onnx"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--opset", type=int, required=True, metavar="N", help="the target default-domain opset"
    )
    _common.add_output_arguments(parser, what="the converted model")
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def run(args, ctx) -> int:
    from surgeon.edits.convert import convert

    model, feeds, options, tol = _common.load_model_to_edit(args)
    with ctx.status(f"convert: probing nodes, converting to opset {args.opset}, verifying"):
        edited = convert(model, args.opset, feed_options=feeds, options=options, tolerance=tol)
    written = _common.save_if_passed(edited, args)
    from surgeon.outcomes_surgery import ConvertOutcome

    return ctx.finish(ConvertOutcome(edited, args.model, args.output, written))
