"""The NMS graph itself: nodes and constants for a checked :class:`NmsSpec`.

:func:`build_from_spec` writes the graph :func:`surgeon.edits.nms.build_nms` promises
(its module docstring states the semantics): thresholds, per-class NonMaxSuppression
or DETR's top-k, then the output format asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgeon.edits import Built

if TYPE_CHECKING:  # nms.build_nms calls into this module with a checked spec
    from surgeon.edits.nms import NmsSpec


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


def _append_zero_row(b: _Builder, x: str, tail: Sequence[int], dtype, base: str) -> str:
    """``x`` [B, N, *tail] with one zero row appended on axis 1: [B, N+1, *tail].

    Every index the graph gathers with is then valid, even with zero candidate boxes
    (N = 0): rows past num_dets point at box 0, which is this row when there is no other.
    """
    shape = b.op("Shape", [x], f"{base}_shape")
    pad_shape = b.op(
        "Concat",
        [
            b.slice(shape, 0, 0, 1, f"{base}_batch"),
            b.const(f"{base}_tail", np.array([1, *tail], np.int64)),
        ],
        f"{base}_pad_shape",
        axis=0,
    )
    zero = numpy_helper.from_array(np.zeros(1, dtype), "")
    pad = b.op("ConstantOfShape", [pad_shape], f"{base}_pad", value=zero)
    return b.op("Concat", [x, pad], f"{base}_padded", axis=1)


def _top_k(b: _Builder, table: str, k: int) -> tuple[str, str]:
    """The ``k`` best scores of each row of ``table`` [B, M] and their columns, best first
    (TopK breaks ties by the lower column)."""
    return b.op(
        "TopK",
        [table, b.const("k", np.array([k], np.int64))],
        "top",
        outputs=2,
        axis=1,
        largest=1,
        sorted=1,
    )


def _select_nms(b: _Builder, spec: NmsSpec, boxes: str, scores_cn: str):
    """NonMaxSuppression, then the top K of each image by score.

    Returns (valid [B,K] bool, scores [B,K], boxes [B,K,4], classes [B,K] int64).
    """
    k = spec.max_det
    if spec.agnostic:
        nms_scores = b.reduce("ReduceMax", scores_cn, 1, "best_score", keepdims=1)  # [B,1,N]
        best_class = b.op("ArgMax", [scores_cn], "best_class", axis=1, keepdims=0)  # [B,N]
    elif spec.best_class:
        # One label per box: every class but its best one (ArgMax: first maximum) gets
        # -inf, which no score threshold lets through; NMS then runs per class.
        best = b.op("ArgMax", [scores_cn], "best_class", axis=1, keepdims=1)  # [B,1,N]
        ids = b.const("class_ids", np.arange(spec.classes, dtype=np.int64).reshape(1, -1, 1))
        nms_scores = b.op(
            "Where",
            [
                b.op("Equal", [ids, best], "is_best_class"),
                scores_cn,
                b.const("not_best", np.array(-np.inf, np.float32)),
            ],
            "best_class_scores",
        )  # [B,C,N]
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
    top_scores, top = _top_k(b, table, k)  # [B, K]
    valid = b.op("GatherElements", [mine, top], "valid", axis=1)  # [B, K] bool
    top_rows = b.op("Gather", [rows, top], "top_rows", axis=0)  # [B, K, 3]
    box_index = b.op(
        "Gather", [top_rows, b.const("box_col", np.array(2, np.int64))], "box_index", axis=2
    )  # [B, K]
    padded_boxes = _append_zero_row(b, boxes, [4], np.float32, "boxes")
    top_boxes = b.op(
        "GatherND",
        [padded_boxes, b.unsqueeze(box_index, 2, "box_index_3d")],
        "top_boxes",
        batch_dims=1,
    )  # [B, K, 4]
    if spec.agnostic:
        padded_class = _append_zero_row(b, best_class, [], np.int64, "best_class")
        classes = b.op("GatherElements", [padded_class, box_index], "top_classes", axis=1)
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
    one_label = spec.agnostic or spec.best_class  # without NMS, the two are the same
    if one_label:
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
    top_scores, top = _top_k(b, table, k)
    above = b.op(
        "Greater",
        [top_scores, b.const("score_threshold", np.array(spec.score, np.float32))],
        "above",
    )
    real = b.op("Less", [top, count], "real")
    valid = b.op("And", [above, real], "valid")
    zero = b.const("zero", np.array(0, np.int64))
    if one_label:
        query = b.op("Where", [valid, top, zero], "query")
        padded_class = _append_zero_row(b, best_class, [], np.int64, "best_class")
        classes = b.op("GatherElements", [padded_class, query], "top_classes", axis=1)
    else:
        c = b.const("classes", np.array(spec.classes, np.int64))
        query = b.op("Where", [valid, b.op("Div", [top, c], "query_raw"), zero], "query")
        classes = b.op("Mod", [top, c], "top_classes")
    padded_boxes = _append_zero_row(b, boxes, [4], np.float32, "boxes")
    top_boxes = b.op(
        "GatherND", [padded_boxes, b.unsqueeze(query, 2, "query_3d")], "top_boxes", batch_dims=1
    )
    return valid, top_scores, top_boxes, classes


def build_from_spec(spec: NmsSpec) -> Built:
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
    elif len(spec.input_names) == 1:  # detr, packed [B, Q, 4+C] (ultralytics' RT-DETR)
        (pred_name,) = spec.input_names
        inputs.append(helper.make_tensor_value_info(pred_name, elem, ["batch", n, 4 + c]))
        pred = as_float(pred_name)
        boxes = b.slice(pred, 2, 0, 4, "raw_boxes")
        scores_nc = b.slice(pred, 2, 4, 4 + c, "class_scores")
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
        probs = scores_nc if spec.probabilities else b.op("Sigmoid", [scores_nc], "probabilities")
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
    # Built, not Edited: there is no original to verify it against (its tests hold a
    # numpy reference to its rules, and a merge proves it in place).
    return Built(proto, spec.to_dict()).add_provenance("nms", spec.to_dict())
