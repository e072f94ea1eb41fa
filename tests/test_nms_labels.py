"""NMS labels: best class (one label per box) and a DETR head that outputs probabilities.

Checked against the numpy reference of ``test_nms`` (its ``best_class`` branch: each box's
first highest-scoring class, the score threshold, greedy IoU suppression among the boxes
of one label, then the top K by score), and against multi-label and agnostic NMS on a
hand-made case where the three differ.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_nms import F32, boxes_scores_inputs, check_against_reference, random_head, run_graph

from surgeon.edits.nms import build_nms
from surgeon.errors import UsageError


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "boxes-scores"])
@pytest.mark.parametrize("output_format", ["efficient", "ultralytics", "mmdeploy"])
def test_best_class_matches_reference(layout, output_format):
    rng = np.random.default_rng(17)
    classes, max_det = 4, 15
    model = build_nms(
        layout,
        classes,
        iou=0.4,
        score=0.2,
        max_det=max_det,
        best_class=True,
        output_format=output_format,
    )
    params = {"iou": 0.4, "score": 0.2, "max_det": max_det, "output_format": output_format}
    for batch, n in ((1, 40), (3, 70), (2, 0)):
        inputs = random_head(layout, batch, n, classes, rng)
        got, images = check_against_reference(
            model, layout, inputs, classes, best_class=True, **dict(params)
        )
        # One label per box: no box index is detected twice in an image.
        _, multi = check_against_reference(
            build_nms(
                layout, classes, iou=0.4, score=0.2, max_det=max_det, output_format=output_format
            ),
            layout,
            inputs,
            classes,
            **dict(params),
        )
        for single, several in zip(images, multi, strict=True):
            boxes = [tuple(box) for _, _, box in single]
            assert len(boxes) == len(set(boxes))
            if n:
                assert len(several) >= len(single)


def test_best_class_against_multi_label_and_agnostic():
    # Box 0: classes 0 and 1 both above the threshold; box 1 stands apart (best class 1);
    # box 2 overlaps box 0 (IoU 0.9) and its best class is 1. Boxes are told apart by y2.
    boxes = [[0, 0, 10, 10], [20, 0, 30, 7], [0, 0, 10, 9]]
    scores = [[0.9, 0.6], [0.1, 0.7], [0.1, 0.5]]
    inputs = boxes_scores_inputs(boxes, scores)

    def detections(**options):
        model = build_nms("boxes-scores", 2, iou=0.5, max_det=10, **options)
        got, images = check_against_reference(
            model, "boxes-scores", inputs, 2, iou=0.5, max_det=10, **options
        )
        return [(round(float(s), 2), c, int(box[3])) for s, c, box in images[0]]

    # Multi-label: box 0 under class 0 and class 1, and as class 1 it suppresses box 2.
    assert detections() == [(0.9, 0, 10), (0.7, 1, 7), (0.6, 1, 10)]
    # Best class: box 0 is class 0 only, so box 2 (class 1) survives.
    assert detections(best_class=True) == [(0.9, 0, 10), (0.7, 1, 7), (0.5, 1, 9)]
    # Agnostic: box 0 suppresses box 2 whatever its class.
    assert detections(agnostic=True) == [(0.9, 0, 10), (0.7, 1, 7)]


def test_detr_best_class_is_one_label_per_query():
    rng = np.random.default_rng(19)
    inputs = random_head("detr", 2, 30, 5, rng)
    best = build_nms("detr", 5, max_det=20, best_class=True)
    agnostic = build_nms("detr", 5, max_det=20, agnostic=True)
    got, _ = check_against_reference(
        best, "detr", inputs, 5, exact=False, max_det=20, best_class=True
    )
    want = run_graph(agnostic, inputs)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("agnostic", [False, True])
def test_detr_probabilities_skip_the_sigmoid(agnostic):
    rng = np.random.default_rng(23)
    boxes, _ = random_head("detr", 2, 25, 4, rng)
    probabilities = rng.random((2, 25, 4)).astype(F32)
    model = build_nms("detr", 4, max_det=12, probabilities=True, agnostic=agnostic)
    assert "Sigmoid" not in {n.op_type for n in model.proto.graph.node}
    got, images = check_against_reference(
        model,
        "detr",
        [boxes, probabilities],
        4,
        max_det=12,
        probabilities=True,
        agnostic=agnostic,
    )
    # The scores out are the probabilities in, unchanged.
    assert set(got["det_scores"][got["det_scores"] > 0].tolist()) <= set(
        probabilities.ravel().tolist()
    )


def test_probabilities_is_refused_outside_detr(cli, tmp_path):
    with pytest.raises(UsageError) as e:
        build_nms("yolov8", 3, probabilities=True)
    assert "detr layout only" in str(e.value) and "--" not in str(e.value)
    out = tmp_path / "nms.onnx"
    res = cli("nms", "--layout", "yolov5", "--classes", "2", "--probabilities", "-o", out)
    assert res.status == 2 and "detr layout only" in res.stderr
    assert not out.exists()


def test_cli_best_class_and_probabilities(cli, tmp_path):
    out = tmp_path / "nms.onnx"
    res = cli("nms", "--layout", "yolov8", "--classes", "3", "--best-class", "-o", out, "--json")
    assert res.status == 0, res.stderr
    assert res.json["params"]["best_class"] is True
    assert res.json["params"]["probabilities"] is False
    res = cli("nms", "--layout", "yolov8", "--classes", "3", "--best-class", "-o", out)
    assert res.status == 0 and "best-class" in res.stdout
    res = cli("nms", "--layout", "detr", "--classes", "3", "--probabilities", "-o", out, "--json")
    assert res.status == 0, res.stderr
    assert res.json["params"]["probabilities"] is True
    assert "Sigmoid" not in res.json["op_types"]


# ultralytics' RT-DETR export has one output [B, 300, 4+C]: normalised cx,cy,w,h, then
# class probabilities (sigmoid applied in the graph).
@pytest.mark.parametrize("agnostic", [False, True])
def test_detr_packed_input_matches_the_two_input_reference(agnostic):
    rng = np.random.default_rng(29)
    boxes, _ = random_head("detr", 2, 30, 5, rng)
    probabilities = rng.random((2, 30, 5)).astype(F32)
    packed = np.concatenate([boxes, probabilities], axis=2)
    model = build_nms(
        "detr", 5, max_det=10, probabilities=True, agnostic=agnostic, input_names=["preds"]
    )
    assert model.input_names == ["preds"]
    with pytest.raises(UsageError) as e:
        build_nms("detr", 5, input_names=["a", "b", "c"])
    assert "got 3 input name(s), or 1 for a packed [B, Q, 4+C] input" in str(e.value)
    assert [d for d in model.inputs[0].shape][1:] == ["num_queries", 9]
    got = run_graph(model, [packed])
    _, images = check_against_reference(
        build_nms("detr", 5, max_det=10, probabilities=True, agnostic=agnostic),
        "detr",
        [boxes, probabilities],
        5,
        max_det=10,
        probabilities=True,
        agnostic=agnostic,
    )
    want = [len(found) for found in images]
    assert got["num_dets"].ravel().tolist() == want and max(want) > 0
    for b, found in enumerate(images):
        n = len(found)
        assert got["det_scores"][b, :n].tolist() == [s for s, _, _ in found]
        assert got["det_classes"][b, :n].tolist() == [c for _, c, _ in found]
        np.testing.assert_array_equal(got["det_boxes"][b, :n], np.array([x for *_, x in found]))


def test_merge_nms_detr_takes_a_one_output_detector_packed(cli, tmp_path):
    import onnx
    from onnx import helper

    # A stand-in detector: its output is its input, [1, 6, 4+3] (boxes, probabilities).
    det = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["output0"])],
            "det",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 7])],
            [helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 6, 7])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    src = tmp_path / "det.onnx"
    onnx.save(det, str(src))
    rng = np.random.default_rng(31)
    boxes, _ = random_head("detr", 1, 6, 3, rng)
    x = np.concatenate([boxes, rng.random((1, 6, 3)).astype(F32)], axis=2)
    feeds = tmp_path / "x.npz"
    np.savez(feeds, x=x)
    out = tmp_path / "merged.onnx"
    res = cli(
        "merge", src, "--nms", "detr", "--classes", "3", "--probabilities", "--score", "0.5", "--max-det", "5",
        "--feeds", feeds, "-o", out, "--json",
    )  # fmt: skip
    assert res.status == 0, res.stderr
    assert res.json["connections"][0]["input"] == "predictions"
    assert res.json["nms"]["classes"] == 3 and res.json["nms"]["input_names"] == ["predictions"]
    from surgeon.loading import load

    got = run_graph(load(str(out)), [x])
    probs = x[0, :, 4:]
    q, c = np.nonzero(probs > F32(0.5))
    order = np.lexsort((c, q, -probs[q, c]))[:5]
    assert got["num_dets"][0, 0] == len(order)
    assert got["det_classes"][0, : len(order)].tolist() == c[order].tolist()
