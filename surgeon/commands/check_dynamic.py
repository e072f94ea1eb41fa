"""`surgeon check-dynamic`: run a model at several sizes of each dynamic input dim."""

from __future__ import annotations

HELP = "run a model at 2+ sizes of each dynamic input dim and check the output shapes"
DESCRIPTION = (
    HELP + "\n\nSizes per dim: batch dims 1 and 3, spatial dims 64 and 96, other dims 16 and 24;\n"
    "--sizes H=224,320 overrides; --shape chooses the first size of the dims it sets. The first\n"
    "size of every dim runs once, then one dim varies at a time. Values given with --feeds are\n"
    "used in every run: a fixed-shape value (a sample-rate scalar that picks an If branch) as\n"
    "it is, a value with dynamic dims at its own size, which pins those dims (not varied).\n"
    "onnxruntime runs with graph optimisations off by default (--optimization changes it).\n"
    "Outputs must have their declared rank and static dims, and a dim named like an input dim\n"
    "must take that dim's size. A batch dim (named like batch/N/B, or axis 0 of a\n"
    "rank-2+ input unless named like a sequence; --batch overrides, --batch none skips) means\n"
    "independent items: at its largest size, item i of every output must equal the batch-1\n"
    "run of item i, stacked on one axis (--batch-atol/--batch-rtol, default 1e-03; atol is\n"
    "multiplied by the tensor's max(1, max|item|), so that summation-order rounding passes). When a\n"
    "check fails, the node holding a baked size (a Reshape/Expand/Tile/Resize/\n"
    "ConstantOfShape/Slice constant, or the node onnxruntime names) or folding/mixing the\n"
    "batch items is reported. Exit 0 when every size ran with the expected shapes and the\n"
    "items are independent, 1 when not, 2 on bad input.\n\n"
    "JSON (--json): schema surgeon.check-dynamic/1: model, passed, summary, seed, dims [{name,\n"
    "axes, kind, values, export}], cases [{label, dims, varied, input_shapes, ran, passed,\n"
    "error, failed_node, outputs [{name, shape, expected, ok, problem}]}], suspects [{node,\n"
    "op_type, constant, role, values, reason, source, message}], notes, items [{dim, size,\n"
    "label, passed, summary, tolerance, error, outputs [{name, ok, batch_axis, shape,\n"
    "item_shape, max_abs, problem}]}].\n\n"
    "examples:\n  surgeon check-dynamic model.onnx --sizes H=320,480 --sizes W=320,640\n"
    "  surgeon check-dynamic vad.onnx --feeds sr.npz   # sr.npz holds sr=16000"
)


def add_arguments(parser) -> None:
    from surgeon.commands import _common
    from surgeon.commands.reshape_io import add_check_arguments

    parser.add_argument("model", help="the .onnx file")
    _common.add_feed_arguments(parser, tries_sizes=True)
    add_check_arguments(parser)


def run(args, ctx) -> int:
    from surgeon.commands import _common
    from surgeon.commands.reshape_io import batch_arguments, sizes_argument
    from surgeon.dynamic import check_dynamic
    from surgeon.loading import load

    sizes = sizes_argument(args)
    batch = batch_arguments(args)
    feeds = _common.feed_options(args)
    options = _common.run_options(args)
    model = load(args.model)
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status(f"check-dynamic {model.name}: running it at several sizes"):
        check = check_dynamic(
            model,
            sizes=sizes,
            feed_options=feeds,
            options=options,
            **batch,
        )
    return ctx.finish(check)
