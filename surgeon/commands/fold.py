"""`surgeon fold`: constant folding and cleanup, verified against the original."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "fold constants and shape arithmetic, drop unused parts; verified against the original"
DESCRIPTION = (
    HELP
    + "\n\nFolds what is constant: Constant/ConstantOfShape chains, shape arithmetic on static\n"
    "dims (Shape->Gather->Unsqueeze->Concat), an If whose condition is fixed, then removes\n"
    "unused nodes and initializers and merges duplicate initializers. Quantize/Dequantize\n"
    "nodes are kept. A one-element input given in --feeds (a sample rate, a mode flag) is\n"
    "bound: it becomes that constant, what it decides folds too, and the folded model no\n"
    "longer takes it (the report says so). Make dims static first (reshape-io) to fold the\n"
    "Shape ops that read them; every Shape op left is listed with why.\n\n"
    "Verification: the outputs of the folded model against the original's, at the given\n"
    "sizes and at a second size where the model has dynamic dims, with the shared\n"
    "tolerance; the report says whether values are bit-identical (--exact requires it).\n"
    "Exit 0 when it passed (and -o was written), 1 when it failed (nothing written), 2 on\n"
    "bad input.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.op_types {OP: {before, after}},\n"
    "details.nodes, details.initializers {before, after, bytes_before, bytes_after, removed,\n"
    "deduplicated}, details.bound, details.dtype_repairs, details.shape_ops_left [{node,\n"
    "input, why}], details.passes.\n\n"
    "examples:\n"
    "  surgeon fold model.onnx -o folded.onnx --exact\n"
    "  surgeon fold silero_vad.onnx --feeds sr16k.npz -o vad16k.onnx   # sr.npz holds sr=16000"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--size-threshold",
        metavar="SIZE",
        help="do not fold tensors above SIZE, e.g. 16M (default: fold all)",
    )
    _common.add_output_arguments(parser, what="the folded model")
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def _bound_from_feeds(model, path) -> dict:
    """The one-element inputs of --feeds whose declared shape holds one element (rank 0 or
    all dims 1): those are bound. Inputs with dynamic dims are not, since one element
    there is only one of the sizes the model takes."""
    if not path:
        return {}
    import numpy as np

    inputs = {i.name: i for i in model.inputs}
    bound = {}
    with np.load(path) as data:
        for name in data.files:
            info = inputs.get(name)
            if info is None or info.shape is None:
                continue
            if all(d == 1 for d in info.shape) and data[name].size == 1:
                bound[name] = data[name]
    return bound


def run(args, ctx) -> int:
    from surgeon.edits.fold import fold
    from surgeon.feeds import parse_size

    threshold = parse_size(args.size_threshold) if args.size_threshold is not None else None
    model, feeds, options, tol = _common.load_model_to_edit(args)
    bind = _bound_from_feeds(model, args.feeds)
    with ctx.status("fold: folding and verifying"):
        edited = fold(
            model,
            bind,
            size_threshold=threshold,
            feed_options=feeds,
            options=options,
            tolerance=tol,
        )
    written = _common.save_if_passed(edited, args)
    from surgeon.outcomes_surgery import FoldOutcome

    return ctx.finish(FoldOutcome(edited, args.model, args.output, written))
