"""Reports speak PyTorch: check-dynamic, inspect and debug name the module and line of a
node from the exporter's traces in the ONNX file alone (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import write
from onnx import TensorProto, helper, numpy_helper

from surgeon.debugging import DebugOptions, debug
from surgeon.dynamic import check_dynamic
from surgeon.loading import load


def _torchscript_style(tmp_path, baked: bool = True):
    """A TorchScript-named export: /conv/Conv then /flatten/Reshape with a baked shape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight")
    shape = numpy_helper.from_array(
        np.array([1, 4 * 8 * 8] if baked else [0, -1], np.int64), "/flatten/Constant_output_0"
    )
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "conv.weight"],
            ["/conv/Conv_output_0"],
            name="/conv/Conv",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "Reshape",
            ["/conv/Conv_output_0", "/flatten/Constant_output_0"],
            ["y"],
            name="/flatten/Reshape",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "ts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
        [w, shape],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch"
    )
    model.ir_version = 8
    return load(write(model, tmp_path / "ts.onnx"))


def test_check_dynamic_names_the_module(tmp_path):
    model = _torchscript_style(tmp_path)
    check = check_dynamic(model, sizes={"H": [8, 16], "W": [8, 16]})
    assert not check
    suspect = next(s for s in check.suspects if s.node == "/flatten/Reshape")
    assert suspect.origin and "`flatten`" in suspect.origin
    assert "= `flatten`" in suspect.message()


def test_inspect_reports_pytorch_modules(cli, tmp_path):
    model = _torchscript_style(tmp_path, baked=False)
    res = cli("inspect", model.path, "--json")
    info = res.json["pytorch"]
    assert info["exporter"] == "torchscript" and info["modules"] == 2
    assert "PyTorch export" in cli("inspect", model.path).stdout


def test_debug_root_cause_names_the_module(tmp_path):
    good = _torchscript_style(tmp_path, baked=False)
    proto = onnx.ModelProto()
    proto.CopyFrom(good.proto)
    w = proto.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    bad = load(write(proto, tmp_path / "bad.onnx"))
    report = debug(
        bad,
        DebugOptions(
            reference=good, feed_options=__import__("surgeon").FeedOptions(dims={"H": 8, "W": 8})
        ),
    )
    assert report.root_cause.node == "/conv/Conv"
    assert "= `conv`" in report.verdict()
