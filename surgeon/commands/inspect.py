"""`surgeon inspect`: what a model holds, for a person or (``--json``) a machine."""

from __future__ import annotations

HELP = "show a model's inputs, outputs, opsets, ops, weights, subgraphs and edit history"
DESCRIPTION = (
    HELP
    + "\n\nexample:\n  surgeon inspect model.onnx\n  surgeon inspect model.onnx --json | jq .op_types"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")


def run(args, ctx) -> int:
    from surgeon.inspection import describe
    from surgeon.loading import load

    model = load(args.model)
    info = describe(model)
    if ctx.json:
        ctx.emit_json(info)
    else:
        from surgeon.report.inspect import render_inspect

        render_inspect(ctx.console, info)
    return 0
