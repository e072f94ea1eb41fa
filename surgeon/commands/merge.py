"""`surgeon merge`: connect outputs of one model to inputs of another, verified."""

from __future__ import annotations

from surgeon.commands import _common
from surgeon.commands.nms import add_nms_arguments

HELP = "merge two models (e.g. a detector and its NMS) and verify against running them in sequence"
DESCRIPTION = (
    HELP
    + "\n\nOutputs of FIRST feed inputs of SECOND: as given by --map FIRST_OUTPUT=SECOND_INPUT, else by\n"
    "equal names, else the single output into the single input. Every connection is checked (dtype,\n"
    "rank, static dims) first; name clashes are resolved by prefixing; a lower opset is\n"
    "upgraded with onnx's version converter. The merged model must give the outputs of FIRST\n"
    "then SECOND run in sequence, within --atol/--rtol (bit-identical with --exact), or nothing\n"
    "is written (exit 1).\n\n"
    "--nms LAYOUT builds the NMS graph (see `surgeon nms --help`) and merges it in one step.\n\n"
    "JSON keys: schema, first, second, output, written, passed, how, connections,\n"
    "shared_inputs, renamed, opset, kept_outputs, dropped_outputs, output_names, inputs,\n"
    "outputs, nms, verification.\n\n"
    "examples:\n"
    "  surgeon merge det.onnx --nms yolov8 --classes 80 -o det_nms.onnx\n"
    "  surgeon merge det.onnx nms.onnx --map output0=predictions -o det_nms.onnx\n"
    "  surgeon merge preprocess.onnx model.onnx -o full.onnx --shape images:1x3x640x640"
)


def add_arguments(parser) -> None:
    parser.add_argument("first", help="the model that runs first (.onnx)")
    parser.add_argument("second", nargs="?", help="the model it feeds (.onnx); omit with --nms")
    _common.add_map_argument(
        parser,
        "FIRST_OUTPUT",
        "SECOND_INPUT",
        "connect output FIRST_OUTPUT of FIRST to input SECOND_INPUT of SECOND",
    )
    parser.add_argument(
        "--prefix1",
        default=None,
        help="prefix for FIRST's internal tensors whose names a merged output takes "
        "(default: FIRST's file stem and /)",
    )
    parser.add_argument(
        "--prefix2",
        default=None,
        help="prefix for SECOND's names that clash with FIRST's (default: SECOND's file "
        "stem and /, e.g. nms/)",
    )
    parser.add_argument(
        "--keep-outputs",
        nargs="?",
        const="*",
        default=None,
        metavar="NAMES",
        help="also keep FIRST's outputs: all unconnected ones, or a comma-separated list",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running the merged model against the two models in sequence",
    )
    parser.add_argument(
        "--nms",
        metavar="LAYOUT",
        help="build an NMS graph for this head layout (yolov8, yolov5, boxes-scores, detr) as SECOND",
    )
    add_nms_arguments(parser, required=False)
    _common.add_output_arguments(parser, inplace_help="allow -o to overwrite FIRST or SECOND")
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def parse_io_map(items) -> list[tuple[str, str]]:
    """``FIRST_OUTPUT=SECOND_INPUT`` pairs (one output may feed several inputs)."""
    return _common.parse_map(items, "FIRST_OUTPUT", "SECOND_INPUT", unique_left=False)


def _nms_second(args, first, io_map):
    """Build the NMS graph for `--nms`, reading classes, dtype and opset from FIRST."""
    from surgeon.commands.nms import nms_kwargs
    from surgeon.edits.nms import DEFAULT_INPUTS, LAYOUTS, build_nms
    from surgeon.errors import UsageError, did_you_mean

    layout = args.nms
    if layout not in LAYOUTS:
        hint = did_you_mean(layout, LAYOUTS)
        raise UsageError(
            f"--nms {layout} is not a known layout; use one of {', '.join(LAYOUTS)}"
            + (f"; {hint}" if hint else "")
        )
    # The detector output mapped to the NMS input that takes the class scores.
    scores_input = DEFAULT_INPUTS[layout][-1]
    source = next((out for out, inp in io_map if inp == scores_input), None)
    if source is not None and source not in first.output_names:
        source = None  # merge() reports the unknown name with the others
    # A one-output detector before the detr layout is the packed [B, Q, 4+C] form
    # (ultralytics' RT-DETR export), unless --map sends it to one of the two inputs.
    names = None
    if layout == "detr" and len(first.output_names) == 1 and not io_map:
        names = ("predictions",)
    model = build_nms(
        layout,
        args.classes,
        detector=first,
        source=source,
        input_names=names,
        **nms_kwargs(args),
    )
    params = dict(model.provenance[-1]["params"])
    if args.no_topk:
        from surgeon.commands.nms import without_topk

        model, params = without_topk(model, params)
    params["classes_inferred"] = args.classes is None
    return model, params


def run(args, ctx) -> int:
    from surgeon.edits.merge import merge
    from surgeon.errors import UsageError
    from surgeon.loading import load

    if args.nms and args.second:
        raise UsageError(
            f"give either SECOND ({args.second}) or --nms {args.nms}, not both",
        )
    if not args.nms and not args.second:
        raise UsageError(
            "nothing to merge into: give SECOND.onnx or --nms LAYOUT",
            hint="e.g. surgeon merge det.onnx --nms yolov8 --classes 80 -o det_nms.onnx",
        )
    if not args.nms:
        nms_only = {
            "--classes": args.classes is not None,
            "--iou": args.iou != 0.45,
            "--score": args.score != 0.25,
            "--max-det": args.max_det != 100,
            "--agnostic": args.agnostic,
            "--best-class": args.best_class,
            "--probabilities": args.probabilities,
            "--box-format": args.box_format is not None,
            "--format": args.output_format != "efficient",
            "--scale": args.scale is not None,
            "--no-topk": args.no_topk,
        }
        given = [flag for flag, used in nms_only.items() if used]
        if given:
            raise UsageError(
                f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --nms LAYOUT",
                hint="Set NMS options when building SECOND with `surgeon nms`, or use --nms.",
            )
    # -o may replace FIRST or SECOND with --inplace (the merge edits both).
    io_map = parse_io_map(args.map)
    tol = _common.tolerance(args)
    reads = [("the --feeds file", args.feeds)]
    _common.check_files(
        args,
        [(args.first, "the first model"), (args.second, "the second model")],
        edited=2,
        reads=reads,
    )
    feed_options = _common.feed_options(args)
    first = load(args.first)
    nms_params = None
    if args.nms:
        second, nms_params = _nms_second(args, first, io_map)
    else:
        second = load(args.second)
    # Again with the loaded models: -o must not hit their external data files either.
    _common.check_files(
        args,
        [(first, "the first model"), (second if args.second else None, "the second model")],
        edited=2,
        reads=reads,
    )
    keep = False
    if args.keep_outputs == "*":
        keep = True
    elif args.keep_outputs:
        keep = [k.strip() for k in args.keep_outputs.split(",") if k.strip()]
    # a spinner on a terminal while onnxruntime works; silent when piped or --json
    with ctx.status("merge: connecting and verifying against the two models in sequence"):
        result = merge(
            first,
            second,
            io_map or None,
            prefix1=args.prefix1,
            prefix2=args.prefix2,
            keep_outputs=keep,
            verify=not args.no_verify,
            feed_options=feed_options,
            options=_common.run_options(args),
            tolerance=tol,
        )
    written = False
    if args.output and result.passed:
        _common.save_output(result.model, args)
        written = True
    from surgeon.outcomes import MergeOutcome

    outcome = MergeOutcome(first.name, second.name, result, args.output, written, nms_params)
    return ctx.finish(outcome)
