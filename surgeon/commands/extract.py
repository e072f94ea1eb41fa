"""`surgeon extract`: cut out the subgraph between given tensors, verified against the
original."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "cut out the subgraph between given tensors; verified bit for bit against the original"
DESCRIPTION = (
    HELP
    + "\n\nInputs and outputs are tensor names (a node name means its outputs); separate several\n"
    "with commas or repeat the flag. The subgraph keeps only the nodes, initializers and\n"
    "constants it needs, with dtypes and shapes at its new inputs and outputs. It works on\n"
    "models with external data and above 2 GB.\n\n"
    "Verification runs the original with taps at the cut points, feeds the tapped values to\n"
    "the subgraph and requires bit-identical outputs (--atol/--rtol relax that). Exit 0 when\n"
    "it passed (and -o was written), 1 when it failed (nothing written), 2 on bad input.\n"
    "onnxruntime runs with graph optimisations off by default: with them on, the cut can change\n"
    "which kernels it picks (fusions, pre-packed weights), so expect last-bit differences and\n"
    "pass --atol with --optimization all.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.inputs / details.outputs (name, dtype,\n"
    "shape, source: declared|inferred|onnxruntime|run), details.nodes {kept, removed},\n"
    "details.initializers {kept, bytes}, details.dropped_inputs, details.notes.\n\n"
    "example:\n  surgeon extract tiny_yolo.onnx --inputs images --outputs backbone/act2_out -o backbone.onnx"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--inputs",
        action="append",
        required=True,
        metavar="A[,B]",
        help="tensors (or nodes) where the subgraph starts; repeatable",
    )
    parser.add_argument(
        "--outputs",
        action="append",
        required=True,
        metavar="C[,D]",
        help="tensors (or nodes) the subgraph computes; repeatable",
    )
    _common.add_output_arguments(parser)
    add_feed_arguments(parser)
    add_optional_tolerance(parser)
    # Same kernels on both sides: see surgeon.edits.extract.VERIFY_OPTIONS.
    _common.add_runtime_arguments(parser, optimization="disabled")


def add_feed_arguments(parser) -> None:
    """Feeds for the original (here --inputs names cut points, so the .npz is --feeds)."""
    group = parser.add_argument_group("feeds of the original")
    group.add_argument(
        "--feeds", metavar="FEEDS.npz", help="input values from an .npz keyed by input name"
    )
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="SPEC",
        help="resolve dynamic dims: INPUT:1x3x640x640 or DIM=640; repeatable",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    _common.add_max_feed_size_argument(group)


def add_optional_tolerance(parser) -> None:
    group = parser.add_argument_group("tolerance (default: bit-identical)")
    group.add_argument("--atol", type=float, help="accept this absolute difference instead")
    group.add_argument("--rtol", type=float, help="accept this relative difference instead")


def tolerance(args):
    from surgeon.compare import EXACT, Tolerance

    if args.atol is None and args.rtol is None:
        return EXACT
    return Tolerance(atol=args.atol or 0.0, rtol=args.rtol or 0.0)


def feed_options(args):
    from surgeon.feeds import FeedOptions, parse_shape_args

    shapes, dims = parse_shape_args(args.shape or [])
    return FeedOptions(
        seed=args.seed,
        shapes=shapes,
        dims=dims,
        npz=args.feeds,
        max_feed_bytes=_common.max_feed_bytes(args),
    )


def run(args, ctx) -> int:
    from surgeon.edits.extract import extract
    from surgeon.loading import load

    tol = tolerance(args)
    feeds = feed_options(args)
    options = _common.run_options(args)
    reads = [("the --feeds file", args.feeds)]
    _common.check_files(args, [(args.model, "the input model")], reads=reads)
    model = load(args.model)
    _common.check_files(args, [(model, "the input model")], reads=reads)
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("extract: cutting and verifying against the original"):
        edited = extract(
            model, args.inputs, args.outputs, feed_options=feeds, tolerance=tol, options=options
        )
    written = False
    if edited.passed and args.output:
        _common.save_output(edited.model, args)
        written = True
    from surgeon.outcomes import ExtractOutcome

    return ctx.finish(ExtractOutcome(edited, args.model, args.output, written))
