"""`surgeon reshape-io`: set input/output dims static or symbolic, then check the model
really runs at several sizes."""

from __future__ import annotations

HELP = "set input/output dims static or symbolic (dynamic_axes after export), then check it runs"
DESCRIPTION = (
    HELP
    + "\n\nDims are NAME:DIMS with DIMS like Bx3xHxW (or B,3,H,W): an integer is static, a name is\n"
    "a symbolic dim, ? or -1 an unnamed dynamic one. Outputs not given get their dims from\n"
    "shape inference. Stale value_info is cleared and shape inference re-run.\n\n"
    "Then two checks: at the original's input sizes the edited model must give bit-identical\n"
    "values, and it must run at 2+ sizes of every dynamic dim with outputs of the expected\n"
    "shapes (batch dims: export value, 1, 3; spatial: export value, 64, 96; others: export\n"
    "value, 16, 24; --sizes H=224,320 overrides). A size baked into a Reshape/Expand/Tile/\n"
    "Resize/ConstantOfShape/Slice constant is reported with the node that holds it.\n"
    "A batch dim (named like batch/N/B, or axis 0 of a rank-2+ input unless named like a\n"
    "sequence; --batch overrides) means independent items: at its largest size each item of\n"
    "each output must equal the batch-1 run of that item (--batch-atol/--batch-rtol, default\n"
    "1e-03, atol times the tensor's max(1, max|item|)), stacked on one axis; the node that\n"
    "folds or mixes the items on its own (run alone on its items' inputs) is named.\n"
    "onnxruntime runs with graph optimisations off by default (--optimization changes it).\n"
    "Exit 0 when both pass (and -o was written), 1 when not (nothing written), 2 on bad input.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.inputs / details.outputs [{name, old,\n"
    "new}], details.export {dim: size}, details.value_info {refreshed, added, cleared} and\n"
    "details.dynamic (the check-dynamic document).\n\n"
    "example:\n  surgeon reshape-io model.onnx --input images:Bx3xHxW -o dynamic.onnx"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    group = parser.add_argument_group("dims")
    group.add_argument(
        "--input",
        action="append",
        default=[],
        dest="input_specs",
        metavar="NAME:DIMS",
        help="new dims of an input, e.g. images:Bx3xHxW; repeatable",
    )
    group.add_argument(
        "--output",
        action="append",
        default=[],
        dest="output_specs",
        metavar="NAME:DIMS",
        help="new dims of an output, e.g. output0:Bx84xA; repeatable (the file goes to -o)",
    )
    out = parser.add_argument_group("output model")
    out.add_argument(
        "-o", dest="output", metavar="OUT.onnx", help="where to write the edited model"
    )
    out.add_argument(
        "--inplace", action="store_true", help="allow the output to overwrite the input model"
    )
    out.add_argument(
        "--external-data",
        choices=["auto", "always", "never"],
        default="auto",
        help="write weights to OUT.onnx.data: auto (only above 2 GB), always, never",
    )
    # Bit-identity with the original: same kernels, see surgeon.edits.extract.VERIFY_OPTIONS.
    add_check_arguments(parser, optimization="disabled")


def add_check_arguments(parser, optimization: str = "all") -> None:
    from surgeon.commands import _common

    group = parser.add_argument_group("runtime check")
    group.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="DIM=S1,S2",
        help="sizes to try for a dynamic dim, e.g. H=224,320; repeatable",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    _common.add_max_feed_size_argument(group)
    group.add_argument(
        "--batch",
        action="append",
        default=[],
        metavar="DIM",
        help="the batch dim(s) whose items must be independent (default: dims named like "
        "batch/N/B, and unnamed-or-other axis 0 of inputs of rank 2+); --batch none: no item check",
    )
    group.add_argument(
        "--batch-atol",
        type=float,
        default=None,
        help="absolute tolerance of an item against its batch-1 run, times the tensor's "
        "max(1, max|item|) (default 1e-03)",
    )
    group.add_argument(
        "--batch-rtol",
        type=float,
        default=None,
        help="relative tolerance of an item against its batch-1 run (default 1e-03)",
    )
    _common.add_runtime_arguments(parser, optimization=optimization)


def batch_arguments(args) -> dict:
    """The batch dims and the item tolerance from the parsed arguments, as keywords of
    check_dynamic / reshape_io."""
    from surgeon.compare import Tolerance
    from surgeon.dims import parse_batch
    from surgeon.dynamic.batch import BATCH_TOLERANCE
    from surgeon.errors import UsageError

    if args.batch_atol is None:
        args.batch_atol = BATCH_TOLERANCE.atol
    if args.batch_rtol is None:
        args.batch_rtol = BATCH_TOLERANCE.rtol
    if not (args.batch_atol >= 0 and args.batch_rtol >= 0):  # also refuses NaN
        raise UsageError(
            f"--batch-atol {args.batch_atol:g} --batch-rtol {args.batch_rtol:g}: both must be "
            "non-negative numbers, e.g. --batch-atol 1e-4 --batch-rtol 1e-3"
        )
    return {
        "batch": parse_batch(args.batch),
        "batch_tolerance": Tolerance(atol=args.batch_atol, rtol=args.batch_rtol),
    }


def parse_specs(items, flag: str) -> dict:
    from surgeon.dims import parse_io_spec
    from surgeon.errors import UsageError

    specs = {}
    for item in items:
        name, dims = parse_io_spec(item, flag=flag)
        if name in specs:
            raise UsageError(f"`{flag}` gives `{name}` twice")
        specs[name] = dims
    return specs


def run(args, ctx) -> int:
    from surgeon.commands import _common
    from surgeon.dims import parse_sizes
    from surgeon.edits.shapes import reshape_io
    from surgeon.feeds import FeedOptions
    from surgeon.loading import load

    inputs = parse_specs(args.input_specs, "--input")
    outputs = parse_specs(args.output_specs, "--output")
    sizes = parse_sizes(args.sizes)
    batch = batch_arguments(args)
    limit = _common.max_feed_bytes(args)
    options = _common.run_options(args)
    _common.check_files(args, [(args.model, "the input model")])
    model = load(args.model)
    _common.check_files(args, [(model, "the input model")])
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("reshape-io: editing and checking sizes"):
        edited = reshape_io(
            model,
            inputs,
            outputs,
            sizes=sizes,
            feed_options=FeedOptions(seed=args.seed, max_feed_bytes=limit),
            options=options,
            **batch,
        )
    written = False
    if edited.passed and args.output:
        _common.save_output(edited.model, args)
        written = True
    from surgeon.outcomes import ReshapeOutcome

    return ctx.finish(ReshapeOutcome(edited, args.model, args.output, written))
