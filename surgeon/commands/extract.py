"""`surgeon extract`: cut out the subgraph between given tensors, verified against the
original."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "cut out the subgraph between given tensors; verified against the original"
DESCRIPTION = (
    HELP
    + "\n\nInputs and outputs are tensor names (a node name means its outputs); separate several\n"
    "with commas or repeat the flag. The subgraph keeps only the nodes, initializers and\n"
    "constants it needs, with dtypes and shapes at its new inputs and outputs. It works on\n"
    "models with external data and above 2 GB.\n\n"
    "Verification runs the original with taps at the cut points, feeds the tapped values to\n"
    "the subgraph and compares its outputs with the shared tolerance (--exact: bit-identical). Exit 0 when\n"
    "it passed (and -o was written), 1 when it failed (nothing written), 2 on bad input.\n"
    "onnxruntime runs with graph optimisations off by default: with them on, the cut can change\n"
    "which kernels it picks (fusions, pre-packed weights), so expect last-bit differences with\n"
    "--optimization all.\n\n"
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
        help="tensors (or nodes) where the subgraph starts; repeatable (input values: --feeds)",
    )
    parser.add_argument(
        "--outputs",
        action="append",
        required=True,
        metavar="C[,D]",
        help="tensors (or nodes) the subgraph computes; repeatable",
    )
    _common.add_output_arguments(parser)
    # Here --inputs names the cut, so there is no hidden old --inputs FEEDS.npz.
    _common.add_feed_arguments(parser, old_inputs=False)
    _common.add_tolerance_arguments(parser)
    # Same kernels on both sides: see surgeon.edits.extract.VERIFY_OPTIONS.
    _common.add_runtime_arguments(parser)


def refuse_npz_cut(items) -> None:
    """``--inputs x.npz`` (input values where the cut belongs) points to --feeds.

    Raises:
        UsageError: A --inputs value that names an .npz file.
    """
    from surgeon.errors import UsageError

    npz = [p.strip() for item in items for p in item.split(",") if p.strip().endswith(".npz")]
    if npz:
        raise UsageError(
            f"--inputs {npz[0]}: extract's --inputs names the tensors where the subgraph "
            "starts; input values from an .npz go to --feeds",
            hint=f"e.g. --feeds {npz[0]} --inputs TENSOR --outputs TENSOR",
        )


def run(args, ctx) -> int:
    from surgeon.edits.extract import extract

    refuse_npz_cut(args.inputs)
    model, feeds, options, tol = _common.load_model_to_edit(args)
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("extract: cutting and verifying against the original"):
        edited = extract(
            model, args.inputs, args.outputs, feed_options=feeds, tolerance=tol, options=options
        )
    written = _common.save_if_passed(edited, args)
    from surgeon.outcomes import ExtractOutcome

    return ctx.finish(ExtractOutcome(edited, args.model, args.output, written))
