"""The NMS graph against a plain numpy NMS written here, on random inputs and hard cases.

The reference follows the ONNX NonMaxSuppression definition as onnxruntime implements it
(float32 IoU on corners, keep when ``score > score_threshold``, suppress when
``IoU > iou_threshold``, equal scores visited by lower box index), then ranks each
image's detections by score with ties broken by lower class, then lower box index.
It shares no code with ``surgeon.edits.nms``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from surgeon.edits.nms import build_nms
from surgeon.errors import UsageError
from surgeon.loading import load
from surgeon.runner import run

F32 = np.float32


# ---------------------------------------------------------------------- the reference
def iou_f32(a, b) -> np.float32:
    """IoU of two x1,y1,x2,y2 boxes in float32; 0 unless they overlap with positive area."""
    ax1, ax2 = min(a[0], a[2]), max(a[0], a[2])
    ay1, ay2 = min(a[1], a[3]), max(a[1], a[3])
    bx1, bx2 = min(b[0], b[2]), max(b[0], b[2])
    by1, by2 = min(b[1], b[3]), max(b[1], b[3])
    iw = F32(min(ax2, bx2)) - F32(max(ax1, bx1))
    ih = F32(min(ay2, by2)) - F32(max(ay1, by1))
    if iw <= 0 or ih <= 0:
        return F32(0)
    inter = F32(iw * ih)
    union = F32(F32((ax2 - ax1) * (ay2 - ay1)) + F32((bx2 - bx1) * (by2 - by1))) - inter
    return F32(inter / union)


def greedy_nms(boxes, scores, iou_thr, score_thr) -> list[int]:
    """Indices kept by greedy NMS for one image and one class, in visiting order."""
    candidates = [i for i in range(len(scores)) if scores[i] > F32(score_thr)]
    candidates.sort(key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    for i in candidates:
        if all(not (iou_f32(boxes[i], boxes[j]) > F32(iou_thr)) for j in keep):
            keep.append(i)
    return keep


def to_xyxy(boxes, box_format):
    boxes = boxes.astype(F32)
    if box_format == "xyxy":
        return boxes
    half = boxes[..., 2:4] * F32(0.5)
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def split_head(layout, inputs, classes):
    """(boxes [B,N,4], scores [B,N,C]) in float32 from a layout's raw inputs."""
    if layout == "yolov8":
        pred = inputs[0].astype(F32).transpose(0, 2, 1)
        return pred[..., :4], pred[..., 4 : 4 + classes]
    if layout == "yolov5":
        pred = inputs[0].astype(F32)
        return pred[..., :4], pred[..., 4:5] * pred[..., 5 : 5 + classes]
    return inputs[0].astype(F32), inputs[1].astype(F32)


def reference_nms(
    layout,
    inputs,
    classes,
    *,
    iou=0.45,
    score=0.25,
    max_det=100,
    agnostic=False,
    best_class=False,
    probabilities=False,
    box_format=None,
    scale=None,
):
    """Per image: a list of (score, class, box x1y1x2y2) sorted as the graph promises."""
    box_format = box_format or ("xyxy" if layout == "boxes-scores" else "cxcywh")
    raw_boxes, scores = split_head(layout, inputs, classes)
    boxes = to_xyxy(raw_boxes, box_format)
    if scale is not None:
        boxes = boxes * np.array([scale[0], scale[1]] * 2, F32)
    images = []
    for b in range(boxes.shape[0]):
        found = []  # (score, class, box index)
        if layout == "detr":
            if probabilities:
                probs = scores[b]
            else:
                probs = (F32(1) / (F32(1) + np.exp(-scores[b]))).astype(F32)
            if agnostic or best_class:
                best = probs.max(axis=1)
                cls = probs.argmax(axis=1)  # first maximum
                found = [
                    (best[q], int(cls[q]), q) for q in range(len(best)) if best[q] > F32(score)
                ]
            else:
                found = [
                    (probs[q, c], c, q)
                    for q in range(probs.shape[0])
                    for c in range(classes)
                    if probs[q, c] > F32(score)
                ]
            found.sort(key=lambda t: (-float(t[0]), t[2], t[1]))  # query, then class
        elif agnostic:
            best = scores[b].max(axis=1)
            cls = scores[b].argmax(axis=1)
            keep = greedy_nms(boxes[b], best, iou, score)
            found = [(best[i], int(cls[i]), i) for i in keep]
            found.sort(key=lambda t: (-float(t[0]), t[2]))
        elif best_class:
            # One label per box (its first maximum), then NMS among the boxes of each label.
            best = scores[b].max(axis=1)
            cls = scores[b].argmax(axis=1)
            for c in range(classes):
                members = np.flatnonzero(cls == c)
                keep = greedy_nms(boxes[b][members], best[members], iou, score)
                found += [(best[members[j]], c, int(members[j])) for j in keep]
            found.sort(key=lambda t: (-float(t[0]), t[1], t[2]))
        else:
            for c in range(classes):
                keep = greedy_nms(boxes[b], scores[b][:, c], iou, score)
                found += [(scores[b][i, c], c, i) for i in keep]
            found.sort(key=lambda t: (-float(t[0]), t[1], t[2]))
        images.append([(F32(s), c, boxes[b][i]) for s, c, i in found[:max_det]])
    return images


def expected_outputs(images, output_format, max_det):
    """The reference detections laid out as the output format's padded arrays."""
    batch = len(images)
    num = np.zeros((batch, 1), np.int32)
    boxes = np.zeros((batch, max_det, 4), F32)
    scores = np.zeros((batch, max_det), F32)
    classes = np.zeros((batch, max_det), np.int64)
    valid = np.zeros((batch, max_det), bool)
    for b, dets in enumerate(images):
        num[b, 0] = len(dets)
        for k, (s, c, box) in enumerate(dets):
            boxes[b, k], scores[b, k], classes[b, k], valid[b, k] = box, s, c, True
    if output_format == "efficient":
        return {
            "num_dets": num,
            "det_boxes": boxes,
            "det_scores": scores,
            "det_classes": classes.astype(np.int32),
        }
    if output_format == "ultralytics":
        return {
            "output0": np.concatenate(
                [boxes, scores[..., None], classes[..., None].astype(F32)], axis=2
            )
        }
    return {
        "dets": np.concatenate([boxes, scores[..., None]], axis=2),
        "labels": np.where(valid, classes, -1),
    }


def random_head(layout, batch, n, classes, rng, dtype=np.float32):
    """Plausible raw head values: pixel boxes on a 64x64 image, scores in [0, 1)."""
    centres = rng.uniform(0, 64, (batch, n, 2))
    sizes = rng.uniform(2, 24, (batch, n, 2))
    boxes = np.concatenate([centres, sizes], axis=2)
    scores = rng.random((batch, n, classes))
    if layout == "yolov8":
        return [np.concatenate([boxes, scores], axis=2).transpose(0, 2, 1).astype(dtype)]
    if layout == "yolov5":
        objectness = rng.random((batch, n, 1))
        return [np.concatenate([boxes, objectness, scores], axis=2).astype(dtype)]
    if layout == "boxes-scores":
        xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=2)
        return [xyxy.astype(dtype), scores.astype(dtype)]
    norm = np.concatenate([rng.random((batch, n, 2)), rng.uniform(0.05, 0.4, (batch, n, 2))], 2)
    return [norm.astype(dtype), rng.normal(-1, 1.5, (batch, n, classes)).astype(dtype)]


def run_graph(model, inputs):
    return run(model, dict(zip(model.input_names, inputs, strict=True)))


def check_against_reference(model, layout, inputs, classes, *, exact=True, **params):
    output_format = params.pop("output_format", "efficient")
    got = run_graph(model, inputs)
    images = reference_nms(layout, inputs, classes, **params)
    want = expected_outputs(images, output_format, params.get("max_det", 100))
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        if exact or value.dtype.kind in "iu":
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    return got, images


# ---------------------------------------------------------------------- random inputs
@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "boxes-scores", "detr"])
@pytest.mark.parametrize("agnostic", [False, True])
def test_random_inputs_match_reference(layout, agnostic):
    rng = np.random.default_rng(7)
    classes, max_det = 4, 12
    model = build_nms(layout, classes, iou=0.4, score=0.3, max_det=max_det, agnostic=agnostic)
    for batch, n in ((1, 40), (3, 60)):
        inputs = random_head(layout, batch, n, classes, rng)
        # detr: onnxruntime's Sigmoid and numpy's may differ in the last bit.
        check_against_reference(
            model,
            layout,
            inputs,
            classes,
            exact=layout != "detr",
            iou=0.4,
            score=0.3,
            max_det=max_det,
            agnostic=agnostic,
        )


@pytest.mark.parametrize("output_format", ["efficient", "ultralytics", "mmdeploy"])
def test_output_formats(output_format):
    rng = np.random.default_rng(11)
    model = build_nms("yolov8", 3, score=0.7, max_det=40, output_format=output_format)
    inputs = random_head("yolov8", 2, 30, 3, rng)
    got, images = check_against_reference(
        model, "yolov8", inputs, 3, score=0.7, max_det=40, output_format=output_format
    )
    counts = [len(d) for d in images]
    assert 0 < min(counts) and max(counts) < 40  # padding is exercised
    if output_format == "mmdeploy":
        assert (got["labels"][0, counts[0] :] == -1).all()


def test_declared_io_types_and_dynamic_batch():
    model = build_nms("yolov8", 80, max_det=100)
    assert model.inputs[0].shape == ("batch", 84, "num_boxes")
    described = {o.name: (o.dtype, o.shape) for o in model.outputs}
    assert described == {
        "num_dets": ("int32", ("batch", 1)),
        "det_boxes": ("float32", ("batch", 100, 4)),
        "det_scores": ("float32", ("batch", 100)),
        "det_classes": ("int32", ("batch", 100)),
    }
    assert {n.op_type for n in model.proto.graph.node} >= {"NonMaxSuppression", "TopK"}
    assert all(n.domain == "" for n in model.proto.graph.node)  # standard operators only
    assert model.provenance[-1]["edit"] == "nms"


def test_float16_head_gets_a_cast_and_float32_outputs():
    rng = np.random.default_rng(3)
    model = build_nms("yolov8", 3, dtype="float16", max_det=10)
    assert model.inputs[0].dtype == "float16"
    assert model.proto.graph.node[0].op_type == "Cast"
    inputs = random_head("yolov8", 2, 30, 3, rng, dtype=np.float16)
    got, _ = check_against_reference(model, "yolov8", inputs, 3, max_det=10)
    assert got["det_boxes"].dtype == np.float32


def test_scale_and_xyxy_input():
    rng = np.random.default_rng(5)
    model = build_nms("detr", 5, box_format="xyxy", scale=(640, 480), max_det=7)
    inputs = random_head("detr", 2, 30, 5, rng)
    check_against_reference(
        model,
        "detr",
        inputs,
        5,
        exact=False,
        box_format="xyxy",
        scale=(640, 480),
        max_det=7,
    )


# ---------------------------------------------------------------------- hard cases
def boxes_scores_inputs(boxes, scores):
    """One image of xyxy boxes [N,4] and scores [N,C] as boxes-scores inputs."""
    return [np.asarray(boxes, F32)[None], np.asarray(scores, F32)[None]]


def test_score_ties_rank_by_class_then_box():
    boxes = [[0, 0, 1, 1], [10, 0, 11, 1], [20, 0, 21, 1], [30, 0, 31, 1]]
    scores = [[0.5, 0.5], [0.5, 0.9], [0.5, 0.5], [0.9, 0.5]]
    model = build_nms("boxes-scores", 2, max_det=10)
    got, images = check_against_reference(
        model, "boxes-scores", boxes_scores_inputs(boxes, scores), 2, max_det=10
    )
    order = [(c, int(box[0])) for _, c, box in images[0]]
    # 0.9 ties first (class 0 box 3, then class 1 box 1); then 0.5 by class, then box.
    assert order == [(0, 30), (1, 10), (0, 0), (0, 10), (0, 20), (1, 0), (1, 20), (1, 30)]
    assert got["det_classes"][0, :8].tolist() == [c for c, _ in order]


def test_identical_boxes_keep_the_lower_index_on_equal_scores():
    boxes = [[0, 0, 4, 4]] * 4
    scores = [[0.6], [0.8], [0.8], [0.3]]
    model = build_nms("boxes-scores", 1, max_det=5)
    got, images = check_against_reference(
        model, "boxes-scores", boxes_scores_inputs(boxes, scores), 1, max_det=5
    )
    assert got["num_dets"].tolist() == [[1]]
    assert got["det_scores"][0, 0] == F32(0.8)


def test_zero_area_boxes_never_suppress():
    boxes = [[5, 5, 5, 9], [5, 5, 5, 9], [1, 1, 1, 1], [0, 0, 4, 4]]
    scores = [[0.9], [0.8], [0.7], [0.6]]
    model = build_nms("boxes-scores", 1, iou=0.0, max_det=5)
    got, _ = check_against_reference(
        model, "boxes-scores", boxes_scores_inputs(boxes, scores), 1, iou=0.0, max_det=5
    )
    assert got["num_dets"].tolist() == [[4]]


def test_iou_exactly_at_threshold_keeps_both():
    # IoU([0,0,4,1], [0,0,2,1]) = 2 / 4 = 0.5 exactly; edge-touching boxes have IoU 0.
    boxes = [[0, 0, 4, 1], [0, 0, 2, 1], [4, 0, 5, 1]]
    scores = [[0.9], [0.8], [0.7]]
    inputs = boxes_scores_inputs(boxes, scores)
    at = build_nms("boxes-scores", 1, iou=0.5, max_det=5)
    got, _ = check_against_reference(at, "boxes-scores", inputs, 1, iou=0.5, max_det=5)
    assert got["num_dets"].tolist() == [[3]]  # not suppressed: IoU is not > 0.5
    below = build_nms("boxes-scores", 1, iou=0.49, max_det=5)
    got, _ = check_against_reference(below, "boxes-scores", inputs, 1, iou=0.49, max_det=5)
    assert got["num_dets"].tolist() == [[2]]
    assert got["det_scores"][0, :2].tolist() == [F32(0.9), F32(0.7)]
    touching = build_nms("boxes-scores", 1, iou=0.0, max_det=5)
    got, _ = check_against_reference(touching, "boxes-scores", inputs, 1, iou=0.0, max_det=5)
    assert got["num_dets"].tolist() == [[2]]  # box 1 overlaps box 0; box 2 only touches it


@pytest.mark.parametrize("layout", ["yolov8", "detr"])
def test_all_scores_under_threshold_gives_zero_detections(layout):
    rng = np.random.default_rng(2)
    inputs = random_head(layout, 2, 16, 3, rng)
    if layout == "yolov8":
        inputs[0][:, 4:, :] = rng.uniform(0, 0.25, (2, 3, 16)).astype(F32)
        inputs[0][0, 4, 0] = F32(0.25)  # equal to the threshold: still out (strict)
    else:
        inputs[1][:] = -5.0  # sigmoid(-5) = 0.0067
    model = build_nms(layout, 3, score=0.25, max_det=8)
    got, _ = check_against_reference(model, layout, inputs, 3, exact=False, score=0.25, max_det=8)
    assert got["num_dets"].tolist() == [[0], [0]]
    assert not got["det_boxes"].any() and not got["det_scores"].any()


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "boxes-scores", "detr"])
@pytest.mark.parametrize("output_format", ["efficient", "ultralytics", "mmdeploy"])
@pytest.mark.parametrize("agnostic", [False, True])
def test_zero_candidate_boxes(layout, output_format, agnostic):
    # N = 0 (a dynamic box count with nothing in it): every gather must still be valid.
    rng = np.random.default_rng(8)
    model = build_nms(layout, 3, max_det=6, output_format=output_format, agnostic=agnostic)
    inputs = random_head(layout, 2, 0, 3, rng)
    params = {"max_det": 6, "output_format": output_format, "agnostic": agnostic}
    got, images = check_against_reference(model, layout, inputs, 3, **params)
    assert images == [[], []]
    if output_format == "mmdeploy":
        assert (got["labels"] == -1).all() and not got["dets"].any()
    else:
        assert not any(value.any() for value in got.values())  # num_dets 0, zero padding


def test_more_candidates_than_max_det():
    rng = np.random.default_rng(4)
    inputs = random_head("yolov8", 2, 200, 5, rng)
    model = build_nms("yolov8", 5, score=0.05, max_det=10)
    got, _ = check_against_reference(model, "yolov8", inputs, 5, score=0.05, max_det=10)
    assert got["num_dets"].tolist() == [[10], [10]]
    assert (np.diff(got["det_scores"], axis=1) <= 0).all()  # sorted by score


def test_batch_of_three_with_different_counts():
    rng = np.random.default_rng(6)
    inputs = random_head("yolov8", 3, 50, 3, rng)
    inputs[0][0, 4:, :] = 0.0  # image 0: nothing
    inputs[0][1, 4:, 10:] = 0.0  # image 1: at most 10 boxes x 3 classes
    model = build_nms("yolov8", 3, max_det=40)
    got, images = check_against_reference(model, "yolov8", inputs, 3, max_det=40)
    counts = got["num_dets"].ravel().tolist()
    assert counts[0] == 0 and counts[0] < counts[1] < counts[2]
    assert counts == [len(d) for d in images]
    # Each image's rows come from its own boxes, never from image 0 of the batch.
    single = run_graph(model, [inputs[0][2:3]])
    np.testing.assert_array_equal(single["det_boxes"][0], got["det_boxes"][2])


@pytest.mark.parametrize("classes", [1, 80])
@pytest.mark.parametrize("agnostic", [False, True])
def test_one_and_eighty_classes(classes, agnostic):
    rng = np.random.default_rng(classes)
    inputs = random_head("yolov5", 2, 120, classes, rng)
    model = build_nms("yolov5", classes, max_det=30, agnostic=agnostic)
    check_against_reference(model, "yolov5", inputs, classes, max_det=30, agnostic=agnostic)


# ---------------------------------------------------------------------- parameters and CLI
def test_bad_parameters_are_listed_together():
    with pytest.raises(UsageError) as e:
        build_nms("yolov9", 0, iou=1.5, max_det=0, output_format="effcient")
    text = str(e.value)
    for fragment in ("yolov9", "did you mean `yolov8`", "classes", "iou", "max_det", "efficient"):
        assert fragment in text


def test_output_names_can_be_renamed():
    model = build_nms("yolov8", 3, output_names={"det_boxes": "boxes"}, input_names=["output0"])
    assert model.input_names == ["output0"]
    assert model.output_names == ["num_dets", "boxes", "det_scores", "det_classes"]
    with pytest.raises(UsageError, match="no output `det_box`"):
        build_nms("yolov8", 3, output_names={"det_box": "boxes"})


def test_cli_nms_writes_a_model(cli, tmp_path):
    out = tmp_path / "nms.onnx"
    res = cli("nms", "--layout", "yolov5", "--classes", "2", "--max-det", "7", "-o", out, "--json")
    assert res.status == 0, res.stderr
    data = res.json
    assert data["schema"] == "surgeon.nms/1"
    assert data["params"]["layout"] == "yolov5" and data["params"]["max_det"] == 7
    assert [o["name"] for o in data["outputs"]] == [
        "num_dets",
        "det_boxes",
        "det_scores",
        "det_classes",
    ]
    assert data["output"] == str(out)
    model = load(out)
    onnx.checker.check_model(model.proto)
    assert model.inputs[0].shape == ("batch", "num_boxes", 7)


def test_cli_nms_text_output(cli, tmp_path):
    res = cli(
        "nms",
        "--layout",
        "detr",
        "--classes",
        "3",
        "--format",
        "mmdeploy",
        "-o",
        tmp_path / "n.onnx",
    )
    assert res.status == 0, res.stderr
    assert "dets" in res.stdout and "labels" in res.stdout and "n.onnx" in res.stdout


def test_cli_nms_errors_write_nothing(cli, tmp_path):
    out = tmp_path / "nms.onnx"
    res = cli("nms", "--layout", "yolo8", "--classes", "3", "--iou", "2", "-o", out)
    assert res.status == 2
    assert "yolov8" in res.stderr and "iou" in res.stderr
    assert not out.exists()
    res = cli("nms", "--layout", "yolov8", "--classes", "3", "-o", tmp_path / "missing" / "n.onnx")
    assert res.status == 2 and "does not exist" in res.stderr
