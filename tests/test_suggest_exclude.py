"""surgeon debug --suggest-exclude: an int8 QDQ model (onnxruntime's quantize_static) with one
planted badly-quantized layer gets that layer's node first in its nodes_to_exclude, the
stripped model meets tolerance, and so does the model re-quantized with the list."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import quantize_qdq, run_cli, write
from onnx import helper, numpy_helper

from surgeon.compare import Tolerance, compare_arrays
from surgeon.errors import SurgeonError
from surgeon.model import Model
from surgeon.precision.analysis import analyse_precision
from surgeon.precision.exclude import suggest_exclusions
from surgeon.precision.strip import strip_quantization
from surgeon.runner import RunOptions, run

quantization = pytest.importorskip("onnxruntime.quantization")

TOL = Tolerance(atol=0.1, rtol=0.1)
SHAPE = (4, 16)


def float_model(outlier: float | None) -> onnx.ModelProto:
    """x -> mm1(w1) -> relu1 -> mm2(w2) -> relu2 -> mm3(w3) -> add(b) -> y; ``outlier``
    planted in w2 (one weight far beyond the rest: per-tensor int8 rounds the others away)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.25
    w2 = rng.standard_normal((32, 32)).astype(np.float32) * 0.2
    w3 = rng.standard_normal((32, 8)).astype(np.float32) * 0.2
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    if outlier is not None:
        w2[7, 3] = outlier
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["h3"], name="mm3"),
        helper.make_node("Add", ["h3", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [SHAPE[0], 8])],
        [numpy_helper.from_array(v, n) for v, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"), (b, "b"))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def quantize(proto: onnx.ModelProto, tmp_path, exclude=()) -> onnx.ModelProto:
    return quantize_qdq(proto, tmp_path, SHAPE, batches=8, exclude=exclude)


def inputs(seed: int) -> dict:
    """Seeded inputs inside the calibrated range (surgeon's random feeds are standard
    normal: one value beyond the range seen in calibration is clipped, a different story)."""
    return {"x": np.random.default_rng(seed).uniform(-2, 2, SHAPE).astype(np.float32)}


def output_error(candidate: onnx.ModelProto, reference: onnx.ModelProto, seed: int):
    """Both models run by onnxruntime on the same seeded input, compared at y."""
    x = inputs(100 + seed)["x"]
    opts = RunOptions(optimization="disabled")
    got = run(Model(candidate), {"x": x}, options=opts)["y"]
    want = run(Model(reference), {"x": x}, options=opts)["y"]
    return compare_arrays(got, want, TOL, name="y")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    reference = float_model(100.0)
    return reference, quantize(reference, tmp)


def test_the_planted_layer_is_excluded_first_and_the_list_verifies(planted, tmp_path):
    reference, int8 = planted
    for seed in (0, 1):
        result = suggest_exclusions(
            Model(int8), Model(reference), feeds=inputs(seed), tolerance=TOL
        )
        assert not result.before.passed  # the quantized model is really broken
        assert result.passed, result.after.summary()
        assert result.nodes_to_exclude[0] == "mm2"
        assert result.sites[0].dequantize == "w2_DequantizeLinear"
        assert result.sites[0].kind == "weight" and result.sites[0].nodes == ["mm2"]
        # the stripped model, checked independently on other inputs
        stripped = result.stripped.model.proto
        for check in (0, 1):
            assert output_error(stripped, reference, check).passed
        # the real workflow: quantize again, keeping the suggested nodes in float
        again = quantize(reference, tmp_path, exclude=result.nodes_to_exclude)
        for check in (0, 1):
            diff = output_error(again, reference, check)
            assert diff.passed, (result.nodes_to_exclude, diff.max_abs)


def test_stripping_every_node_gives_the_float_model_back(planted):
    # an exact float path: with every float node stripped (the Relu quantize_static folded
    # into mm1 and mm2 put back), the outputs equal the float model's bit for bit
    reference, int8 = planted
    pairing = analyse_precision(
        Model(int8), Model(reference), {"x": np.zeros(SHAPE, np.float32)}
    ).pairing
    names = [n.name for n in reference.graph.node]
    stripped = strip_quantization(Model(int8), Model(reference), pairing, names)
    ops = {n.op_type for n in stripped.model.proto.graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert sorted(n.op_type for n in stripped.model.proto.graph.node if n.op_type == "Relu") == [
        "Relu",
        "Relu",
    ]
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    got = run(stripped.model, {"x": x})["y"]
    want = run(Model(reference), {"x": x})["y"]
    np.testing.assert_array_equal(got, want)
    assert stripped.model.provenance[-1]["edit"] == "strip-qdq"
    assert int8.graph.node[0].op_type in ("QuantizeLinear", "DequantizeLinear")  # untouched


def test_a_healthy_model_needs_no_exclusion(tmp_path):
    reference = float_model(None)
    int8 = Model(quantize(reference, tmp_path))
    result = suggest_exclusions(int8, Model(reference), feeds=inputs(0), tolerance=TOL)
    assert result.passed and result.before.passed
    assert result.nodes_to_exclude == [] and result.steps == []


def test_cli_prints_the_list_writes_the_stripped_model_and_exits_0(planted, tmp_path):
    reference, int8 = planted
    fp, q = write(reference, tmp_path / "fp32.onnx"), write(int8, tmp_path / "int8.onnx")
    out = tmp_path / "stripped.onnx"
    npz = tmp_path / "x.npz"
    np.savez(npz, **inputs(0))
    tol = ("--atol", "0.1", "--rtol", "0.1", "--feeds", str(npz))
    r = run_cli("debug", q, "--ref", fp, "--suggest-exclude", *tol, "-o", out)
    assert r.status == 0, r.stdout + r.stderr
    assert "nodes_to_exclude=['mm2'" in r.stdout
    assert "before:" in r.stdout and "after:" in r.stdout and "w2_DequantizeLinear" in r.stdout
    assert output_error(onnx.load(str(out)), reference, 0).passed
    data = run_cli("debug", q, "--ref", fp, "--suggest-exclude", *tol, "--json").json
    assert data["schema"] == "surgeon.suggest-exclude/1" and data["passed"]
    assert data["nodes_to_exclude"][0] == "mm2" and data["written"] == []
    assert data["before"]["passed"] is False and data["after"]["passed"] is True


def test_cli_exits_1_when_no_list_within_the_limit_meets_tolerance(planted, tmp_path):
    reference, int8 = planted
    fp, q = write(reference, tmp_path / "fp32.onnx"), write(int8, tmp_path / "int8.onnx")
    out = tmp_path / "stripped.onnx"
    r = run_cli("debug", q, "--ref", fp, "--suggest-exclude", "--exclude-max", "1", "-o", out)
    assert r.status == 1, r.stdout + r.stderr
    assert "FAIL: no list of at most 1 node(s) meets tolerance" in r.stdout
    assert not out.exists()  # nothing written when the target is not met


def test_a_model_without_qdq_is_refused(tmp_path):
    reference = float_model(None)
    with pytest.raises(SurgeonError, match="no QuantizeLinear/DequantizeLinear"):
        suggest_exclusions(Model(reference), Model(reference))
    fp = write(reference, tmp_path / "fp32.onnx")
    r = run_cli("debug", fp, "--ref", fp, "--suggest-exclude")
    assert r.status == 2 and "no QuantizeLinear/DequantizeLinear" in r.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "needs --ref"),
        (("--ref", "acts.npz"), "needs --ref"),
        (("--ref", "{fp}", "--html", "r.html"), "does not take --html"),
        (("--ref", "{fp}", "--exclude-max", "0"), "--exclude-max must be at least 1"),
    ],
)
def test_cli_usage_errors(tmp_path, extra, message):
    fp = write(float_model(None), tmp_path / "fp32.onnx")
    args = [a.format(fp=fp) for a in extra]
    r = run_cli("debug", fp, "--suggest-exclude", *args)
    assert r.status == 2 and message in r.stderr, r.stderr


def test_missing_reference_output_and_bad_limit_are_refused(planted):
    reference, int8 = planted
    other = onnx.ModelProto()
    other.CopyFrom(reference)
    other.graph.output[0].name = "z"
    other.graph.node[-1].output[0] = "z"
    with pytest.raises(SurgeonError, match="not all outputs") as e:
        suggest_exclusions(Model(int8), Model(other))
    assert e.value.problems == ["`z` is missing"]
    with pytest.raises(SurgeonError, match="at least 1 node"):
        suggest_exclusions(Model(int8), Model(reference), max_nodes=0)


def hardswish_model() -> onnx.ModelProto:
    """x -> mm(w) -> h; m = h * h; d = m / 6 (Div: quantize_static does not quantize it,
    and d's range is m's / 6, so d's grid is exactly 6 times finer) -> mm2(w2) -> y."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((32, 8)).astype(np.float32) * 0.2
    six = np.array(6.0, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Mul", ["h", "h"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["d"], name="div"),
        helper.make_node("MatMul", ["d", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "hardswish",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [SHAPE[0], 8])],
        [numpy_helper.from_array(v, n) for v, n in ((w, "w"), (w2, "w2"), (six, "six"))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def test_excluding_a_node_its_neighbours_requantize_is_stripped_as_quantize_static_does(
    tmp_path,
):
    # the defect: the list's nodes had their inputs re-pointed alone, so excluding `div`
    # "stripped" m's pair for div, but d's pair rounds div's float output back onto the
    # quantized value: every step had exactly the int8 model's error
    reference = hardswish_model()
    int8 = quantize(reference, tmp_path)
    pairing = analyse_precision(Model(int8), Model(reference), inputs(0)).pairing
    x = inputs(7)

    def y(proto):
        return run(Model(proto), x, options=RunOptions(optimization="disabled"))["y"]

    # Div is not quantized: excluding it takes no pair away, in quantize_static and here
    alone = strip_quantization(Model(int8), Model(reference), pairing, ["div"])
    assert alone.rewired == []
    np.testing.assert_array_equal(y(alone.model.proto), y(int8))
    np.testing.assert_array_equal(y(quantize(reference, tmp_path, exclude=["div"])), y(int8))
    # m's pair is named after the op that quantizes it, and stripping it is exactly
    # what quantize_static makes with that list (same scales: same calibration)
    result = suggest_exclusions(Model(int8), Model(reference), feeds=x, tolerance=TOL)
    site = next(s for s in result.sites if s.dequantize == "m_DequantizeLinear")
    assert site.nodes == ["mul"]
    for exclude in (["mul"], ["mm", "mul"], ["mm", "mul", "mm2"]):
        stripped = strip_quantization(Model(int8), Model(reference), pairing, exclude)
        again = quantize(reference, tmp_path, exclude=exclude)
        np.testing.assert_array_equal(y(stripped.model.proto), y(again))
    assert not np.array_equal(y(stripped.model.proto), y(int8))
