"""`surgeon rename`: new names for inputs, outputs (and nodes), verified by value."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "rename inputs, outputs, tensors or nodes; verified: same values under the new names"
DESCRIPTION = (
    HELP + "\n\n--map OLD=NEW renames one tensor (a graph input or output, or any other tensor).\n"
    "--prefix PFX and --regex 'PATTERN=REPLACEMENT' rename every graph input and output not\n"
    "named by --map (the regex first, then the prefix; the regex is split at its last '=').\n"
    "--nodes applies --prefix/--regex to node names as well. Every reference is updated,\n"
    "including reads inside If/Loop bodies. A new name that is already taken is an error\n"
    "listing every collision.\n\n"
    "Exit 0 when the renamed model gives the same values (within --atol/--rtol) under the new names (and -o was\n"
    "written), 1 when it does not (nothing written), 2 on bad input.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.tensors [{old, new, role}] and\n"
    "details.nodes [{old, new}].\n\n"
    "examples:\n  surgeon rename model.onnx --map images=pixels --map output0=preds -o out.onnx\n"
    "  surgeon rename model.onnx --regex '^output(\\d+)$=preds\\1' -o out.onnx\n"
    "  surgeon rename model.onnx --prefix det_ --nodes -o out.onnx"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    group = parser.add_argument_group("what to rename")
    _common.add_map_argument(group, "OLD", "NEW", "rename tensor OLD to NEW")
    _common.add_renamed(group, "--io", "--map", "e.g. --map OLD=NEW")
    group.add_argument("--prefix", metavar="PFX", help="prefix every input and output name")
    group.add_argument(
        "--regex",
        metavar="PATTERN=REPL",
        help="re.sub on every input and output name (\\1 refers to groups)",
    )
    group.add_argument(
        "--nodes", action="store_true", help="apply --prefix/--regex to node names too"
    )
    _common.add_output_arguments(parser)
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def run(args, ctx) -> int:
    from surgeon.edits.rename import parse_regex, rename

    mapping = dict(_common.parse_map(args.map, "OLD", "NEW"))
    if args.regex is not None:
        parse_regex(args.regex)  # a bad pattern fails before the model is read
    model, feeds, options, tol = _common.load_model_to_edit(args)
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("rename: renaming and verifying"):
        edited = rename(
            model,
            mapping,
            prefix=args.prefix,
            regex=args.regex,
            nodes=args.nodes,
            feed_options=feeds,
            options=options,
            tolerance=tol,
        )
    written = _common.save_if_passed(edited, args)
    from surgeon.outcomes import RenameOutcome

    return ctx.finish(RenameOutcome(edited, args.model, args.output, written))
