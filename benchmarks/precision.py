"""Benchmark: `surgeon fp16` and `surgeon debug X16 --ref X32` on real models from pip packages.

For each model found under SITE (rapidocr's PP-OCRv4 det/rec and mobile cls, ddddocr's
common_det, magika's standard_v3_3), in fresh processes (process start included):
  1. a plain float32 onnxruntime run of the model (the baseline),
  2. `surgeon fp16 X32 -o X16 --json` (the planner; its verification is the output error of
     X16 against that same float32 model, on the same seeded feeds),
  3. `surgeon debug X16 --ref X32 --json` on the planner's output.
Wall time and peak RSS (wait4) of each, the block list size and the output error are printed.
Models not installed are skipped with a message.

    python benchmarks/precision.py [--site /path/to/site-packages] [--atol 1e-2 --rtol 1e-2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from measure import measure

ROOT = Path(__file__).resolve().parent.parent
SITE = Path("/work/real/venv/lib/python3.11/site-packages")
MODELS = {
    "PP-OCRv4 det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "PP-OCRv4 rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "ppocr cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ddddocr det": "ddddocr/common_det.onnx",
    "magika": "magika/models/standard_v3_3/model.onnx",
}
BASELINE = """
import sys
from surgeon.loading import load
from surgeon.feeds import make_feeds, FeedOptions
from surgeon.runner import run
m = load(sys.argv[1])
run(m, make_feeds(m, FeedOptions(seed=0)))
"""


def measure_child(argv: list[str]) -> tuple[float, float, str, int]:
    """Run argv with stdout to a file; (seconds, peak RSS MiB, stdout, exit status),
    launched from a small process (benchmarks/measure.py: wait4 from this one would count
    this process's own memory in the child's peak)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as out:
        seconds, peak, _, status, _ = measure(argv, env=env, stdout=out)
        out.seek(0)
        text = out.read().decode()
    return seconds, peak, text, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=SITE)
    parser.add_argument("--atol", default="1e-2")
    parser.add_argument("--rtol", default="1e-2")
    args = parser.parse_args()
    py = sys.executable
    found = {k: args.site / v for k, v in MODELS.items() if (args.site / v).is_file()}
    for name in MODELS:
        if name not in found:
            print(f"skip {name}: {MODELS[name]} not installed under {args.site}")
    if not found:
        print("no model found: install rapidocr_onnxruntime, ddddocr or magika")
        return 0
    tol = ["--atol", args.atol, "--rtol", args.rtol]
    header = f"{'model':14} {'step':10} {'s':>6} {'MiB':>6}  result"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in found.items():
            x16 = str(Path(tmp) / f"{path.stem}_fp16.onnx")
            s, rss, _, code = measure_child([py, "-c", BASELINE, str(path)])
            print(f"{name:14} {'float32':10} {s:6.2f} {rss:6.0f}  exit {code}")
            s, rss, out, code = measure_child(
                [py, "-m", "surgeon", "fp16", str(path), "-o", x16, "--json", *tol]
            )
            try:
                doc = json.loads(out)
            except json.JSONDecodeError:
                print(f"{name:14} {'fp16':10} {s:6.2f} {rss:6.0f}  exit {code}, no JSON")
                continue
            ver = doc["verification"] or {}
            worst = max((t.get("max_abs") or 0 for t in ver.get("tensors", [])), default=None)
            print(
                f"{name:14} {'fp16':10} {s:6.2f} {rss:6.0f}  exit {code}, kept {len(doc['block_list'])}"
                f" (+{len(doc['not_float16'])} by converter), {doc['float16_nodes']} float16 nodes,"
                f" output max abs {worst}, {doc['size_before'] / 2**20:.1f} -> {doc['size_after'] / 2**20:.1f} MiB,"
                f" rounds {len(doc['steps'])}"
            )
            if doc["block_list"]:
                print(
                    " " * 15 + "block list: " + ", ".join(k["node"] for k in doc["block_list"][:8])
                )
            if not Path(x16).is_file():
                continue
            s, rss, out, code = measure_child(
                [py, "-m", "surgeon", "debug", x16, "--ref", str(path), "--json", *tol]
            )
            try:
                verdict = json.loads(out).get("verdict")
                summary = (verdict if isinstance(verdict, str) else json.dumps(verdict))[:90]
            except json.JSONDecodeError:
                summary = "no JSON"
            print(f"{name:14} {'debug':10} {s:6.2f} {rss:6.0f}  exit {code}, {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
