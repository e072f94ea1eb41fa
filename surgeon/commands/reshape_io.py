"""`surgeon reshape-io`: set input/output dims static or symbolic, then check the model
really runs at several sizes."""

from __future__ import annotations

HELP = "set input/output dims static or symbolic (dynamic_axes after export), then check it runs"
DESCRIPTION = (
    HELP
    + "\n\nDims are --dims NAME:DIMS (NAME an input or an output) with DIMS like Bx3xHxW (or B,3,H,W): an integer is static, a name is\n"
    "a symbolic dim, ? or -1 an unnamed dynamic one. Outputs not given get their dims from\n"
    "shape inference. Stale value_info is cleared and shape inference re-run.\n"
    "An output's declaration may be the wrong one: --dims OUT:DIMS may change its rank when\n"
    "the model really produces that rank (it runs once to see; otherwise refused with the\n"
    "shape it produces), and --declare-outputs declares every output's dtype and dims as\n"
    "produced at the sizes tried: a dim that follows an input dim takes its name, another\n"
    "that varies keeps the old declaration's name (or none), the others are static.\n\n"
    "Then two checks: at the original's input sizes the edited model must give the same\n"
    "values (within --atol/--rtol; --feeds and --shape choose the inputs), and it must run at 2+ sizes of every dynamic dim with outputs of the expected\n"
    "shapes (batch dims: export value, 1, 3; spatial: export value, 64, 96; others: export\n"
    "value, 16, 24; --sizes H=224,320 overrides). A size baked into a Reshape/Expand/Tile/\n"
    "Resize/ConstantOfShape/Slice constant is reported with the node that holds it.\n"
    "A batch dim (named like batch/N/B, or axis 0 of a rank-2+ input unless named like a\n"
    "sequence; --batch overrides) means independent items: at its largest size each item of\n"
    "each output must equal the batch-1 run of that item (--batch-atol/--batch-rtol, default\n"
    "1e-03, atol times the tensor's max(1, max|item|)), stacked on one axis; the node that\n"
    "folds or mixes the items on its own (run alone on its items' inputs) is named.\n"
    "Values given with --feeds are used at every size tried: a fixed-shape value (a sample\n"
    "rate scalar that picks an If branch) as it is; a value with dynamic dims pins them.\n"
    "onnxruntime runs with graph optimisations off by default (--optimization changes it).\n"
    "Exit 0 when both pass (and -o was written), 1 when not (nothing written), 2 on bad input.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.inputs / details.outputs [{name, old,\n"
    "new}], details.export {dim: size}, details.value_info {refreshed, added, cleared} and\n"
    "details.dynamic (the check-dynamic document).\n\n"
    "example:\n  surgeon reshape-io model.onnx --dims images:Bx3xHxW -o dynamic.onnx"
)


# The item tolerance of the batch check, as the parser shows it (surgeon.dynamic.batch
# imports numpy, which `surgeon --help` must not): tests/test_shared_options.py checks it
# equals surgeon.dynamic.batch.BATCH_TOLERANCE.
BATCH_ATOL = 1e-3
BATCH_RTOL = 1e-3


def add_arguments(parser) -> None:
    from surgeon.commands import _common

    parser.add_argument("model", help="the .onnx file")
    group = parser.add_argument_group("dims")
    group.add_argument(
        "--dims",
        action="append",
        default=[],
        dest="dims_specs",
        metavar="NAME:DIMS",
        help="new dims of the input or output NAME, e.g. images:Bx3xHxW or output0:Bx84xA; "
        "repeatable",
    )
    group.add_argument(
        "--declare-outputs",
        action="store_true",
        help="declare every output's dtype and dims as the model really produces them (run "
        "at the sizes the check tries): fixes a stale output declaration; --dims still wins",
    )
    _common.add_renamed(group, "--input", "--dims", "e.g. --dims images:Bx3xHxW")
    _common.add_output_arguments(parser)
    _common.add_feed_arguments(parser, tries_sizes=True)
    _common.add_tolerance_arguments(parser)
    # Bit-identity with the original: same kernels, see surgeon.edits.extract.VERIFY_OPTIONS.
    add_check_arguments(parser)


def add_check_arguments(parser) -> None:
    """The dynamic check's own options (the sizes, the batch dims and their item
    tolerance) and the onnxruntime group; the input values are the shared feed group."""
    from surgeon.commands import _common

    group = parser.add_argument_group("runtime check")
    group.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="DIM=S1,S2",
        help="sizes to try for a dynamic dim, e.g. H=224,320; repeatable",
    )
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
        default=BATCH_ATOL,
        help="absolute tolerance of an item against its batch-1 run, times the tensor's "
        f"max(1, max|item|) (default {BATCH_ATOL:g})",
    )
    group.add_argument(
        "--batch-rtol",
        type=float,
        default=BATCH_RTOL,
        help=f"relative tolerance of an item against its batch-1 run (default {BATCH_RTOL:g})",
    )
    _common.add_runtime_arguments(parser)


def batch_arguments(args) -> dict:
    """The batch dims and the item tolerance from the parsed arguments, as keywords of
    check_dynamic / reshape_io."""
    import math

    from surgeon.compare import Tolerance
    from surgeon.dims import parse_batch
    from surgeon.errors import UsageError

    # NaN fails every comparison and inf lets every value pass: neither is a check
    if not (0 <= args.batch_atol < math.inf and 0 <= args.batch_rtol < math.inf):
        raise UsageError(
            f"--batch-atol {args.batch_atol:g} --batch-rtol {args.batch_rtol:g}: both must be "
            "finite numbers >= 0, e.g. --batch-atol 1e-4 --batch-rtol 1e-3"
        )
    try:
        batch = parse_batch(args.batch)
    except UsageError as e:
        raise UsageError(f"--batch: {e.message}") from None
    return {
        "batch": batch,
        "batch_tolerance": Tolerance(atol=args.batch_atol, rtol=args.batch_rtol),
    }


def sizes_argument(args) -> dict:
    """--sizes as {dim: [sizes]}.

    Raises:
        UsageError: An item that does not parse.
    """
    from surgeon.dims import parse_sizes
    from surgeon.errors import UsageError

    try:
        return parse_sizes(args.sizes)
    except UsageError as e:
        raise UsageError(f"--sizes: {e.message}", problems=e.problems, hint=e.hint) from None


def parse_dims_specs(items) -> dict:
    """--dims NAME:DIMS items as {name: dims} (syntax only; :func:`split_dims` says which
    are inputs and which outputs).

    Raises:
        UsageError: An item that does not parse, or a name given twice.
    """
    from surgeon.dims import dims_text, parse_io_spec
    from surgeon.errors import UsageError

    specs, conflicts = {}, []
    for item in items:
        try:
            name, dims = parse_io_spec(item, what="dims")
        except UsageError as e:
            raise UsageError(f"--dims: {e.message}") from None
        if name in specs and specs[name] != dims:
            conflicts.append(
                f"`{name}` is given two shapes: {dims_text(specs[name])} and {dims_text(dims)}"
            )
            continue
        specs[name] = dims
    if conflicts:
        raise UsageError("conflicting --dims", problems=conflicts)
    return specs


def refuse_oversized_dims(model, inputs: dict, limit: int) -> None:
    """Inputs whose --dims alone (dynamic dims counted as 1) exceed the feed size limit:
    the check could never run them, and it is the user's --dims that set the sizes, not
    the model.

    Raises:
        UsageError: Every such input, with its size.
    """
    import math

    from surgeon.dims import dims_text
    from surgeon.errors import UsageError
    from surgeon.feeds import _itemsize
    from surgeon.npz import format_bytes

    dtypes = {i.name: i.dtype for i in model.inputs}
    problems = []
    for name, dims in inputs.items():
        nbytes = math.prod(d for d in dims if isinstance(d, int)) * _itemsize(dtypes.get(name))
        if nbytes > limit:
            problems.append(
                f"`{name}` {dims_text(dims)} {dtypes.get(name) or 'float32'} would take at "
                f"least {format_bytes(nbytes)}"
            )
    if problems:
        raise UsageError(
            f"the input sizes --dims sets would take more than the limit of "
            f"{format_bytes(limit)} for the feeds, so the edit could not be checked",
            problems=problems,
            hint="Use smaller static dims (or a name for a dynamic dim), or raise "
            "--max-feed-size if they are meant.",
        )


def split_dims(model, specs: dict) -> tuple[dict, dict]:
    """{name: dims} into the inputs' and the outputs' by the name.

    Raises:
        UsageError: A name that is both an input and an output, or neither (with close
            matches), all of them in one message.
    """
    from surgeon.errors import UsageError, did_you_mean

    inputs, outputs, problems = {}, {}, []
    in_names, out_names = set(model.input_names), set(model.output_names)
    for name, dims in specs.items():
        if name in in_names and name in out_names:
            problems.append(f"`{name}` is both an input and an output of {model.name}")
        elif name in in_names:
            inputs[name] = dims
        elif name in out_names:
            outputs[name] = dims
        else:
            hint = did_you_mean(name, [*model.input_names, *model.output_names])
            problems.append(
                f"`{name}` is neither an input nor an output of {model.name}"
                + (f"; {hint}" if hint else "")
            )
    if problems:
        raise UsageError(
            "cannot read --dims" if len(problems) > 1 else f"--dims: {problems[0]}",
            problems=problems if len(problems) > 1 else [],
            hint=f"Inputs: {', '.join(model.input_names) or 'none'}; outputs: "
            f"{', '.join(model.output_names) or 'none'}.",
        )
    return inputs, outputs


def refuse_dims_as_output(output) -> None:
    """``--output images:Bx3xHxW`` (the old dims option) now names the output file.

    Raises:
        UsageError: An -o value that looks like NAME:DIMS, not a file.
    """
    from surgeon.errors import UsageError

    if output and ":" in output and not output.endswith(".onnx") and "/" not in output:
        raise UsageError(
            f"-o/--output {output} looks like NAME:DIMS: the dims of an output are given "
            "with --dims now, and -o/--output is the file written",
            hint=f"e.g. --dims {output} -o edited.onnx",
        )


def run(args, ctx) -> int:
    from surgeon.commands import _common
    from surgeon.edits.shapes import reshape_io

    refuse_dims_as_output(args.output)
    specs = parse_dims_specs(args.dims_specs)
    sizes = sizes_argument(args)
    batch = batch_arguments(args)
    model, feeds, options, tol = _common.load_model_to_edit(args)
    inputs, outputs = split_dims(model, specs)
    refuse_oversized_dims(model, inputs, _common.max_feed_bytes(args))
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("reshape-io: editing and checking sizes"):
        edited = reshape_io(
            model,
            inputs,
            outputs,
            sizes=sizes,
            feed_options=feeds,
            options=options,
            tolerance=tol,
            declare_outputs=args.declare_outputs,
            **batch,
        )
    written = _common.save_if_passed(edited, args)
    from surgeon.outcomes import ReshapeOutcome

    return ctx.finish(ReshapeOutcome(edited, args.model, args.output, written))
