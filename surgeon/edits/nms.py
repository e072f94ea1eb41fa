"""Build an NMS (non-maximum suppression) graph from standard ONNX operators.

``build_nms`` returns a small Model that turns the raw head of a detector into
deployment outputs: NonMaxSuppression, TopK, Gather and friends only, so it runs on
onnxruntime and converts to other runtimes (no TensorRT plugin, no custom domain).
Merge it after a detector with :func:`surgeon.merge`.

Semantics (the tests hold a plain numpy reference to these rules):

* **Score threshold is strict**: a candidate is kept when ``score > score_threshold``
  (onnxruntime's NonMaxSuppression kernel and onnx's reference implementation do this).
* **IoU suppression is strict**: a box is suppressed when its IoU with an already
  selected box of the same class is *greater than* the IoU threshold; boxes whose IoU is
  exactly the threshold ("touching at the threshold") are both kept. IoU is computed in
  float32 on x1,y1,x2,y2 corners; boxes that do not overlap with positive area (touching
  edges, zero-area boxes) never suppress each other.
* **Ties**: within one class, equal scores are visited in order of lower box index.
  Across classes, the final per-image ranking sorts by score, descending, and breaks
  ties by lower class index, then lower box index (TopK's documented tie rule: lower
  position first, over candidates listed class by class). DETR heads rank equal scores
  by lower query index, then lower class index.
* **Labels**: by default every (box, class) pair above the threshold is a candidate, so
  one box can be detected under several classes (multi-label). ``best_class`` keeps one
  label per box, the class of its highest score (first on ties), then runs NMS per class
  (what ultralytics' own ``nms=True`` export does); ``agnostic`` also keeps the best
  class but suppresses across classes. A DETR head is never multi-label with either.
* ``max_det`` caps the detections per image (K); outputs are padded to K with zeros
  (``labels`` with -1 for mmdeploy) and ``num_dets`` counts the valid rows.
* Every image of a dynamic batch gets its own detections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import onnx

from surgeon.edits import Built
from surgeon.errors import UsageError, did_you_mean
from surgeon.model import Model

LAYOUTS = ("yolov8", "yolov5", "boxes-scores", "detr")
FORMATS = ("efficient", "ultralytics", "mmdeploy")
BOX_FORMATS = ("cxcywh", "xyxy")
DTYPES = ("float32", "float16", "float64")
MIN_OPSET = 13  # Slice/Unsqueeze/ReduceSum with tensor inputs, GatherND batch_dims

# Default input names per layout. Single-input layouts connect to a one-output detector
# without --map; two-input layouts connect by equal names (boxes, scores).
DEFAULT_INPUTS = {
    "yolov8": ("predictions",),
    "yolov5": ("predictions",),
    "boxes-scores": ("boxes", "scores"),
    "detr": ("boxes", "logits"),
}
DEFAULT_OUTPUTS = {
    "efficient": ("num_dets", "det_boxes", "det_scores", "det_classes"),
    "ultralytics": ("output0",),
    "mmdeploy": ("dets", "labels"),
}
DEFAULT_BOX_FORMAT = {
    "yolov8": "cxcywh",
    "yolov5": "cxcywh",
    "boxes-scores": "xyxy",
    "detr": "cxcywh",
}
LAYOUT_HELP = {
    "yolov8": "one input [B, 4+C, N]: cx, cy, w, h, then C class scores (YOLOv8/v11)",
    "yolov5": "one input [B, N, 5+C]: cx, cy, w, h, objectness, C class scores",
    "boxes-scores": "two inputs: boxes [B, N, 4] and scores [B, N, C] (SSD/RetinaNet)",
    "detr": "two inputs: boxes [B, Q, 4] (normalised cx,cy,w,h) and logits [B, Q, C], or "
    "one packed [B, Q, 4+C] (ultralytics' RT-DETR); sigmoid + top-k, no NMS (RT-DETR)",
}


@dataclass(frozen=True)
class NmsSpec:
    """Everything that defines an NMS graph (what ``build_nms`` was asked for)."""

    layout: str
    classes: int
    iou: float = 0.45
    score: float = 0.25
    max_det: int = 100
    agnostic: bool = False
    best_class: bool = False
    probabilities: bool = False
    box_format: str = "cxcywh"
    output_format: str = "efficient"
    dtype: str = "float32"
    opset: int = 17
    scale: tuple[float, float] | None = None
    num_boxes: int | None = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"] = list(self.scale) if self.scale else None
        d["input_names"] = list(self.input_names)
        d["output_names"] = list(self.output_names)
        return d


def _given_names(given, defaults: tuple[str, ...], what: str, kind: str, problems) -> tuple:
    """The names given in place of ``defaults``, or the defaults with a problem noted when
    their count differs."""
    given = tuple(given)
    if len(given) != len(defaults):
        problems.append(
            f"{what} has {len(defaults)} {kind}(s) ({', '.join(defaults)}); "
            f"got {len(given)} {kind} name(s)"
        )
        return defaults
    return given


def check_spec(
    layout: str,
    classes: int,
    *,
    iou: float = 0.45,
    score: float = 0.25,
    max_det: int = 100,
    agnostic: bool = False,
    best_class: bool = False,
    probabilities: bool = False,
    box_format: str | None = None,
    output_format: str = "efficient",
    dtype: str = "float32",
    opset: int = 17,
    scale: Sequence[float] | None = None,
    num_boxes: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Mapping[str, str] | Sequence[str] | None = None,
) -> NmsSpec:
    """Validate the parameters of :func:`build_nms`, collecting every problem at once.

    Raises:
        UsageError: One or more parameters are out of range or unknown.
    """
    problems = []

    def choice(what, value, allowed):
        if value not in allowed:
            hint = did_you_mean(str(value), allowed)
            problems.append(
                f"{what} `{value}` is not one of {', '.join(allowed)}"
                + (f"; {hint}" if hint else "")
            )

    choice("layout", layout, LAYOUTS)
    choice("format", output_format, FORMATS)
    choice("dtype", dtype, DTYPES)
    if box_format is not None:
        choice("box format", box_format, BOX_FORMATS)
    if probabilities and layout in LAYOUTS and layout != "detr":
        problems.append(
            f"probabilities (skip the sigmoid) applies to the detr layout only; layout {layout} "
            "takes its scores as they are"
        )
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        problems.append(f"classes must be a positive integer, got {classes!r}")
    if not isinstance(max_det, int) or isinstance(max_det, bool) or max_det < 1:
        problems.append(f"max_det must be a positive integer, got {max_det!r}")
    if not (isinstance(iou, (int, float)) and 0.0 <= float(iou) <= 1.0):
        # onnxruntime rejects an IoU threshold outside [0, 1] at run time.
        problems.append(f"iou threshold must be in [0, 1], got {iou!r}")
    if not isinstance(score, (int, float)) or math.isnan(float(score)):
        problems.append(f"score threshold must be a number, got {score!r}")
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not (MIN_OPSET <= opset <= max_opset):
        problems.append(f"opset must be between {MIN_OPSET} and {max_opset}, got {opset!r}")
    if num_boxes is not None and (not isinstance(num_boxes, int) or num_boxes < 1):
        problems.append(f"num_boxes must be a positive integer or None, got {num_boxes!r}")
    scale_t = None
    if scale is not None:
        try:
            scale_t = tuple(float(s) for s in scale)
        except (TypeError, ValueError):
            scale_t = ()
        if len(scale_t) != 2 or not all(math.isfinite(s) and s > 0 for s in scale_t):
            problems.append(f"scale must be two positive numbers (W, H), got {scale!r}")
            scale_t = None
    layout_ok = layout in LAYOUTS
    format_ok = output_format in FORMATS
    ins: tuple[str, ...] = DEFAULT_INPUTS[layout] if layout_ok else ()
    if layout == "detr" and input_names is not None and len(tuple(input_names)) == 1:
        ins = tuple(input_names)  # one packed [B, Q, 4+C] input (ultralytics' RT-DETR)
    elif input_names is not None and layout_ok:
        count = len(problems)
        ins = _given_names(input_names, ins, f"layout {layout}", "input", problems)
        if layout == "detr" and len(problems) > count:
            problems[-1] += ", or 1 for a packed [B, Q, 4+C] input"
    outs: tuple[str, ...] = DEFAULT_OUTPUTS[output_format] if format_ok else ()
    if output_names is not None and format_ok:
        if isinstance(output_names, Mapping):
            unknown = [k for k in output_names if k not in outs]
            for k in unknown:
                hint = did_you_mean(k, outs)
                problems.append(
                    f"format {output_format} has no output `{k}` to rename; its outputs: "
                    f"{', '.join(outs)}" + (f"; {hint}" if hint else "")
                )
            outs = tuple(output_names.get(o, o) for o in outs)
        else:
            outs = _given_names(output_names, outs, f"format {output_format}", "output", problems)
    names = list(ins) + list(outs)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"input and output names must be unique; repeated: {', '.join(dupes)}")
    if any(not n for n in names):
        problems.append("input and output names must not be empty")
    if problems:
        raise UsageError("cannot build the NMS graph", problems=problems)
    return NmsSpec(
        layout=layout,
        classes=classes,
        iou=float(iou),
        score=float(score),
        max_det=max_det,
        agnostic=bool(agnostic),
        best_class=bool(best_class),
        probabilities=bool(probabilities),
        box_format=box_format or DEFAULT_BOX_FORMAT[layout],
        output_format=output_format,
        dtype=dtype,
        opset=opset,
        scale=scale_t,
        num_boxes=num_boxes,
        input_names=ins,
        output_names=outs,
    )


def build_nms(
    layout: str,
    classes: int | None = None,
    *,
    iou: float = 0.45,
    score: float = 0.25,
    max_det: int = 100,
    agnostic: bool = False,
    best_class: bool = False,
    probabilities: bool = False,
    box_format: str | None = None,
    output_format: str = "efficient",
    dtype: str | None = None,
    opset: int | None = None,
    scale: Sequence[float] | None = None,
    num_boxes: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Mapping[str, str] | Sequence[str] | None = None,
    detector: Model | None = None,
    source: str | None = None,
) -> Built:
    """Build an NMS graph for a detector head, from standard ONNX operators only.

    Args:
        layout: The head's layout: ``yolov8`` (``[B, 4+C, N]``), ``yolov5``
            (``[B, N, 5+C]``, score = objectness x class score), ``boxes-scores``
            (``[B, N, 4]`` and ``[B, N, C]``) or ``detr`` (``[B, Q, 4]`` normalised boxes and
            ``[B, Q, C]`` logits: sigmoid, threshold and top-k instead of NMS).
        classes: Number of classes C (read from ``detector`` when None).
        iou: IoU threshold; a box is suppressed when its IoU with a kept box is greater.
        score: Score threshold; a candidate is kept when its score is greater.
        max_det: Detections per image (K); outputs are padded to K.
        agnostic: Class-agnostic NMS (one best class per box) instead of per-class NMS.
        best_class: One label per box, the class of its highest score, then NMS per
            class (ultralytics' ``nms=True`` export), instead of every class above the
            score threshold (multi-label). ``agnostic`` implies it; a DETR head then
            takes each query's best class.
        probabilities: The detr layout's class scores are already probabilities: no
            sigmoid (the second input is then probabilities, not logits).
        box_format: ``cxcywh`` or ``xyxy`` input boxes (default: ``xyxy`` for
            boxes-scores, ``cxcywh`` otherwise). Output boxes are always x1,y1,x2,y2.
        output_format: ``efficient`` (num_dets, det_boxes, det_scores, det_classes),
            ``ultralytics`` (one ``[B, K, 6]`` output) or ``mmdeploy`` (dets, labels).
        dtype: The input dtype (default: the detector's, else float32). NonMaxSuppression
            takes float32 only, so float16/float64 inputs are cast to float32 first;
            boxes and scores come out as float32.
        opset: Default-domain opset, 13 or later (default: the detector's when it is 13
            or later, else 17).
        scale: Multiply box x by W and y by H before NMS (e.g. normalised boxes to pixels).
        num_boxes: Fix N (Q) in the input shapes; symbolic when None.
        input_names: Names for the layout's inputs (default ``predictions``, or
            ``boxes``/``scores``, or ``boxes``/``logits``). One name for the detr layout:
            one packed ``[B, Q, 4+C]`` input (boxes, then class scores), as ultralytics
            exports RT-DETR.
        output_names: New names for the format's outputs: a full sequence, or a mapping
            from the default names.
        detector: The model the graph will follow; ``classes``, ``dtype`` and ``opset``
            default to what it says.
        source: The detector output that holds the class scores (default: the output
            named like the NMS input that takes them, else the detector's only output).

    Returns:
        A Built model (a Model with the spec it was built from) with a dynamic batch
        dim ``batch``, ready to merge after a detector.

    Raises:
        UsageError: A parameter is out of range or unknown (every problem listed), or
            ``classes`` is None and cannot be read from ``detector``.
    """
    if detector is not None:
        found = read_detector(detector, layout, source, input_names)
        classes = found["classes"] if classes is None else classes
        dtype = dtype or found["dtype"]
        opset = opset or found["opset"]
    if classes is None:
        where = f" from {detector.name}" if detector is not None else ""
        raise UsageError(
            f"the number of classes is needed: cannot read it{where}",
            hint="Pass classes=C (--classes C on the command line).",
        )
    spec = check_spec(
        layout,
        classes,
        iou=iou,
        score=score,
        max_det=max_det,
        agnostic=agnostic,
        best_class=best_class,
        probabilities=probabilities,
        box_format=box_format,
        output_format=output_format,
        dtype=dtype or "float32",
        opset=opset or 17,
        scale=scale,
        num_boxes=num_boxes,
        input_names=input_names,
        output_names=output_names,
    )
    from surgeon.edits.nms_graph import build_from_spec  # the graph, once the spec is checked

    return build_from_spec(spec)


def read_detector(
    detector: Model,
    layout: str,
    source: str | None = None,
    input_names: Sequence[str] | None = None,
) -> dict:
    """What an NMS graph after ``detector`` should assume: classes, dtype and opset.

    Returns:
        ``{"source": output name or None, "classes": int or None, "dtype": str or None,
        "opset": int}``; ``classes`` is None when the class dim is not static.

    Raises:
        UsageError: ``source`` is not an output of the detector.
    """
    outputs = {o.name: o for o in detector.outputs}
    if source is not None and source not in outputs:
        hint = did_you_mean(source, outputs)
        raise UsageError(
            f"`{source}` is not an output of {detector.name}" + (f"; {hint}" if hint else ""),
            hint=f"Its outputs: {', '.join(outputs)}.",
        )
    names = list(input_names) if input_names else list(DEFAULT_INPUTS.get(layout, ()))
    info = outputs.get(source) if source else None
    if info is None and names and names[-1] in outputs:
        info = outputs[names[-1]]
    packed = layout == "detr" and len(names) == 1
    if info is None and len(outputs) == 1 and (len(DEFAULT_INPUTS.get(layout, ())) == 1 or packed):
        (info,) = outputs.values()  # a one-output head feeding a one-input layout
    classes = None
    # Not read for the packed detr form: a [B, 4+C, N] YOLO head would pass for one,
    # so the class count is the caller's word there.
    if info is not None and info.shape is not None and len(info.shape) == 3 and not packed:
        axis, extra = class_axis(layout)
        dim = info.shape[axis]
        if isinstance(dim, int) and dim - extra >= 1:
            classes = dim - extra
    dtype = info.dtype if info is not None and info.dtype in DTYPES else None
    max_opset = onnx.defs.onnx_opset_version()
    # The detector's opset when the NMS ops allow it, so the merge converts nothing.
    opset = detector.opset if MIN_OPSET <= detector.opset <= max_opset else 17
    return {
        "source": info.name if info is not None else None,
        "classes": classes,
        "dtype": dtype,
        "opset": opset,
    }


def class_axis(layout: str) -> tuple[int, int]:
    """(axis, channels that are not class scores) of the first input's class dim."""
    return {"yolov8": (1, 4), "yolov5": (2, 5)}.get(layout, (2, 0))
