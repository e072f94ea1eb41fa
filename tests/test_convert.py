"""`convert`: opsets up and down; converted models checked against onnx.reference on the
original (independently of surgeon's verifier) at two sizes; blockers named, all at once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from surgeon.edits.convert import ConversionRefused, convert
from surgeon.errors import UsageError
from surgeon.loading import load
from surgeon.model import Model

RNG = np.random.default_rng(0)

# An opset-17 CNN: ops whose opset-17 versions onnx's converter cannot bring down to 11
# (Relu 14, Flatten 13, Gemm 13, Reshape 14 with allowzero=0 written out), an Unsqueeze
# whose axes input must become an attribute, and a last-axis Softmax.
CNN = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, 5] y, float[N, 1, 8] z) {
  c = Conv<pads = [1, 1, 1, 1]>(x, w, bias)
  r = Relu(c)
  p = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(r)
  g = GlobalAveragePool(p)
  f = Flatten(g)
  logits = Gemm<transB = 1>(f, fc, fcb)
  y = Softmax<axis = -1>(logits)
  shape = Constant<value = int64[2] {0, 8}>()
  flat = Reshape<allowzero = 0>(f, shape)
  axes = Constant<value = int64[1] {1}>()
  z = Unsqueeze(flat, axes)
}
"""


def cnn() -> onnx.ModelProto:
    proto = parse(CNN)
    weights = {
        "w": RNG.standard_normal((8, 3, 3, 3)),
        "bias": RNG.standard_normal(8),
        "fc": RNG.standard_normal((5, 8)),
        "fcb": RNG.standard_normal(5),
    }
    for name, value in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return proto


def close_to_reference(original: onnx.ModelProto, converted: onnx.ModelProto, sizes) -> None:
    for n, h, w in sizes:
        x = RNG.standard_normal((n, 3, h, w)).astype(np.float32)
        want = ReferenceEvaluator(original).run(None, {"x": x})
        got = ReferenceEvaluator(converted).run(None, {"x": x})
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def test_an_opset_17_cnn_converts_down_to_11_and_verifies():
    model = Model(cnn())
    edited = convert(model, 11)
    assert edited.passed, edited.report.summary()
    proto = edited.model.proto
    assert opset(proto) == 11 and opset(model.proto) == 17
    onnx.checker.check_model(proto, full_check=True)
    unsqueeze = next(n for n in proto.graph.node if n.op_type == "Unsqueeze")
    assert len(unsqueeze.input) == 1 and unsqueeze.attribute[0].ints == [1]
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    assert not reshape.attribute  # allowzero=0 is what Reshape 5 does anyway
    d = edited.details
    assert (d["from"], d["to"]) == (17, 11) and d["nodes_adapted"] >= 1 and d["nodes_kept"] >= 6
    # verified at the default size and at a second one
    assert any(" @ " in t.name for t in edited.report.tensors)
    close_to_reference(model.proto, proto, [(1, 16, 16), (2, 8, 12)])


def test_up_to_21_sets_the_ir_version_the_opset_needs():
    original = cnn()
    down = convert(Model(original), 11).model
    up = convert(down, 21)
    assert up.passed and opset(up.model.proto) == 21
    assert up.model.proto.ir_version >= 10 and up.details["ir_version"]["before"] == 8
    close_to_reference(original, up.model.proto, [(1, 8, 8), (3, 16, 8)])


def test_nodes_sharing_a_probe_keep_their_own_names():
    # Two ReduceSums alike but for their tensors: one probe, two distinct adapted nodes.
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 15]>
        agraph (float[N, 4] x) => (float[N, 1] a, float[N, 1] b) {
          axes = Constant<value = int64[1] {1}>()
          a = ReduceSum<keepdims = 1, noop_with_empty_axes = 1>(x, axes)
          neg = Neg(x)
          b = ReduceSum<keepdims = 1, noop_with_empty_axes = 1>(neg, axes)
        }
        """
    )
    for i, n in enumerate(proto.graph.node):
        n.name = f"node{i}"
    edited = convert(Model(proto), 11)
    assert edited.passed and edited.details["probes"] == 1
    sums = [n for n in edited.model.proto.graph.node if n.op_type == "ReduceSum"]
    assert [n.name for n in sums] == ["node1", "node3"]
    assert [list(n.input) for n in sums] == [["x"], ["neg"]]
    onnx.checker.check_model(edited.model.proto, full_check=True)


BLOCKED = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 3, 8, 8] x, float[1, 8, 8, 2] grid, int64[2] dims) => (float[1, 3, 8, 8] s, float[1, 3, 16, 16] u, float[2, 2] k, float[1, 3, 8] g) {
  s = GridSample(x, grid)
  scales = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  u = Resize<mode = "linear">(x, , scales)
  k = ConstantOfShape<value = float[1] {1.0}>(dims)
  idx = Constant<value = int64 {-1}>()
  g = Gather<axis = 3>(x, idx)
}
"""


def test_every_blocking_node_is_named_before_anything_is_converted():
    proto = parse(BLOCKED)
    for i, n in enumerate(proto.graph.node):
        n.name = f"{n.op_type.lower()}_{i}"
    with pytest.raises(ConversionRefused) as e:
        convert(Model(proto), 8)
    blocked = {b["node"]: b for b in e.value.blockers}
    assert set(blocked) == {
        "`gridsample_0` (GridSample)",
        "`resize_2` (Resize)",
        "`constantofshape_3` (ConstantOfShape)",
        "`constant_4` (Constant)",  # an int64 value: Constant before opset 9 is float only
        "`gather_5` (Gather)",
    }
    assert "exists from opset 16" in blocked["`gridsample_0` (GridSample)"]["reason"]
    assert "exists from opset 9" in blocked["`constantofshape_3` (ConstantOfShape)"]["reason"]
    assert "negative indices" in blocked["`gather_5` (Gather)"]["reason"]
    assert (
        "tensor(int64), a type Constant takes only from opset 9"
        in (blocked["`constant_4` (Constant)"]["reason"])
    )
    assert "coordinate_transformation_mode" in blocked["`resize_2` (Resize)"]["needs"]
    assert len(e.value.problems) == 5 and "Nothing was converted" in e.value.hint


def test_cli_refuses_with_the_node_named_and_writes_nothing(cli, tmp_path):
    proto = parse(BLOCKED)
    proto.graph.node[0].name = "sampler"
    src = write(proto, tmp_path / "m.onnx")
    out = tmp_path / "c.onnx"
    res = cli("convert", src, "--opset", "11", "-o", out)
    assert res.status == 2 and not out.exists()
    assert "`sampler` (GridSample): GridSample exists from opset 16" in res.stderr
    res = cli("convert", src, "--opset", "11", "--json")
    assert res.status == 2 and res.json["error"] == "ConversionRefused"


def test_cli_converts_writes_and_reports(cli, tmp_path):
    src = write(cnn(), tmp_path / "m.onnx")
    out = tmp_path / "c.onnx"
    res = cli("convert", src, "--opset", "11", "-o", out)
    assert res.status == 0, res.stderr
    assert "opset 17 -> 11" in res.stdout and f"wrote {out}" in res.stdout
    converted = load(out)
    assert converted.opset == 11 and converted.provenance[-1]["edit"] == "convert"
    res = cli("convert", src, "--opset", "11", "--json")
    assert res.status == 0 and res.json["details"]["to"] == 11


def test_a_wrong_conversion_fails_its_check_exit_1(cli, tmp_path, monkeypatch):
    # Softmax 13 normalises over its axis, Softmax 11 over everything from it on: keeping
    # an axis-1 Softmax of a 4-D tensor as it is (what onnx's adapter does) would be
    # wrong, and the check says so.
    import surgeon.edits.convert as convert_module

    monkeypatch.setattr(convert_module, "last_axis_rewrite", lambda node, *args: ([node], None))
    src = write(
        parse(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            agraph (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] y) {
              y = Softmax<axis = 1>(x)
            }
            """
        ),
        tmp_path / "m.onnx",
    )
    out = tmp_path / "c.onnx"
    res = cli("convert", src, "--opset", "11", "-o", out)
    assert res.status == 1 and not out.exists() and "not written" in res.stdout


def test_usage_errors(cli, tmp_path):
    model = Model(cnn())
    with pytest.raises(UsageError, match="at opset 17 already"):
        convert(model, 17)
    with pytest.raises(UsageError, match="converts between opsets 7 and"):
        convert(model, 3)
    src = write(cnn(), tmp_path / "m.onnx")
    res = cli("convert", src, "--opset", "99")
    assert res.status == 2 and "opset 99" in res.stderr
    res = cli("convert", src)
    assert res.status == 2 and "--opset" in res.stderr


def ort_run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """A plain onnxruntime run (onnx.reference's Softmax before 13 works along the axis
    alone, so it cannot tell the two meanings apart)."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# What torch writes for YOLOv8's head at opset 17: a Softmax on axis 1 of a 4-D tensor
# (the DFL), a LogSoftmax on the last axis without the attribute (default -1 from 13, 1
# before), and a nearest Resize that leaves the roi input out (required before 13).
YOLO_HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4, 16, 8] x) => (float[1, 4, 16, 8] s, float[1, 4, 16, 8] l, float[1, 4, 32, 16] u) {
  s = Softmax<axis = 1>(x)
  l = LogSoftmax(x)
  scales = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  u = Resize<mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor">(x, , scales)
}
"""


@pytest.mark.parametrize("target", [11, 12])
def test_softmax_on_an_inner_axis_and_resize_without_roi_convert_below_13(target):
    proto = parse(YOLO_HEAD)
    edited = convert(Model(proto), target)
    assert edited.passed, edited.report.summary()
    out = edited.model.proto
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Transpose") == 2  # around the axis-1 Softmax only
    # Softmax, LogSoftmax (its axis written out) and Resize: surgeon's own rewrites
    assert edited.details["nodes_rewritten"] == 3
    (resize,) = [n for n in out.graph.node if n.op_type == "Resize"]
    roi = {t.name: t for t in out.graph.initializer}[resize.input[1]]
    assert list(roi.dims) == [0]
    x = RNG.standard_normal((1, 4, 16, 8)).astype(np.float32)
    s, log_s, u = ort_run(out, {"x": x})
    np.testing.assert_allclose(s, softmax(x, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_s, np.log(softmax(x, -1)), rtol=1e-5, atol=1e-5)
    assert np.array_equal(u, x.repeat(2, axis=2).repeat(2, axis=3))


def test_softmax_of_unknown_rank_is_refused_with_the_node_named():
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float x) => (float y) {
          y = Softmax<axis = 1>(x)
        }
        """
    )
    proto.graph.node[0].name = "dfl_softmax"
    proto.graph.input[0].type.tensor_type.ClearField("shape")  # rank unknown
    with pytest.raises(ConversionRefused) as e:
        convert(Model(proto), 11)
    (blocker,) = e.value.blockers
    assert blocker["node"] == "`dfl_softmax` (Softmax)"
    assert "known rank" in blocker["reason"] and "opset >= 13" in blocker["needs"]


def test_softmax_of_a_type_the_older_op_lacks_is_refused():
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (bfloat16[2, 4, 3] x) => (bfloat16[2, 4, 3] y) {
          y = Softmax<axis = 1>(x)
        }
        """
    )
    with pytest.raises(ConversionRefused) as e:
        convert(Model(proto), 11)
    (blocker,) = e.value.blockers
    assert "tensor(bfloat16), a type Softmax takes only from opset 13" in blocker["reason"]


def _external_matmul(tmp_path):
    """A MatMul whose 1024x64 weight (256 KiB) stays in a side file when loaded."""
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        agraph (float[1, 1024] x) => (float[1, 64] y) {
          y = MatMul(x, w)
        }
        """
    )
    w = np.random.default_rng(0).standard_normal((1024, 64)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(w, "w"))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    model = load(path)
    assert model.proto.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    return model


def test_a_converted_model_with_weights_on_disk_is_still_checked(tmp_path, monkeypatch):
    # The checker read the external file from the current folder, refused the original,
    # and the converted model went unchecked: a broken conversion must be refused.
    import surgeon.edits.convert as convert_module

    model = _external_matmul(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # not the model's folder
    real = convert_module._convert_up

    def broken(*args):
        converted = real(*args)
        converted.graph.node[0].input[1] = "no_such_tensor"
        return converted

    monkeypatch.setattr(convert_module, "_convert_up", broken)
    with pytest.raises(ConversionRefused) as e:
        convert(model, 17)
    assert "not valid" in str(e.value.blockers)


def test_a_model_with_weights_on_disk_converts_and_verifies(tmp_path, monkeypatch):
    model = _external_matmul(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    edited = convert(model, 17)
    assert edited.report and edited.model.opset == 17
