"""Benchmark: `surgeon debug --tap all` against one plain onnxruntime run.

Builds (or takes) a CNN, then measures in fresh processes, process start included:
  1. a plain onnxruntime run of the model (the baseline),
  2. `surgeon debug MODEL --tap all` (statistics mode: no --save, no --ref),
  3. `surgeon debug MODEL --tap all --save taps.npz` (every activation leaves onnxruntime),
  4. Polygraphy's `polygraphy run --onnxrt --onnx-outputs mark all`, when installed.
Each is run REPEAT times; the median wall time and the peak RSS (from wait4) are printed
with their ratios to the baseline. Targets for (2): at most 2x the peak memory and 3x
the wall time of (1).

    python benchmarks/debug_tap_all.py [--model M.onnx --shape in:1x3x224x224] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_cnn(path: Path, size: int = 224) -> tuple[Path, str]:
    """A 183-node residual CNN (Conv/Relu/Add, BatchNorm folded as exporters do) with
    three stages at 112, 56 and 28 pixels; seeded weights."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    count = [0]

    def conv(x, cin, cout, stride=1):
        i = count[0]
        count[0] += 1
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9)) * 0.7).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        )
        out = f"conv{i}_out"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"conv{i}.w", f"conv{i}.b"],
                [out],
                name=f"conv{i}",
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        return out

    def relu(x):
        out = f"{x}_relu"
        nodes.append(helper.make_node("Relu", [x], [out], name=f"{x}/relu"))
        return out

    x = relu(conv("input", 3, 32, 2))  # 112x112
    channels = 32
    for stage, blocks in enumerate((12, 12, 12)):
        if stage:
            x = relu(conv(x, channels, channels * 2, 2))
            channels *= 2
        for _ in range(blocks):
            y = relu(conv(x, channels, channels))
            y = conv(y, channels, channels)
            s = f"{y}_add"
            nodes.append(helper.make_node("Add", [y, x], [s], name=f"{y}/add"))
            x = relu(s)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, channels, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, f"input:1x3x{size}x{size}"


PLAIN = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [int(d) for d in sys.argv[2].split(":")[1].split("x")]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
s.run(None, {i.name: x})
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--shape", help="INPUT:1x3x224x224 (required with --model)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="surgeon-bench-"))
    try:
        if args.model:
            model, shape = args.model, args.shape
        else:
            model, shape = build_cnn(tmp / "cnn.onnx")
        n_nodes = len(onnx.load(str(model), load_external_data=False).graph.node)
        surgeon = [
            sys.executable,
            "-m",
            "surgeon",
            "debug",
            str(model),
            "--tap",
            "all",
            "--shape",
            shape,
            "--json",
        ]
        runs = {
            "plain onnxruntime run": [sys.executable, "-c", PLAIN, str(model), shape],
            "surgeon debug --tap all": surgeon,
            "surgeon debug --tap all --save": surgeon + ["--save", str(tmp / "taps.npz")],
        }
        poly = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which(
            "polygraphy"
        )
        if poly:
            runs["polygraphy mark all"] = [
                poly,
                "run",
                str(model),
                "--onnxrt",
                "--onnx-outputs",
                "mark",
                "all",
                "--input-shapes",
                shape,
            ]
        print(
            f"model: {model} ({n_nodes} nodes), input {shape}, {args.repeat} runs each, median wall / max peak RSS"
        )
        results = {}
        for label, cmd in runs.items():
            samples = [measure(cmd) for _ in range(args.repeat)]
            results[label] = (statistics.median(s[0] for s in samples), max(s[1] for s in samples))
        base_t, base_m = results["plain onnxruntime run"]
        print(f"{'':34} {'wall s':>8} {'x base':>7} {'peak MiB':>9} {'x base':>7}")
        for label, (t, m) in results.items():
            print(f"{label:34} {t:8.3f} {t / base_t:7.2f} {m:9.1f} {m / base_m:7.2f}")
        if not poly:
            print("polygraphy: not installed (pip install polygraphy to include it)")
        t, m = results["surgeon debug --tap all"]
        ok = t / base_t <= 3.0 and m / base_m <= 2.0
        print(f"target (tap all <= 3x wall, <= 2x memory): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
