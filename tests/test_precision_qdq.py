"""surgeon.precision on int8 QDQ models made by onnxruntime's quantize_static: dequantized
tensors pair with the float model's, and a badly quantized weight ranks first."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import quantize_qdq
from onnx import helper, numpy_helper
from test_precision_float16 import random_orders

from surgeon.compare import Tolerance
from surgeon.model import Model
from surgeon.precision import analyse_precision, pair_tensors
from surgeon.runner import RunOptions, run

quantization = pytest.importorskip("onnxruntime.quantization")

TOL = Tolerance(atol=5e-2, rtol=5e-2)


def float_model(outlier: float | None) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> Add(b) -> y; ``outlier`` planted in w2."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    if outlier is not None:
        w2[3, 5] = outlier
    b = rng.standard_normal(16).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
            helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
            helper.make_node("Add", ["h2", "b"], ["y"], name="bias"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (b, "b"))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def quantize(proto: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    return quantize_qdq(proto, tmp_path, (4, 8), batches=4)


def values(proto: onnx.ModelProto, feeds: dict) -> dict:
    outs = [o for n in proto.graph.node for o in n.output if o]
    got = run(Model(proto), feeds, outputs=outs, options=RunOptions(optimization="disabled"))
    return {**feeds, **got}


def analyse(reference: onnx.ModelProto, candidate: onnx.ModelProto):
    feeds = {"x": np.random.default_rng(7).standard_normal((4, 8)).astype(np.float32)}
    return analyse_precision(
        Model(candidate), Model(reference), values(reference, feeds), values(candidate, feeds), TOL
    )


def test_dequantized_tensors_pair_with_the_float_tensors(tmp_path):
    reference = float_model(None)
    pairing = pair_tensors(Model(quantize(reference, tmp_path)), Model(reference))
    pairs = pairing.pairs
    assert pairs["x_DequantizeLinear_Output"].reference == "x"
    assert pairs["x_DequantizeLinear_Output"].how == "qdq"
    assert pairs["w2_DequantizeLinear_Output"].reference == "w2"  # a quantized weight
    assert pairs["h2_DequantizeLinear_Output"].reference == "h2"
    # quantize_static folds the Relu into the MatMul and gives it the Relu's output name:
    # that name holds another value, so it is refused, and the Q/DQ after it pairs instead
    assert "r1" in pairing.refused and "r1" not in pairs
    assert pairs["r1_DequantizeLinear_Output"].reference == "r1"


@pytest.mark.parametrize("outlier", [60.0, 200.0])
def test_badly_quantized_weight_ranks_first_in_every_order(tmp_path, outlier):
    # One weight of w2 far beyond the rest: per-tensor int8 then rounds the others to a
    # few levels. Its own (quantization) error ranks first, whatever the node order.
    reference = float_model(outlier)
    for order in random_orders(quantize(reference, tmp_path), 4, seed=2):
        root = analyse(reference, order).root_cause
        assert root.verdict == "found", root.message
        assert root.unit.node == "w2_DequantizeLinear"
        assert root.unit.nodes == ["w2_DequantizeLinear"] and not root.ties


def test_healthy_weights_quantize_within_tolerance(tmp_path):
    reference = float_model(None)
    units = {u.node: u for u in analyse(reference, quantize(reference, tmp_path)).ranking}
    for weight in ("w1", "w2", "b"):
        assert units[f"{weight}_DequantizeLinear"].severity.tier == "within"


def test_units_join_nodes_whose_tensors_have_no_reference(tmp_path):
    reference = float_model(None)
    report = analyse(reference, quantize(reference, tmp_path))
    units = {u.node: u for u in report.ranking}
    # the folded MatMul, its Q and its DQ run together: r1 has no value of its own
    assert units["r1_DequantizeLinear"].nodes == ["mm1", "r1_QuantizeLinear", "r1_DequantizeLinear"]
    # the second MatMul reads the dequantized values, fed from the float model: alone
    assert units["mm2"].nodes == ["mm2"] and units["mm2"].severity.tier == "within"
    assert report.run.runs == 1
