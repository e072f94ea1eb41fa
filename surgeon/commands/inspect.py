"""`surgeon inspect`: what a model holds, for a person or (``--json``) a machine."""

from __future__ import annotations

HELP = "show a model's inputs, outputs, opsets, ops, weights, subgraphs and edit history"
DESCRIPTION = (
    HELP
    + "\n\nexample:\n  surgeon inspect model.onnx\n  surgeon inspect model.onnx --json | jq .op_types"
    + "\n  surgeon inspect model.onnx --names 'backbone/*'"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--names",
        nargs="?",
        const="*",
        default=None,
        metavar="GLOB",
        help="list the node and tensor names (graph inputs and node outputs) the commands "
        "accept, those matching GLOB if given (case-sensitive, e.g. 'conv*'); "
        "with --json under the key `names`",
    )


def run(args, ctx) -> int:
    from surgeon.inspection import describe
    from surgeon.loading import load

    # Nothing here reads weight values: they stay in the file (a skeleton is parsed).
    model = load(args.model, weights_on_disk=True)
    info = describe(model)
    if args.names is not None:
        from surgeon.inspection import list_names

        info["names"] = list_names(model, args.names)
    from surgeon.outcomes import InspectOutcome

    return ctx.finish(InspectOutcome(info, names_only=args.names is not None))
