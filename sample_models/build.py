"""Build the sample models in this folder from seeded weights.

    python sample_models/build.py            # rewrite the models here
    python sample_models/build.py --check    # exit 1 if a rebuild would differ

Every model is small (well under 1 MB) and rebuilt byte for byte by this script; the
tests check that. ``MODELS`` pairs each file with what it is expected to hold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
PRODUCER = "surgeon sample_models/build.py"

# Expected metadata of each checked-in model (tests compare against it).
MODELS = {
    "two_conv.onnx": {
        "inputs": {"in": ("float32", (1, 3, "H", "W"))},
        "outputs": {"out": ("float32", (1, 4, "H", "W"))},
        "nodes": ["conv0", "conv1"],
    },
    "tiny_yolo.onnx": {
        "inputs": {"images": ("float32", ("batch", 3, 64, 64))},
        "outputs": {"output0": ("float32", ("batch", 7, 64))},
        "classes": 3,
    },
    "if_model.onnx": {
        "inputs": {"x": ("float32", (2, 3))},
        "outputs": {"y": ("float32", (2, 3))},
    },
    "ext_weights.onnx": {
        "inputs": {"x": ("float32", ("N", 16))},
        "outputs": {"y": ("float32", ("N", 4))},
        "external_data": ["ext_weights.onnx.data"],
    },
}


def _weights(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def two_conv() -> onnx.ModelProto:
    """The mission's example: conv0 -> conv1, dynamic H and W, same padding."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(_weights(rng, 8, 3, 3, 3), "conv0.weight"),
        numpy_helper.from_array(_weights(rng, 8, scale=0.1), "conv0.bias"),
        numpy_helper.from_array(_weights(rng, 4, 8, 3, 3), "conv1.weight"),
        numpy_helper.from_array(_weights(rng, 4, scale=0.1), "conv1.bias"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["in", "conv0.weight", "conv0.bias"],
            ["conv0_out"],
            name="conv0",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "Conv",
            ["conv0_out", "conv1.weight", "conv1.bias"],
            ["out"],
            name="conv1",
            pads=[1, 1, 1, 1],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "two_conv",
        [helper.make_tensor_value_info("in", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "H", "W"])],
        inits,
    )
    return _model(graph)


def tiny_yolo(classes: int = 3) -> onnx.ModelProto:
    """A YOLOv8-style detector: 64x64 input, stride-8 grid of 64 anchors, output
    ``[batch, 4 + classes, 64]`` holding cx, cy, w, h in pixels, then class scores."""
    rng = np.random.default_rng(2)
    ch = 4 + classes
    inits = []
    nodes = []

    def conv(name, x, cin, cout, k, stride, out):
        w = numpy_helper.from_array(_weights(rng, cout, cin, k, k), f"{name}.weight")
        b = numpy_helper.from_array(_weights(rng, cout, scale=0.1), f"{name}.bias")
        inits.extend([w, b])
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w.name, b.name],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )

    conv("backbone/conv0", "images", 3, 8, 3, 2, "backbone/conv0_out")
    nodes.append(
        helper.make_node(
            "Relu", ["backbone/conv0_out"], ["backbone/act0_out"], name="backbone/act0"
        )
    )
    conv("backbone/conv1", "backbone/act0_out", 8, 16, 3, 2, "backbone/conv1_out")
    nodes.append(
        helper.make_node(
            "Relu", ["backbone/conv1_out"], ["backbone/act1_out"], name="backbone/act1"
        )
    )
    conv("backbone/conv2", "backbone/act1_out", 16, 16, 3, 2, "backbone/conv2_out")
    nodes.append(
        helper.make_node(
            "Relu", ["backbone/conv2_out"], ["backbone/act2_out"], name="backbone/act2"
        )
    )
    conv("head/conv", "backbone/act2_out", 16, ch, 1, 1, "head/conv_out")
    # Reshape with 0 copies the batch dim, so batch stays truly dynamic.
    inits.append(numpy_helper.from_array(np.array([0, ch, -1], dtype=np.int64), "head/flat_shape"))
    nodes.append(
        helper.make_node(
            "Reshape", ["head/conv_out", "head/flat_shape"], ["head/flat"], name="head/flatten"
        )
    )
    inits.append(
        numpy_helper.from_array(np.array([2, 2, classes], dtype=np.int64), "head/split_sizes")
    )
    nodes.append(
        helper.make_node(
            "Split",
            ["head/flat", "head/split_sizes"],
            ["head/xy_raw", "head/wh_raw", "head/cls_raw"],
            name="head/split",
            axis=1,
        )
    )
    # Box decoding: cx, cy = (sigmoid * 2 - 0.5 + grid) * stride; w, h = (sigmoid * 2)^2 * anchor.
    gy, gx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()])[None].astype(np.float32)  # [1, 2, 64]
    inits += [
        numpy_helper.from_array(grid, "head/grid"),
        numpy_helper.from_array(np.array(2.0, np.float32), "head/two"),
        numpy_helper.from_array(np.array(0.5, np.float32), "head/half"),
        numpy_helper.from_array(np.array(8.0, np.float32), "head/stride"),
        numpy_helper.from_array(np.array(16.0, np.float32), "head/anchor"),
    ]
    nodes += [
        helper.make_node("Sigmoid", ["head/xy_raw"], ["head/xy_sig"], name="head/xy_sigmoid"),
        helper.make_node("Mul", ["head/xy_sig", "head/two"], ["head/xy_2"], name="head/xy_mul2"),
        helper.make_node("Sub", ["head/xy_2", "head/half"], ["head/xy_off"], name="head/xy_sub"),
        helper.make_node(
            "Add", ["head/xy_off", "head/grid"], ["head/xy_grid"], name="head/xy_add_grid"
        ),
        helper.make_node("Mul", ["head/xy_grid", "head/stride"], ["head/xy"], name="head/xy_scale"),
        helper.make_node("Sigmoid", ["head/wh_raw"], ["head/wh_sig"], name="head/wh_sigmoid"),
        helper.make_node("Mul", ["head/wh_sig", "head/two"], ["head/wh_2"], name="head/wh_mul2"),
        helper.make_node("Mul", ["head/wh_2", "head/wh_2"], ["head/wh_sq"], name="head/wh_square"),
        helper.make_node("Mul", ["head/wh_sq", "head/anchor"], ["head/wh"], name="head/wh_scale"),
        helper.make_node("Sigmoid", ["head/cls_raw"], ["head/scores"], name="head/cls_sigmoid"),
        helper.make_node(
            "Concat", ["head/xy", "head/wh", "head/scores"], ["output0"], name="head/concat", axis=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", ch, 64])],
        inits,
    )
    return _model(graph)


def if_model() -> onnx.ModelProto:
    """An If whose branches read outer-scope tensors: y = x * w if sum(x) > 0 else x - 1."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(_weights(rng, 2, 3, scale=1.0), "w")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["then_y"], name="then_mul")],
        "then_branch",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [2, 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["else_y"], name="else_sub")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [2, 3])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="is_positive"),
        helper.make_node(
            "If", ["cond"], ["branch_out"], name="choose", then_branch=then_g, else_branch=else_g
        ),
        helper.make_node("Relu", ["branch_out"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w, one, zero],
    )
    return _model(graph)


def ext_weights() -> onnx.ModelProto:
    """A two-layer MLP whose weights are written to an external data file."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(_weights(rng, 16, 32), "fc0.weight"),
        numpy_helper.from_array(_weights(rng, 32, scale=0.1), "fc0.bias"),
        numpy_helper.from_array(_weights(rng, 32, 4), "fc1.weight"),
        numpy_helper.from_array(_weights(rng, 4, scale=0.1), "fc1.bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc0.weight"], ["fc0_mm"], name="fc0"),
        helper.make_node("Add", ["fc0_mm", "fc0.bias"], ["fc0_out"], name="fc0_bias"),
        helper.make_node("Relu", ["fc0_out"], ["act0"], name="act0"),
        helper.make_node("MatMul", ["act0", "fc1.weight"], ["fc1_mm"], name="fc1"),
        helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["y"], name="fc1_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "ext_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _model(graph)


def build_all(out_dir: Path) -> list[Path]:
    """Write every sample model into ``out_dir``; return the files written."""
    # Imported here so the script also documents surgeon's saver as the way to write
    # external data (atomic, page-aligned, relative location).
    from surgeon.model import Model
    from surgeon.saving import save

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, builder in (
        ("two_conv.onnx", two_conv),
        ("tiny_yolo.onnx", tiny_yolo),
        ("if_model.onnx", if_model),
    ):
        path = out_dir / name
        onnx.save(builder(), str(path))
        written.append(path)
    path = out_dir / "ext_weights.onnx"
    save(Model(ext_weights()), path, external_data=True, inplace=True)
    written += [path, out_dir / "ext_weights.onnx.data"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare a fresh build with the files here"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if not args.check:
        for p in build_all(args.out):
            print(f"wrote {p} ({p.stat().st_size} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        differ = []
        for p in build_all(Path(tmp)):
            here = args.out / p.name
            if not here.exists() or here.read_bytes() != p.read_bytes():
                differ.append(p.name)
        if differ:
            print("out of date: " + ", ".join(differ))
            return 1
    print("sample models are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
