"""surgeon fp16: the converter keeps what must stay float32 and makes loadable models; the
planner's model meets its tolerance against the float32 model on two seeds (checked here
with plain onnxruntime runs); an impossible target writes nothing; bad input exits 2."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse, run_cli, write
from onnx import helper, numpy_helper

from surgeon.compare import Tolerance
from surgeon.errors import NameNotFoundError
from surgeon.model import Model
from surgeon.precision.fp16 import plan_fp16
from surgeon.precision.fp16_convert import convert_float16

FLOAT16 = onnx.TensorProto.FLOAT16
TOL = Tolerance(atol=1e-2, rtol=1e-2)

# LayerNorm-style: `sq` (~1e9 at scale 1e4) overflows float16, everything else fits.
LAYERNORM = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 16] x) => (y) {
    h = MatMul (x, w1)
    big = Mul (h, scale)
    mean = ReduceMean <axes = [-1]> (big)
    dev = Sub (big, mean)
    sq = Mul (dev, dev)
    var = ReduceMean <axes = [-1]> (sq)
    ve = Add (var, eps)
    std = Sqrt (ve)
    norm = Div (dev, std)
    y = MatMul (norm, w2)
}"""

# A healthy conv net: everything fits float16 and stays within 1e-2.
CONVNET = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 3, 8, 8] x) => (y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, wc, bc)
    r = Relu (c)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    y = Gemm (f, wg, bg)
}"""

# Precision lost without overflow: h*1000 - h*999.9 cancels, and 999.9 is 999.5 in float16.
CANCEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 16] x) => (y) {
    h = MatMul (x, w1)
    ha = Mul (h, a)
    hb = Mul (h, b)
    d = Sub (ha, hb)
    y = MatMul (d, w2)
}"""


def build(text: str, weights: dict) -> onnx.ModelProto:
    proto = parse(text)
    for node in proto.graph.node:
        node.name = f"n_{node.output[0]}"
    proto.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()
    )
    return proto


def layernorm(scale: float = 1e4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return build(
        LAYERNORM,
        {
            "w1": rng.standard_normal((16, 16)) * 0.25,
            "scale": scale,
            "eps": 1e-5,
            "w2": rng.standard_normal((16, 8)) * 0.25,
        },
    )


def convnet() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    return build(
        CONVNET,
        {
            "wc": rng.standard_normal((4, 3, 3, 3)) * 0.3,
            "bc": rng.standard_normal(4) * 0.1,
            "wg": rng.standard_normal((4, 5)) * 0.3,
            "bg": rng.standard_normal(5) * 0.1,
        },
    )


def cancel() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    return build(
        CANCEL,
        {
            "w1": rng.standard_normal((16, 16)) * 0.25,
            "a": 1000.0,
            "b": 999.9,
            "w2": rng.standard_normal((16, 8)) * 0.25,
        },
    )


def ort_run(proto: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def assert_meets(fp32: onnx.ModelProto, fp16: onnx.ModelProto, tol: Tolerance, seeds=(10, 11)):
    """Independent check: numpy's allclose on plain onnxruntime runs, on seeds the planner
    never saw."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        feeds = {
            v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(
                np.float32
            )
            for v in fp32.graph.input
        }
        want, got = ort_run(fp32, feeds), ort_run(fp16, feeds)
        for name, value in want.items():
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], value, atol=tol.atol, rtol=tol.rtol)


def test_layernorm_overflow_is_kept_float32_and_the_plan_meets_its_tolerance():
    proto = layernorm()
    plan = plan_fp16(Model(proto), tolerance=TOL)
    assert plan, plan.failure
    kept = {k.node: k.reason for k in plan.block_list}
    assert "n_sq" in kept and "beyond float16" in kept["n_sq"]
    assert plan.float16_nodes > len(kept)
    assert plan.second_check is not None and plan.second_check.passed
    assert plan.size_after < plan.size_before
    assert_meets(proto, plan.edited.model.proto, TOL)
    # the provenance the edit contract records
    props = {p.key for p in plan.edited.model.proto.metadata_props}
    assert "surgeon.provenance" in props


def test_beyond_float16_is_blocked_although_cpu_hides_the_overflow():
    """onnxruntime's CPU runs float16 Mul/ReduceMean in float32 between Casts, so the
    all-float16 model happens to pass here; the range check keeps `sq` float32 anyway,
    because a float16 kernel (GPU, NPU) would overflow it."""
    conversion = convert_float16(layernorm())
    assert "n_sq" in conversion.float16_nodes  # the converter alone would convert it
    plan = plan_fp16(Model(layernorm()), tolerance=TOL)
    kept = {k.node for k in plan.block_list}
    assert {"n_sq", "n_var", "n_ve"} <= kept


def test_no_value_beyond_float16_is_ever_cast_to_float16():
    """Found on real models (PP-OCRv4 det, magika): the planner kept the node whose output
    is beyond float16 in float32, but its float16 reader still got the value through a
    Cast to float16, which overflows to inf. Every tensor of the planned model, exposed,
    must be finite wherever the float32 model's is."""
    from surgeon.names import intermediate_tensors
    from surgeon.runner import run

    original = Model(layernorm())
    plan = plan_fp16(original, tolerance=TOL)
    assert plan, plan.failure
    kept = {k.node: k.reason for k in plan.block_list}
    assert "reads `ve`" in kept["n_std"]  # the reader is kept because of what it reads
    planned = plan.edited.model
    feeds = {"x": np.random.default_rng(10).standard_normal((4, 16)).astype(np.float32)}
    values = run(planned, feeds, outputs=intermediate_tensors(planned))
    reference = run(original, feeds, outputs=intermediate_tensors(original))
    finite_there = {k for k, v in reference.items() if np.isfinite(v).all()}
    half = {k: v for k, v in values.items() if v.dtype == np.float16}
    assert half  # the plan does compute in float16
    for name, value in half.items():
        source = name.split("__to_fp16")[0]  # a Cast's output is named after its source
        if source in finite_there or name in finite_there:
            assert np.isfinite(value).all(), f"{name} overflows float16"


def test_healthy_net_keeps_nothing_and_weights_are_float16():
    proto = convnet()
    plan = plan_fp16(Model(proto), tolerance=TOL)
    assert plan and plan.block_list == []
    out = plan.edited.model.proto
    assert {t.data_type for t in out.graph.initializer} == {FLOAT16}
    assert [v.type.tensor_type.elem_type for v in out.graph.input] == [onnx.TensorProto.FLOAT]
    assert_meets(proto, out, TOL)


def test_isolated_errors_find_the_lossy_node():
    proto = cancel()
    plan = plan_fp16(Model(proto), tolerance=TOL)
    assert plan, plan.failure
    kept = [k.node for k in plan.block_list]
    assert "n_hb" in kept  # 999.9 is not a float16 number
    assert all(k.reason == "worst isolated error" for k in plan.block_list)
    assert len(kept) <= 3
    assert any(s.action == "block worst isolated errors" for s in plan.steps)
    assert_meets(proto, plan.edited.model.proto, TOL)


def test_impossible_tolerance_fails():
    plan = plan_fp16(Model(cancel()), tolerance=Tolerance(atol=0, rtol=0))
    assert not plan and plan.failure


def test_unknown_keep_names_close_matches():
    with pytest.raises(NameNotFoundError) as e:
        plan_fp16(Model(layernorm()), keep=["n_sqq"])
    assert "n_sq" in e.value.suggestions


def test_existing_casts_are_not_retyped_and_value_info_follows():
    """A Cast to float in the model keeps its float output (onnxconverter-common re-types
    it and the model no longer loads); declared value_info follows the new types."""
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 3] x, int64[2, 3] k) => (y) {
            kf = Cast <to = 1> (k)
            s = Add (x, kf)
            t = Relu (s)
            y = Mul (t, two)
        }"""
    )
    proto.graph.initializer.append(numpy_helper.from_array(np.float32(2.0), "two"))
    proto = onnx.shape_inference.infer_shapes(proto)
    conversion = convert_float16(proto)
    out = conversion.proto
    cast = next(n for n in out.graph.node if n.op_type == "Cast" and n.input[0] == "k")
    assert helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.FLOAT
    declared = {v.name: v.type.tensor_type.elem_type for v in out.graph.value_info}
    assert declared["s"] == FLOAT16 and declared["kf"] == onnx.TensorProto.FLOAT
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": np.ones((2, 3), np.float32), "k": np.full((2, 3), 3, np.int64)}
    np.testing.assert_array_equal(ort_run(out, feeds)["y"], np.full((2, 3), 8, np.float32))


def test_old_ir_initializers_listed_as_inputs_and_subgraphs():
    """Initializers listed as graph inputs (IR 3) leave the inputs; an If body and the
    outer values it reads stay float32; a weight beyond float16 keeps its node float32."""
    then_body = helper.make_graph(
        [helper.make_node("Mul", ["h", "h"], ["o"])],
        "then",
        [],
        [helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [2])],
    )
    else_body = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["o2"])],
        "else",
        [],
        [helper.make_tensor_value_info("o2", onnx.TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "w"], ["h"], name="add"),
            helper.make_node("Mul", ["h", "huge"], ["z"], name="huge_mul"),
            helper.make_node(
                "If", ["c"], ["y"], name="if", then_branch=then_body, else_branch=else_body
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("huge", onnx.TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2]),
        ],
        [
            numpy_helper.from_array(np.array([1, 2], np.float32), "w"),
            numpy_helper.from_array(np.array([1e5, 1], np.float32), "huge"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    proto.ir_version = 3
    conversion = convert_float16(proto)
    out = conversion.proto
    assert [v.name for v in out.graph.input] == ["x", "c"]
    assert conversion.float16_nodes == ["add"]
    assert "beyond float16" in conversion.kept["huge_mul"] and "body" in conversion.kept["if"]
    feeds = {"x": np.array([1.5, 2.5], np.float32), "c": np.array(True)}
    got = ort_run(out, feeds)
    np.testing.assert_allclose(got["y"], [6.25, 20.25])
    np.testing.assert_allclose(got["z"], [250000.0, 4.5])


def test_cli_writes_when_met(tmp_path):
    src = write(layernorm(), tmp_path / "ln.onnx")
    out = tmp_path / "ln16.onnx"
    result = run_cli("fp16", src, "-o", out, "--atol", "1e-2", "--rtol", "1e-2")
    assert result.status == 0, result.stdout + result.stderr
    assert "n_sq" in result.stdout and "wrote" in result.stdout
    assert_meets(layernorm(), onnx.load(str(out)), TOL)


def test_cli_json(tmp_path):
    src = write(convnet(), tmp_path / "net.onnx")
    result = run_cli("fp16", src, "--json", "--atol", "1e-2", "--rtol", "1e-2")
    assert result.status == 0
    doc = result.json
    assert doc["schema"] == "surgeon.fp16/1" and doc["block_list"] == []
    assert doc["written"] is False and doc["second_check"]["passed"]


def test_cli_impossible_tolerance_writes_nothing(tmp_path):
    src = write(cancel(), tmp_path / "c.onnx")
    out = tmp_path / "c16.onnx"
    result = run_cli("fp16", src, "-o", out, "--atol", "0", "--rtol", "0")
    assert result.status == 1
    assert not out.exists()
    assert "target not met" in result.stdout and "not written" in result.stdout


def test_cli_errors(tmp_path):
    src = write(layernorm(), tmp_path / "ln.onnx")
    result = run_cli("fp16", src, "-o", src)
    assert result.status == 2 and "--inplace" in result.stderr
    result = run_cli("fp16", src, "-o", tmp_path / "o.onnx", "--keep", "n_sqq")
    assert result.status == 2 and "n_sq" in result.stderr
    assert not (tmp_path / "o.onnx").exists()
