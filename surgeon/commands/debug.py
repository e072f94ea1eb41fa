"""`surgeon debug`: tap intermediate tensors, flag anomalies, compare layer by layer."""

from __future__ import annotations

from surgeon.commands import _common

HELP = "tap intermediate tensors: statistics, the first NaN/Inf, and the root-cause layer against a reference"
DESCRIPTION = (
    HELP
    + """

Taps are tensor names, node names (meaning their outputs), globs ('backbone/*') or `all`
(the default); --op Conv adds every output of every Conv. Without --ref or --save, only
per-tensor statistics leave onnxruntime, so `--tap all` costs about one plain run.

The verdict names the node where a NaN/Inf is born (its inputs are finite, its output is
not) and, with a reference, the root cause by each node's OWN error: every node whose
inputs pair with reference values (by name, or through the Casts and Q/DQ chains
converters insert) is also run on the reference's values, in one batched run, and the
node whose own error is worst beyond tolerance is named, whatever the node order, with
its cumulative error beside it; nodes whose inputs have no reference value say so.
(--ref-optimization keeps the verdict by graph position: the isolated run would compare
each node with itself.) A reference model's own inputs (ones the model lacks) come from
--feeds under their names, else random. NaN/Inf in your inputs and deliberate ones
computed from constants only (attention masks) are reported, not failures. A float16
model's tap check allows 8 float16 ulps (onnxruntime's CPU computes float16 chains in
float32 and rounds only exposed tensors); other models' is bit-exact. Exit 0 when nothing
is wrong (with a reference: no node beyond tolerance on its own and the outputs within
it), 1 when the tap check fails, a NaN/Inf is born, a node errs beyond tolerance on its
own or the outputs miss the tolerance, 2 on bad input (a reference that pairs with no
tapped tensor included).

examples:
  surgeon debug model.onnx --tap conv0
  surgeon debug model.onnx --tap 'backbone/*' --op Conv --html report.html
  surgeon debug model_fp16.onnx --ref model.onnx --atol 1e-2 --rtol 1e-2
  surgeon debug model.onnx --ref acts.npz          # activations saved from PyTorch
  surgeon debug model.onnx --ref-optimization all  # disabled vs all optimisations
  surgeon debug int8.onnx --ref fp32.onnx --suggest-exclude --atol 5e-2 --rtol 5e-2
  surgeon debug model.onnx --ref good.onnx --node-data err.json  # for Model Explorer"""
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    sel = parser.add_argument_group("what to tap")
    sel.add_argument(
        "--tap",
        action="append",
        default=[],
        metavar="NAME",
        help="tensor, node, glob or `all` (default all); repeatable",
    )
    sel.add_argument(
        "--op",
        action="append",
        default=[],
        metavar="OP",
        help="tap every output of nodes of this op type; repeatable",
    )
    ref = parser.add_argument_group("reference")
    ref.add_argument(
        "--ref",
        metavar="REF",
        help="another .onnx with corresponding tensor names, or an .npz of activations keyed by tensor name",
    )
    _common.add_map_argument(
        ref, "REF", "MODEL", "pair reference tensor REF with tensor MODEL of the debugged model"
    )
    ref.add_argument(
        "--ref-optimization",
        choices=_common.OPTIMIZATION_LEVELS,
        help="compare against the same model run at this onnxruntime optimisation level "
        "(default: no such reference)",
    )
    ref.add_argument(
        "--suggest-exclude",
        action="store_true",
        help="int8 QDQ model against its float --ref: rank the Q/DQ pairs by their own error "
        "and suggest quantize_static's nodes_to_exclude, verified by stripping them (-o "
        "writes the stripped model)",
    )
    ref.add_argument(
        "--exclude-max",
        type=int,
        default=10,
        metavar="N",
        help="the longest exclusion list tried (default 10)",
    )
    _common.add_output_arguments(
        parser,
        what="the model with the taps as outputs (the stripped model with --suggest-exclude)",
    )
    out = parser.add_argument_group("reports")
    out.add_argument(
        "--save", metavar="TAPS.npz", help="save the tapped tensors (keys = tensor names)"
    )
    out.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    out.add_argument(
        "--node-data",
        metavar="FILE.json",
        help="write per-node results for Google's Model Explorer (with a reference also "
        "FILE.isolated.json when isolated errors were measured); see the README",
    )
    out.add_argument(
        "--rows",
        type=int,
        default=40,
        help="rows shown in the terminal table (0 = all; flagged rows always shown; default 40)",
    )
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    # disabled (the shared default): each tapped tensor is what the graph defines, and
    # the tap check is bit-exact
    _common.add_runtime_arguments(parser)


def run(args, ctx) -> int:
    if args.suggest_exclude:
        from surgeon.commands._exclude import run_suggest_exclude

        return run_suggest_exclude(args, ctx)
    import os
    from pathlib import Path

    from surgeon.debugging import DebugOptions, debug, save_values
    from surgeon.edits.tap import tap
    from surgeon.errors import UsageError
    from surgeon.loading import load

    if args.rows < 0:
        raise UsageError("--rows must be 0 (all) or a positive number")
    # Here, at the CLI edge, not in debug(): mallopt is process-wide, and a library call
    # must not change the allocator policy of its caller's process.
    map_large_buffers()
    # Every file read and written, checked before any work (again once the models are
    # loaded, for their weights files). Only -o may replace the input model (with
    # --inplace); nothing may replace the reference, the feeds or a library.
    ref_is_npz = bool(args.ref) and Path(args.ref).suffix == ".npz"
    name_map = dict(_common.parse_map(args.map, "REF", "MODEL"))
    tol = _common.tolerance(args)
    feeds = _common.feed_options(args)
    reads = [("the --feeds file", args.feeds)]
    reads += [("the --ref activations", args.ref)] if ref_is_npz else []
    side = [("--save", args.save), ("--html", args.html)]
    if args.node_data is not None:  # "" too: the file plan refuses it with a reason
        from surgeon.report.node_data import node_data_paths

        with_ref = bool(args.node_data) and bool(args.ref or args.ref_optimization)
        side += [("--node-data", args.node_data)]
        side += [("--node-data", p) for p in node_data_paths(args.node_data, with_ref)[1:]]
    ref_model = args.ref if args.ref and not ref_is_npz else None
    _common.check_files(
        args,
        [(args.model, "the input model"), (ref_model, "the reference model")],
        reads=reads,
        writes=side,
    )
    # weights_on_disk: the weights stay in the file, where onnxruntime reads them (no
    # Python copy); a model written (-o) streams them into its own file.
    model = load(args.model, weights_on_disk=True)
    reference = args.ref
    if ref_model:
        # Loaded once, here, so its files are protected too. Its weights stay on disk
        # only beside the model's: the models built from both (the merged comparison,
        # a stripped model) read external data from one folder.
        same_folder = os.path.realpath(Path(args.ref).parent) == os.path.realpath(
            Path(args.model).parent
        )
        reference = load(args.ref, weights_on_disk=same_folder)
    _common.check_files(
        args,
        [(model, "the input model"), (reference if ref_model else None, "the reference model")],
        reads=reads,
        writes=side,
    )
    options = DebugOptions(
        taps=tuple(args.tap or (["all"] if not args.op else [])),
        ops=tuple(args.op),
        reference=reference,
        name_map=name_map,
        reference_optimization=args.ref_optimization,
        tolerance=tol,
        # --save streams the tapped tensors in chunks after the run (bounded memory);
        # taps inside If/Loop/Scan bodies only come from the one-run values path.
        keep_values=bool(args.save) and _holds_subgraphs(model),
        optimization=args.optimization,
        custom_op_libraries=tuple(args.custom_op_library),
        feed_options=feeds,
    )
    with ctx.status(f"debug {model.name}") as update:
        report = debug(model, options, progress=update)
        tapped = None
        if args.output and (report.tap_check is None or report.tap_check.passed):
            # The model -o writes is verified itself (its original outputs bit-identical on
            # the same feeds), not only the statistics model the report came from.
            update("verifying the tapped model for -o")
            tapped = tap(
                model,
                options.taps,
                ops=options.ops,
                feeds=report.feed_values,
                custom_op_libraries=options.custom_op_libraries,
            )
    from surgeon.outputs import transaction

    written = []
    with transaction():  # -o (and its weights), --save, --html, --node-data: all or none
        if tapped is not None and tapped.passed:
            written.append(str(_common.save_output(tapped.model, args)))
        if args.save and (report.tap_check is None or report.tap_check.passed):
            if options.keep_values:
                written.append(str(save_values(report, args.save)))
            else:
                from surgeon.debugging import saving
                from surgeon.debugging.saving import (
                    plan_chunks,
                    save_values_streamed,
                )
                from surgeon.npz import format_bytes

                chunks = plan_chunks(report)
                report.notes.append(
                    f"--save: the tapped tensors were fetched in {len(chunks)} run(s) of "
                    f"{model.name} (at most {format_bytes(saving.SAVE_CHUNK_BYTES)} each, beyond "
                    "one tensor), so memory holds one chunk at a time"
                )
                written.append(str(save_values_streamed(model, report, args.save, options, chunks)))
        if args.html:
            from surgeon.report.html import write_debug_html

            written.append(str(write_debug_html(report, args.html)))
        if args.node_data is not None:
            from surgeon.report.node_data import write_node_data

            written += [str(p) for p in write_node_data(report, model, args.node_data)]
    from surgeon.outcomes import DebugOutcome

    return ctx.finish(DebugOutcome(report, tapped, tuple(written), rows=args.rows))


def map_large_buffers() -> None:
    """Have the C allocator map every buffer above 128 KiB on its own and unmap it when
    freed, for the rest of this process (glibc only; elsewhere nothing changes).

    glibc raises that threshold each time it frees such a buffer, so the tensors of one
    onnxruntime run (the tap check's plain run) are later served from, and kept in, the
    heap: the statistics run then stacked its own peak on top of the first one's (244
    against 297 MiB peak on a YOLOv8n-size model). Setting it fixes it at glibc's
    initial value.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its own policy stays
        return
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


def _holds_subgraphs(model) -> bool:
    """True when a node holds a subgraph (If/Loop/Scan): body taps need the values path."""
    from surgeon.precision.pairing import holds_subgraph

    return any(holds_subgraph(n) for n in model.proto.graph.node)
