"""Benchmark: surgeon on real ultralytics exports (YOLOv8n and RT-DETR-l, random weights).

What it checks and prints (wall times are of this machine, measured in this run):
  1. fold of YOLOv8n made static (reshape-io 1x3x640x640 on the dynamic export, or the
     static export): Shape ops before/after, bit-exact verdict; fold of the dynamic
     export: Shape ops left (they read dynamic dims) and the verdict at two sizes;
  2. convert of the opset-17 YOLOv8n to opset 13 and 11: verdict, or the refusal naming
     the blocking nodes;
  3. RT-DETR + the detr NMS layout (packed [1, 300, 4+80] output, scores already
     probabilities) merged and verified by surgeon, then its detections compared with an
     independent numpy post-processing of the detector's raw output;
  4. `surgeon debug --tap all` on both detectors (exit status, anomalies) and
     `surgeon check-dynamic` on the dynamic export (exit status).

The baseline of each timing is one plain onnxruntime run of the model in the same run.

    python benchmarks/real_exports.py --python /work/real/ultra/bin/python   # exports first
    python benchmarks/real_exports.py --yolo yolov8n_dynamic.onnx --rtdetr rtdetr-l.onnx

The interpreter given with --python needs ultralytics and torch: the models are built
from ultralytics' yaml files with seeded random weights (nothing is downloaded). Without
--python, --yolo or --rtdetr, the script says so and exits 0 (skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Run by the --python interpreter (ultralytics 8.4 here). RT-DETR's head is exported raw ([B, 300, 4+C]: boxes
# cx,cy,w,h normalised, sigmoided class scores), as ultralytics up to 8.3 exported it;
# 8.4 puts its own top-k in the graph, which the patch of `postprocess` takes out.
EXPORT_SCRIPT = r"""
import os, shutil, sys
import torch
from ultralytics import RTDETR, YOLO
from ultralytics.nn.modules.head import RTDETRDecoder

out = sys.argv[1]
os.chdir(out)
def export(model, dynamic, name):
    f = model.export(format="onnx", imgsz=640, opset=17, simplify=False, dynamic=dynamic)
    shutil.move(f, os.path.join(out, name))
torch.manual_seed(0)
export(YOLO("yolov8n.yaml"), True, "yolov8n_dynamic.onnx")
torch.manual_seed(0)
RTDETRDecoder.postprocess = lambda self, boxes, scores: torch.cat([boxes, scores], -1)
model = RTDETR("rtdetr-l.yaml")
# ultralytics' own init gives this model's 300 queries one and the same score, which
# would test nothing but ties: every weight gets seeded noise on top.
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.model.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * 0.02)
export(model, False, "rtdetr-l.onnx")
"""


def export_models(python: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, YOLO_OFFLINE="1")
    started = time.perf_counter()
    subprocess.run(
        [python, "-c", EXPORT_SCRIPT, str(folder)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"exported with {python} in {time.perf_counter() - started:.1f} s -> {folder}")
    return folder / "yolov8n_dynamic.onnx", folder / "rtdetr-l.onnx"


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def count_ops(proto, op: str) -> int:
    from surgeon.model import iter_graphs

    return sum(n.op_type == op for g in iter_graphs(proto.graph) for n in g.node)


def plain_run_seconds(path: Path, shape) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    return time.perf_counter() - started


def verdict(edited) -> str:
    report = edited.report
    if report is None:
        return "not verified"
    compared = [t for t in report.tensors if t.max_abs is not None]  # not size-check rows
    exact = bool(compared) and all(t.max_abs == 0 for t in compared)
    rows = ", ".join(f"{t.name} max abs {t.max_abs:.3g}" for t in compared)
    return f"{'PASS' if edited.passed else 'FAIL'} ({'bit-identical' if exact else rows})"


def check_yolo(path: Path) -> None:
    import surgeon
    from surgeon.compare import EXACT
    from surgeon.errors import SurgeonError

    model = surgeon.load(str(path))
    base = plain_run_seconds(path, (1, 3, 640, 640))
    print(f"\n== YOLOv8n: {path} (plain onnxruntime run, 1x3x640x640: {base:.2f} s)")
    dynamic = any(not isinstance(d, int) for d in model.inputs[0].shape or ())
    if dynamic:
        static, t = timed(surgeon.reshape_io, model, {"images": "1x3x640x640"})
        print(f"reshape-io to 1x3x640x640: {verdict(static)} in {t:.1f} s ({t / base:.1f}x)")
        folded_dyn, t = timed(surgeon.fold, model, tolerance=EXACT)
        print(
            f"fold (dynamic): Shape ops {count_ops(model.proto, 'Shape')} -> "
            f"{count_ops(folded_dyn.model.proto, 'Shape')} "
            f"({len(folded_dyn.details['shape_ops_left'])} left on dynamic dims), "
            f"{verdict(folded_dyn)} in {t:.1f} s"
        )
        model = static.model
    folded, t = timed(surgeon.fold, model, tolerance=EXACT)
    print(
        f"fold (static): nodes {folded.details['nodes']['before']} -> "
        f"{folded.details['nodes']['after']}, Shape ops {count_ops(model.proto, 'Shape')} -> "
        f"{count_ops(folded.model.proto, 'Shape')}, {verdict(folded)} in {t:.1f} s "
        f"({t / base:.1f}x)"
    )
    for opset in (13, 11):
        try:
            converted, t = timed(surgeon.convert, model, opset)
        except SurgeonError as e:
            print(f"convert --opset {opset}: refused: {e}")
            for problem in getattr(e, "problems", []):
                print(f"  - {problem}")
            continue
        d = converted.details
        print(
            f"convert --opset {opset}: {verdict(converted)}; kept {d['nodes_kept']}, "
            f"adapted {d['nodes_adapted']}, in {t:.1f} s"
        )


def numpy_detr(raw: np.ndarray, classes: int, score: float, max_det: int):
    """RT-DETR's post-processing in numpy, written from its rules (not surgeon's graph):
    every (query, class) with probability > score is a candidate; the max_det best by
    probability (ties: lower query, then lower class); boxes cx,cy,w,h -> x1,y1,x2,y2."""
    found = []
    for image in raw:
        boxes, probs = image[:, :4].astype(np.float64), image[:, 4 : 4 + classes]
        q, c = np.nonzero(probs > score)
        p = probs[q, c]
        order = np.lexsort((c, q, -p))[:max_det]
        cx, cy, w, h = boxes[q[order]].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        found.append((xyxy, p[order], c[order]))
    return found


def check_rtdetr(path: Path) -> None:
    import surgeon
    from surgeon.runner import run

    model = surgeon.load(str(path))
    base = plain_run_seconds(path, (1, 3, 640, 640))
    print(f"\n== RT-DETR-l: {path} (plain onnxruntime run: {base:.2f} s)")
    rng = np.random.default_rng(0)
    images = rng.random((1, 3, 640, 640), dtype=np.float32)
    (raw,) = run(model, {"images": images}).values()
    classes = raw.shape[-1] - 4
    # Random weights score low: a threshold the 20th best probability passes, so there
    # are detections to compare.
    score = float(np.sort(raw[..., 4:].reshape(-1))[-20]) - 1e-6
    nms = surgeon.build_nms(
        "detr",
        classes,
        score=score,
        max_det=100,
        probabilities=True,
        input_names=("predictions",),
        detector=model,
    )
    merged, t = timed(surgeon.merge, model, nms)  # verified on surgeon's own seeded feeds
    print(f"merge + detr NMS (score > {score:.4f}): {verdict(merged)} in {t:.1f} s")
    for note in merged.report.notes:
        print(f"  note: {note}")
    got = run(merged.model, {"images": images})
    (want_boxes, want_scores, want_classes) = numpy_detr(raw, classes, score, 100)[0]
    n = int(got["num_dets"][0, 0])
    same = (
        n == len(want_scores)
        and np.array_equal(got["det_classes"][0, :n], want_classes)
        and np.allclose(got["det_scores"][0, :n], want_scores, rtol=0, atol=0)
        and np.allclose(got["det_boxes"][0, :n], want_boxes, atol=1e-6)
    )
    print(
        f"detections: merged model {n} ({len(np.unique(want_scores))} distinct scores), "
        f"numpy post-processing {len(want_scores)}; "
        f"{'identical (classes, scores; boxes within 1e-6)' if same else 'DIFFERENT'}"
    )


def check_cli(args: list[str]) -> None:
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "surgeon", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    summary = ""
    try:
        data = json.loads(res.stdout)
        anomalies = data.get("anomalies")
        if isinstance(anomalies, list):
            summary = f", {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}"
    except json.JSONDecodeError:
        summary = ", no JSON"
    print(f"surgeon {' '.join(args[:2])} ...: exit {res.returncode}{summary} in {seconds:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="an interpreter with ultralytics and torch: export first")
    parser.add_argument("--yolo", type=Path, help="a YOLOv8n export (dynamic or static)")
    parser.add_argument("--rtdetr", type=Path, help="an RT-DETR export with the raw head")
    parser.add_argument("--out", type=Path, help="where --python writes (default: a temp folder)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if not (args.python or args.yolo or args.rtdetr):
        print("skipped: give --python (an interpreter with ultralytics) or --yolo/--rtdetr")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        yolo, rtdetr = args.yolo, args.rtdetr
        if args.python:
            yolo, rtdetr = export_models(args.python, args.out or Path(tmp))
        for path in (yolo, rtdetr):
            if path is not None and not path.is_file():
                print(f"skipped: {path} does not exist")
                return 0
        if yolo:
            check_yolo(yolo)
            check_cli(["debug", str(yolo), "--tap", "all"])
            check_cli(["check-dynamic", str(yolo)])
        if rtdetr:
            check_rtdetr(rtdetr)
            check_cli(["debug", str(rtdetr), "--tap", "all"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
