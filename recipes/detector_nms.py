"""Turn a detector's raw head into a deployable model with NMS, in one verified run.

Builds an NMS graph from standard ONNX operators for the detector's head layout (YOLOv8
``[B, 4+C, N]`` by default), merges it after the detector, and gives the model the I/O
names deployment code expects: the image input ``images`` and, for the default
``efficient`` format, ``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``. The
number of classes, the dtype (float16 heads get a Cast) and the opset are read from the
detector. Each step is verified: the merged model must give the outputs of the detector
then the NMS graph run in sequence, within the default tolerance (atol and rtol 1e-4,
printed in each step's report: a Cast or an opset upgrade may change the last bits),
and the rename must keep every value bit for bit.

    surgeon run recipes/detector_nms.py sample_models/tiny_yolo.onnx -o det_nms.onnx
    surgeon run recipes/detector_nms.py yolov5s.onnx layout=yolov5 max_det=300 -o out.onnx
"""

from __future__ import annotations

import surgeon

MODELS = ("detector",)
OUTPUTS = ("deployable",)
PARAMS = {
    "layout": (str, "yolov8", "head layout: yolov8, yolov5, boxes-scores or detr"),
    "classes": (int, 0, "number of classes (0: read it from the detector's output shape)"),
    "iou": (float, 0.45, "IoU threshold: a box overlapping a kept box by more is suppressed"),
    "score": (float, 0.25, "score threshold: detections must score above it"),
    "max_det": (int, 100, "detections per image; outputs are zero-padded to this many"),
    "agnostic": (bool, False, "class-agnostic NMS instead of per-class NMS"),
    "format": (str, "efficient", "outputs: efficient, ultralytics or mmdeploy"),
    "input_name": (str, "images", "name of the image input in the deployed model ('' keeps it)"),
}


def recipe(
    models: list[surgeon.Model],
    layout: str = "yolov8",
    classes: int = 0,
    iou: float = 0.45,
    score: float = 0.25,
    max_det: int = 100,
    agnostic: bool = False,
    format: str = "efficient",
    input_name: str = "images",
):
    """Add NMS to ``models[0]`` and name its I/O for deployment.

    Returns:
        The verified merge, or ``[merge, rename]`` when the input needed a new name (the
        last step holds the final model). A merge whose verification failed is returned
        alone, so the runner stops there.
    """
    detector = models[0]
    nms = surgeon.build_nms(
        layout,
        classes or None,
        iou=iou,
        score=score,
        max_det=max_det,
        agnostic=agnostic,
        output_format=format,
        detector=detector,
    )
    merged = surgeon.merge(detector, nms)
    if not merged:
        return merged
    inputs = merged.model.input_names
    if not input_name or input_name in inputs:
        return merged
    if len(inputs) != 1:
        raise surgeon.UsageError(
            f"input_name={input_name} needs a single-input detector; {detector.name} has "
            f"{len(inputs)} inputs: {', '.join(inputs)}",
            hint="Pass input_name= (empty) to keep the names, then rename with `surgeon rename`.",
        )
    return [merged, surgeon.rename(merged.model, {inputs[0]: input_name}, tolerance=surgeon.EXACT)]
