"""`surgeon nms`: build an NMS graph from standard ONNX operators."""

from __future__ import annotations

HELP = "build an NMS graph (standard ONNX ops) for a detector head, to merge after it"
DESCRIPTION = (
    HELP + "\n\nlayouts:\n"
    "  yolov8        one input [B, 4+C, N]: cx, cy, w, h, then C class scores\n"
    "  yolov5        one input [B, N, 5+C]: cx, cy, w, h, objectness, C class scores\n"
    "  boxes-scores  boxes [B, N, 4] and scores [B, N, C] (SSD/RetinaNet)\n"
    "  detr          boxes [B, Q, 4] normalised cx,cy,w,h and logits [B, Q, C] (no NMS: top-k;\n"
    "                --probabilities when the head already applies the sigmoid)\n"
    "formats:\n"
    "  efficient     num_dets [B,1] int32, det_boxes [B,K,4], det_scores [B,K], det_classes [B,K] int32\n"
    "  ultralytics   output0 [B,K,6]: x1, y1, x2, y2, score, class\n"
    "  mmdeploy      dets [B,K,5]: x1, y1, x2, y2, score; labels [B,K] int64 (-1 padding)\n\n"
    "Scores must be greater than --score to count; a box is suppressed when its IoU with a\n"
    "kept box of its class is greater than --iou. Rows past num_dets are zero. A box is\n"
    "detected under every class above --score unless --best-class or --agnostic.\n\n"
    "JSON keys: schema, output, params, inputs, outputs, nodes, op_types, opset.\n\n"
    "example:\n  surgeon nms --layout yolov8 --classes 80 --max-det 100 -o nms.onnx\n"
    "  surgeon merge det.onnx nms.onnx -o det_nms.onnx"
)


def add_nms_arguments(parser, *, required: bool) -> None:
    """The NMS parameters, shared with `surgeon merge --nms`."""
    group = parser.add_argument_group("NMS")
    if required:
        group.add_argument(
            "--layout",
            required=True,
            metavar="LAYOUT",
            help="the detector head: yolov8, yolov5, boxes-scores or detr",
        )
    group.add_argument(
        "--classes",
        type=int,
        required=required,
        metavar="C",
        help="number of classes" + ("" if required else " (default: read from the detector)"),
    )
    group.add_argument(
        "--iou", type=float, default=0.45, help="IoU threshold: suppress above it (default 0.45)"
    )
    group.add_argument(
        "--score", type=float, default=0.25, help="score threshold: keep above it (default 0.25)"
    )
    group.add_argument(
        "--max-det", type=int, default=100, metavar="K", help="detections per image (default 100)"
    )
    group.add_argument(
        "--agnostic", action="store_true", help="class-agnostic NMS (default: per class)"
    )
    group.add_argument(
        "--best-class",
        action="store_true",
        help="one label per box (its best class), then per-class NMS, as ultralytics' "
        "nms=True export (default: every class above --score)",
    )
    group.add_argument(
        "--probabilities",
        action="store_true",
        help="detr layout: the class scores are already probabilities (no sigmoid)",
    )
    group.add_argument(
        "--box-format",
        choices=["cxcywh", "xyxy"],
        default=None,
        help="input boxes (default xyxy for boxes-scores, cxcywh otherwise)",
    )
    group.add_argument(
        "--format",
        dest="output_format",
        default="efficient",
        metavar="FORMAT",
        help="output convention: efficient, ultralytics or mmdeploy (default efficient)",
    )
    group.add_argument(
        "--scale",
        metavar="W,H",
        help="multiply box x by W and y by H before NMS (normalised boxes to pixels)",
    )
    group.add_argument(
        "--no-topk",
        action="store_true",
        help="for targets without TopK: select by rank counting instead (`surgeon rewrite "
        "--rule topk`), verified bit-identical against the TopK graph. It compares every pair "
        "of candidates: B x L x L memory at about 16 bytes a pair, L = boxes NMS kept + K "
        "(detr: Q x C + K), e.g. 140 MB for L = 3,000",
    )


def add_arguments(parser) -> None:
    add_nms_arguments(parser, required=True)
    group = parser.add_argument_group("graph")
    group.add_argument(
        "--dtype",
        default="float32",
        help="input dtype: float32, float16 or float64; others are cast to float32 (default float32)",
    )
    group.add_argument(
        "--opset", type=int, default=17, help="default-domain opset (default 17, minimum 13)"
    )
    group.add_argument(
        "--num-boxes", type=int, default=None, metavar="N", help="fix N in the input shapes"
    )
    from surgeon.commands import _common

    # No --inplace: nms reads no model, so there is no input -o could overwrite.
    _common.add_output_arguments(parser, required=True, what="the graph", inplace_help=None)


def parse_scale(text):
    """``640,480`` -> (640.0, 480.0); None passes through."""
    if text is None:
        return None
    from surgeon.errors import UsageError

    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise UsageError(f"cannot read `--scale {text}`: expected W,H such as 640,640")
    return values


def nms_kwargs(args) -> dict:
    """build_nms keyword arguments from the shared NMS options."""
    return {
        "iou": args.iou,
        "score": args.score,
        "max_det": args.max_det,
        "agnostic": args.agnostic,
        "best_class": args.best_class,
        "probabilities": args.probabilities,
        "box_format": args.box_format,
        "output_format": args.output_format,
        "scale": parse_scale(args.scale),
    }


def run(args, ctx) -> int:
    from surgeon.commands import _common
    from surgeon.edits.nms import build_nms

    _common.check_files(args, [])
    model = build_nms(
        args.layout,
        args.classes,
        dtype=args.dtype,
        opset=args.opset,
        num_boxes=args.num_boxes,
        **nms_kwargs(args),
    )
    params = model.provenance[-1]["params"]
    if args.no_topk:
        model, params = without_topk(model, params)
    _common.save_output(model, args)
    from surgeon.outcomes import NmsOutcome

    return ctx.finish(NmsOutcome(model, params, args.output))


def without_topk(model, params: dict):
    """The NMS graph with its TopK rewritten (rule ``topk``), checked bit-identical to it.

    Raises:
        VerificationFailed: The rewritten graph's outputs differ (exit 1, nothing written).
    """
    from surgeon.compare import EXACT
    from surgeon.errors import VerificationFailed
    from surgeon.rewrites.apply import rewrite

    edited = rewrite(model, ["topk"], tolerance=EXACT)
    if not edited.passed:
        raise VerificationFailed(
            f"--no-topk: the TopK-free graph differs from the TopK one: {edited.report.summary()}",
            report=edited.report,
        )
    return edited.model, {**params, "no_topk": True, "no_topk_check": edited.report.summary()}
