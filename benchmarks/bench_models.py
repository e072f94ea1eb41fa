"""Models the debug benchmark builds: a YOLOv8n-size detector at 640 pixels (the layers,
channel widths and sizes of ultralytics' YOLOv8n export, seeded random weights).

Conv blocks are exported as Conv (BatchNorm folded) + Sigmoid + Mul (SiLU); C2f blocks as
1x1 Conv, Split, bottlenecks and Concat; SPPF as three chained MaxPools; the neck upsamples
with Resize (nearest) and concatenates; the Detect head runs two Conv towers per level,
DFL (Reshape, Transpose, Softmax, 1x1 Conv with weights 0..15) and the box decode against
anchor points and strides, giving ``output0`` of shape 1x84x8400.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"/{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, n))
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        n = self.name(op)
        outs = [f"{n}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=n, **attrs))
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int = 1, s: int = 1, act: bool = True) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(1.0 / (cin * k * k))
        b = self.rng.standard_normal(cout) * 0.05
        (y,) = self.node(
            "Conv",
            [x, self.const("w", w.astype(np.float32)), self.const("b", b.astype(np.float32))],
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            strides=[s, s],
        )
        if not act:
            return y
        (g,) = self.node("Sigmoid", [y])
        return self.node("Mul", [y, g])[0]

    def c2f(self, x: str, cin: int, cout: int, n: int, shortcut: bool) -> str:
        c = cout // 2
        y = self.conv(x, cin, 2 * c)
        parts = self.node("Split", [y, self.const("split", np.array([c, c], np.int64))], 2, axis=1)
        last = parts[1]
        for _ in range(n):
            z = self.conv(self.conv(last, c, c, 3), c, c, 3)
            last = self.node("Add", [last, z])[0] if shortcut else z
            parts.append(last)
        (cat,) = self.node("Concat", parts, axis=1)
        return self.conv(cat, (2 + n) * c, cout)

    def sppf(self, x: str, cin: int, cout: int) -> str:
        c = cin // 2
        y = self.conv(x, cin, c)
        pools = [y]
        for _ in range(3):
            pools.append(self.node("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2] * 4)[0])
        (cat,) = self.node("Concat", pools, axis=1)
        return self.conv(cat, 4 * c, cout)

    def upsample(self, x: str) -> str:
        scales = self.const("scales", np.array([1, 1, 2, 2], np.float32))
        return self.node("Resize", [x, "", scales], mode="nearest")[0]


def _anchors(sizes: list[int], strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    points, stride_column = [], []
    for size, stride in zip(sizes, strides, strict=True):
        ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()]))
        stride_column.append(np.full((1, size * size), stride))
    anchors = np.concatenate(points, axis=1)[None].astype(np.float32)  # 1x2x8400
    return anchors, np.concatenate(stride_column, axis=1)[None].astype(np.float32)


def build_yolo(path: Path, size: int = 640, classes: int = 80) -> tuple[Path, str]:
    """A YOLOv8n-size detector (~3.2 M parameters) for a 1x3xSIZExSIZE input."""
    b = _Builder()
    x = b.conv("images", 3, 16, 3, 2)
    x = b.conv(x, 16, 32, 3, 2)
    x = b.c2f(x, 32, 32, 1, True)
    x = b.conv(x, 32, 64, 3, 2)
    p3 = b.c2f(x, 64, 64, 2, True)
    x = b.conv(p3, 64, 128, 3, 2)
    p4 = b.c2f(x, 128, 128, 2, True)
    x = b.conv(p4, 128, 256, 3, 2)
    x = b.c2f(x, 256, 256, 1, True)
    p5 = b.sppf(x, 256, 256)
    (x,) = b.node("Concat", [b.upsample(p5), p4], axis=1)
    h4 = b.c2f(x, 384, 128, 1, False)
    (x,) = b.node("Concat", [b.upsample(h4), p3], axis=1)
    o3 = b.c2f(x, 192, 64, 1, False)
    (x,) = b.node("Concat", [b.conv(o3, 64, 64, 3, 2), h4], axis=1)
    o4 = b.c2f(x, 192, 128, 1, False)
    (x,) = b.node("Concat", [b.conv(o4, 128, 128, 3, 2), p5], axis=1)
    o5 = b.c2f(x, 384, 256, 1, False)
    reg, c2, c3 = 16, 64, max(64, min(classes, 100))
    flat = []
    for feat, ch in ((o3, 64), (o4, 128), (o5, 256)):
        box = b.conv(b.conv(b.conv(feat, ch, c2, 3), c2, c2, 3), c2, 4 * reg, act=False)
        cls = b.conv(b.conv(b.conv(feat, ch, c3, 3), c3, c3, 3), c3, classes, act=False)
        (cat,) = b.node("Concat", [box, cls], axis=1)
        shape = b.const("shape", np.array([1, 4 * reg + classes, -1], np.int64))
        flat.append(b.node("Reshape", [cat, shape])[0])
    (allp,) = b.node("Concat", flat, axis=2)
    box, cls = b.node(
        "Split", [allp, b.const("split", np.array([4 * reg, classes], np.int64))], 2, axis=1
    )
    # DFL: a softmax over 16 bins per side, then their expectation as a 1x1 Conv.
    (d,) = b.node("Reshape", [box, b.const("shape", np.array([1, 4, reg, -1], np.int64))])
    (d,) = b.node("Transpose", [d], perm=[0, 2, 1, 3])
    (d,) = b.node("Softmax", [d], axis=1)
    bins = b.const("dfl", np.arange(reg, dtype=np.float32).reshape(1, reg, 1, 1))
    (d,) = b.node("Conv", [d, bins], kernel_shape=[1, 1])
    (d,) = b.node("Reshape", [d, b.const("shape", np.array([1, 4, -1], np.int64))])
    lt, rb = b.node("Split", [d, b.const("split", np.array([2, 2], np.int64))], 2, axis=1)
    sizes = [size // 8, size // 16, size // 32]
    anchors, strides = _anchors(sizes, [8, 16, 32])
    anc, strd = b.const("anchors", anchors), b.const("strides", strides)
    (x1y1,) = b.node("Sub", [anc, lt])
    (x2y2,) = b.node("Add", [anc, rb])
    (total,) = b.node("Add", [x1y1, x2y2])
    (cxy,) = b.node("Div", [total, b.const("two", np.array(2.0, np.float32))])
    (wh,) = b.node("Sub", [x2y2, x1y1])
    (xywh,) = b.node("Concat", [cxy, wh], axis=1)
    (boxes,) = b.node("Mul", [xywh, strd])
    (scores,) = b.node("Sigmoid", [cls])
    b.nodes.append(helper.make_node("Concat", [boxes, scores], ["output0"], axis=1, name="/out"))
    n_anchor = sum(s * s for s in sizes)
    graph = helper.make_graph(
        b.nodes,
        "yolov8n_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, n_anchor])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, f"images:1x3x{size}x{size}"
