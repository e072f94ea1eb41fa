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
* ``max_det`` caps the detections per image (K); outputs are padded to K with zeros
  (``labels`` with -1 for mmdeploy) and ``num_dets`` counts the valid rows.
* Every image of a dynamic batch gets its own detections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    "detr": "two inputs: boxes [B, Q, 4] (normalised cx,cy,w,h) and logits [B, Q, C]; "
    "sigmoid + top-k, no NMS (RT-DETR)",
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


def check_spec(
    layout: str,
    classes: int,
    *,
    iou: float = 0.45,
    score: float = 0.25,
    max_det: int = 100,
    agnostic: bool = False,
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
    if input_names is not None and layout_ok:
        given = tuple(input_names)
        if len(given) != len(ins):
            problems.append(
                f"layout {layout} has {len(ins)} input(s) ({', '.join(ins)}); "
                f"got {len(given)} input name(s)"
            )
        else:
            ins = given
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
            given = tuple(output_names)
            if len(given) != len(outs):
                problems.append(
                    f"format {output_format} has {len(outs)} output(s) ({', '.join(outs)}); "
                    f"got {len(given)} output name(s)"
                )
            else:
                outs = given
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
) -> Model:
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
            ``boxes``/``scores``, or ``boxes``/``logits``).
        output_names: New names for the format's outputs: a full sequence, or a mapping
            from the default names.
        detector: The model the graph will follow; ``classes``, ``dtype`` and ``opset``
            default to what it says.
        source: The detector output that holds the class scores (default: the output
            named like the NMS input that takes them, else the detector's only output).

    Returns:
        A Model with a dynamic batch dim ``batch``, ready to merge after a detector.

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
        box_format=box_format,
        output_format=output_format,
        dtype=dtype or "float32",
        opset=opset or 17,
        scale=scale,
        num_boxes=num_boxes,
        input_names=input_names,
        output_names=output_names,
    )
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
    if info is None and len(outputs) == 1 and len(DEFAULT_INPUTS.get(layout, ())) == 1:
        (info,) = outputs.values()  # a one-output head feeding a one-input layout
    classes = None
    if info is not None and info.shape is not None and len(info.shape) == 3:
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


# ---------------------------------------------------------------------- graph building
@dataclass
class _Builder:
    """Appends nodes and constants with unique ``nms/`` names."""

    opset: int
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    used: set = field(default_factory=set)

    def name(self, base: str) -> str:
        name, i = f"nms/{base}", 1
        while name in self.used:
            name, i = f"nms/{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, base: str, value) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, outputs: int = 1, **attrs):
        outs = [self.name(base if outputs == 1 else f"{base}_{k}") for k in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=self.name(f"{base}/op"), **attrs)
        )
        return outs[0] if outputs == 1 else outs

    # Ops whose signature changed across the opsets we support.
    def reduce(self, op_type: str, x: str, axis: int, base: str, keepdims: int) -> str:
        if op_type == "ReduceSum" or self.opset >= 18:
            axes = self.const(f"{base}_axes", np.array([axis], np.int64))
            return self.op(op_type, [x, axes], base, keepdims=keepdims)
        return self.op(op_type, [x], base, axes=[axis], keepdims=keepdims)

    def slice(self, x: str, axis: int, start: int, end: int, base: str) -> str:
        return self.op(
            "Slice",
            [
                x,
                self.const(f"{base}_starts", np.array([start], np.int64)),
                self.const(f"{base}_ends", np.array([end], np.int64)),
                self.const(f"{base}_axes", np.array([axis], np.int64)),
            ],
            base,
        )

    def unsqueeze(self, x: str, axis: int, base: str) -> str:
        return self.op(
            "Unsqueeze", [x, self.const(f"{base}_axes", np.array([axis], np.int64))], base
        )


def _to_xyxy(b: _Builder, boxes: str, box_format: str) -> str:
    """[B, N, 4] boxes as x1, y1, x2, y2 (cx -/+ w * 0.5; halving is exact in float)."""
    if box_format == "xyxy":
        return boxes
    centre = b.slice(boxes, 2, 0, 2, "centre")
    size = b.slice(boxes, 2, 2, 4, "size")
    half = b.op("Mul", [size, b.const("half", np.array(0.5, np.float32))], "half_size")
    top_left = b.op("Sub", [centre, half], "top_left")
    bottom_right = b.op("Add", [centre, half], "bottom_right")
    return b.op("Concat", [top_left, bottom_right], "boxes_xyxy", axis=2)


def _select_nms(b: _Builder, spec: NmsSpec, boxes: str, scores_cn: str):
    """NonMaxSuppression, then the top K of each image by score.

    Returns (valid [B,K] bool, scores [B,K], boxes [B,K,4], classes [B,K] int64).
    """
    k = spec.max_det
    if spec.agnostic:
        nms_scores = b.reduce("ReduceMax", scores_cn, 1, "best_score", keepdims=1)  # [B,1,N]
        best_class = b.op("ArgMax", [scores_cn], "best_class", axis=1, keepdims=0)  # [B,N]
    else:
        nms_scores = scores_cn
    # IoU is symmetric in x and y, so x1,y1,x2,y2 boxes can go where the operator
    # documents y1,x1,y2,x2 (center_point_box=0 also accepts any corner order).
    # max_output_boxes_per_class counts per image and per class; K per class is enough,
    # since boxes past the K-th of one class can never rank in an image's top K.
    selected = b.op(
        "NonMaxSuppression",
        [
            boxes,
            nms_scores,
            b.const("max_per_class", np.array(k, np.int64)),
            b.const("iou_threshold", np.array(spec.iou, np.float32)),
            b.const("score_threshold", np.array(spec.score, np.float32)),
        ],
        "selected",
        center_point_box=0,
    )  # [M, 3]: image, class, box; images ascending, classes ascending, then by rank
    selected_scores = b.op("GatherND", [nms_scores, selected], "selected_scores")  # [M]
    # K padding rows (image -1, so they belong to no image) guarantee at least K
    # candidates, so TopK can take a static K even when M < K or M = 0.
    pad_rows = np.zeros((k, 3), np.int64)
    pad_rows[:, 0] = -1
    rows = b.op("Concat", [selected, b.const("pad_rows", pad_rows)], "rows", axis=0)
    rows_scores = b.op(
        "Concat",
        [selected_scores, b.const("pad_scores", np.full(k, -np.inf, np.float32))],
        "rows_scores",
        axis=0,
    )  # [M+K]
    # A dense [B, M+K] score table, -inf where the row belongs to another image.
    shape = b.op("Shape", [boxes], "boxes_shape")
    batch = b.op("Gather", [shape, b.const("zero", np.array(0, np.int64))], "batch", axis=0)
    images = b.op(
        "Range",
        [
            b.const("range_start", np.array(0, np.int64)),
            batch,
            b.const("one", np.array(1, np.int64)),
        ],
        "images",
    )  # [B]
    row_image = b.op(
        "Gather", [rows, b.const("image_col", np.array(0, np.int64))], "row_image", axis=1
    )
    mine = b.op(
        "Equal",
        [b.unsqueeze(row_image, 0, "row_image_2d"), b.unsqueeze(images, 1, "images_2d")],
        "mine",
    )  # [B, M+K]
    table = b.op(
        "Where",
        [
            mine,
            b.unsqueeze(rows_scores, 0, "rows_scores_2d"),
            b.const("minus_inf", np.array(-np.inf, np.float32)),
        ],
        "score_table",
    )
    # TopK breaks ties by lower position, i.e. lower class, then earlier in NMS order.
    top_scores, top = b.op(
        "TopK",
        [table, b.const("k", np.array([k], np.int64))],
        "top",
        outputs=2,
        axis=1,
        largest=1,
        sorted=1,
    )  # [B, K]
    valid = b.op("GatherElements", [mine, top], "valid", axis=1)  # [B, K] bool
    top_rows = b.op("Gather", [rows, top], "top_rows", axis=0)  # [B, K, 3]
    box_index = b.op(
        "Gather", [top_rows, b.const("box_col", np.array(2, np.int64))], "box_index", axis=2
    )  # [B, K]
    top_boxes = b.op(
        "GatherND", [boxes, b.unsqueeze(box_index, 2, "box_index_3d")], "top_boxes", batch_dims=1
    )  # [B, K, 4]
    if spec.agnostic:
        classes = b.op("GatherElements", [best_class, box_index], "top_classes", axis=1)
    else:
        classes = b.op(
            "Gather", [top_rows, b.const("class_col", np.array(1, np.int64))], "top_classes", axis=2
        )
    return valid, top_scores, top_boxes, classes


def _select_detr(b: _Builder, spec: NmsSpec, boxes: str, probs: str):
    """Top K (query, class) pairs by sigmoid score, no NMS (RT-DETR's post-processing).

    Returns (valid [B,K] bool, scores [B,K], boxes [B,K,4], classes [B,K] int64).
    """
    k = spec.max_det
    if spec.agnostic:
        flat = b.reduce("ReduceMax", probs, 2, "best_score", keepdims=0)  # [B, Q]
        best_class = b.op("ArgMax", [probs], "best_class", axis=2, keepdims=0)
    else:
        # Flat index = query * C + class: ties rank by lower query, then lower class.
        flat = b.op("Reshape", [probs, b.const("flat_shape", np.array([0, -1], np.int64))], "flat")
    shape = b.op("Shape", [flat], "flat_shape_value")
    batch = b.slice(shape, 0, 0, 1, "batch")  # [1]
    count = b.op("Gather", [shape, b.const("one", np.array(1, np.int64))], "candidates", axis=0)
    # K columns of -inf so that TopK can take a static K even when Q*C < K.
    pad_shape = b.op(
        "Concat", [batch, b.const("k_1d", np.array([k], np.int64))], "pad_shape", axis=0
    )
    pad = b.op(
        "Expand",
        [b.const("minus_inf", np.full((1, 1), -np.inf, np.float32)), pad_shape],
        "pad",
    )
    table = b.op("Concat", [flat, pad], "score_table", axis=1)
    top_scores, top = b.op(
        "TopK",
        [table, b.const("k", np.array([k], np.int64))],
        "top",
        outputs=2,
        axis=1,
        largest=1,
        sorted=1,
    )
    above = b.op(
        "Greater",
        [top_scores, b.const("score_threshold", np.array(spec.score, np.float32))],
        "above",
    )
    real = b.op("Less", [top, count], "real")
    valid = b.op("And", [above, real], "valid")
    zero = b.const("zero", np.array(0, np.int64))
    if spec.agnostic:
        query = b.op("Where", [valid, top, zero], "query")
        classes = b.op("GatherElements", [best_class, query], "top_classes", axis=1)
    else:
        c = b.const("classes", np.array(spec.classes, np.int64))
        query = b.op("Where", [valid, b.op("Div", [top, c], "query_raw"), zero], "query")
        classes = b.op("Mod", [top, c], "top_classes")
    top_boxes = b.op(
        "GatherND", [boxes, b.unsqueeze(query, 2, "query_3d")], "top_boxes", batch_dims=1
    )
    return valid, top_scores, top_boxes, classes


def build_from_spec(spec: NmsSpec) -> Model:
    """Build the graph for a checked :class:`NmsSpec` (see :func:`build_nms`)."""
    b = _Builder(spec.opset)
    b.used.update(spec.input_names)
    b.used.update(spec.output_names)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    c, n = spec.classes, spec.num_boxes or ("num_queries" if spec.layout == "detr" else "num_boxes")

    def as_float(name: str) -> str:
        # NonMaxSuppression (and our float32 constants) need float32.
        return (
            name
            if spec.dtype == "float32"
            else b.op("Cast", [name], "as_float32", to=TensorProto.FLOAT)
        )

    inputs = []
    if spec.layout == "yolov8":
        (pred_name,) = spec.input_names
        inputs.append(helper.make_tensor_value_info(pred_name, elem, ["batch", 4 + c, n]))
        pred = as_float(pred_name)
        boxes = b.op(
            "Transpose", [b.slice(pred, 1, 0, 4, "raw_boxes_t")], "raw_boxes", perm=[0, 2, 1]
        )
        scores_cn = b.slice(pred, 1, 4, 4 + c, "scores")  # [B, C, N]
    elif spec.layout == "yolov5":
        (pred_name,) = spec.input_names
        inputs.append(helper.make_tensor_value_info(pred_name, elem, ["batch", n, 5 + c]))
        pred = as_float(pred_name)
        boxes = b.slice(pred, 2, 0, 4, "raw_boxes")
        objectness = b.slice(pred, 2, 4, 5, "objectness")
        class_scores = b.slice(pred, 2, 5, 5 + c, "class_scores")
        scores_nc = b.op("Mul", [objectness, class_scores], "scores_nc")
        scores_cn = b.op("Transpose", [scores_nc], "scores", perm=[0, 2, 1])
    else:
        boxes_name, scores_name = spec.input_names
        inputs.append(helper.make_tensor_value_info(boxes_name, elem, ["batch", n, 4]))
        inputs.append(helper.make_tensor_value_info(scores_name, elem, ["batch", n, c]))
        boxes = as_float(boxes_name)
        scores_nc = as_float(scores_name)
        if spec.layout == "boxes-scores":
            scores_cn = b.op("Transpose", [scores_nc], "scores", perm=[0, 2, 1])
    xyxy = _to_xyxy(b, boxes, spec.box_format)
    if spec.scale:
        w, h = spec.scale
        xyxy = b.op(
            "Mul", [xyxy, b.const("scale", np.array([w, h, w, h], np.float32))], "boxes_scaled"
        )
    if spec.layout == "detr":
        probs = b.op("Sigmoid", [scores_nc], "probabilities")
        valid, scores, boxes_k, classes = _select_detr(b, spec, xyxy, probs)
    else:
        valid, scores, boxes_k, classes = _select_nms(b, spec, xyxy, scores_cn)

    # Zero-pad past the valid rows (every image independently).
    k = spec.max_det
    zero_f = b.const("zero_f", np.array(0.0, np.float32))
    det_boxes = b.op("Where", [b.unsqueeze(valid, 2, "valid_3d"), boxes_k, zero_f], "det_boxes")
    det_scores = b.op("Where", [valid, scores, zero_f], "det_scores")
    outputs = []
    names = spec.output_names

    def emit(tensor: str, name: str, elem_type: int, shape: list) -> None:
        b.nodes.append(helper.make_node("Identity", [tensor], [name], name=b.name(f"{name}/out")))
        outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    if spec.output_format == "efficient":
        counts = b.op("Cast", [valid], "valid_int", to=TensorProto.INT32)
        num = b.reduce("ReduceSum", counts, 1, "num_dets", keepdims=1)
        cls = b.op("Where", [valid, classes, b.const("zero_i", np.array(0, np.int64))], "classes")
        cls32 = b.op("Cast", [cls], "classes_int32", to=TensorProto.INT32)
        emit(num, names[0], TensorProto.INT32, ["batch", 1])
        emit(det_boxes, names[1], TensorProto.FLOAT, ["batch", k, 4])
        emit(det_scores, names[2], TensorProto.FLOAT, ["batch", k])
        emit(cls32, names[3], TensorProto.INT32, ["batch", k])
    elif spec.output_format == "ultralytics":
        cls_f = b.op("Cast", [classes], "classes_float", to=TensorProto.FLOAT)
        cls_f = b.op("Where", [valid, cls_f, zero_f], "classes_padded")
        out = b.op(
            "Concat",
            [
                det_boxes,
                b.unsqueeze(det_scores, 2, "scores_3d"),
                b.unsqueeze(cls_f, 2, "classes_3d"),
            ],
            "detections",
            axis=2,
        )
        emit(out, names[0], TensorProto.FLOAT, ["batch", k, 6])
    else:  # mmdeploy
        dets = b.op("Concat", [det_boxes, b.unsqueeze(det_scores, 2, "scores_3d")], "dets", axis=2)
        labels = b.op(
            "Where", [valid, classes, b.const("minus_one", np.array(-1, np.int64))], "labels"
        )
        emit(dets, names[0], TensorProto.FLOAT, ["batch", k, 5])
        emit(labels, names[1], TensorProto.INT64, ["batch", k])

    graph = helper.make_graph(b.nodes, "nms", inputs, outputs, b.initializers)
    graph.doc_string = (
        f"NMS for a {spec.layout} head ({spec.classes} classes), {spec.output_format} outputs, "
        "built by surgeon from standard ONNX operators"
    )
    opsets = [helper.make_opsetid("", spec.opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="surgeon")
    # The lowest IR version that carries this opset, so older runtimes load it.
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto)
    return Model(proto).with_provenance("nms", spec.to_dict())


def class_axis(layout: str) -> tuple[int, int]:
    """(axis, channels that are not class scores) of the first input's class dim."""
    return {"yolov8": (1, 4), "yolov5": (2, 5)}.get(layout, (2, 0))
