"""`fold`: constant folding and cleanup; outputs checked against onnx.reference on the
original model (independently of surgeon's verifier) at two sizes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from surgeon.compare import EXACT
from surgeon.edits.fold import _repair_dtypes, fold
from surgeon.edits.shapes import reshape_io
from surgeon.errors import NameNotFoundError, SurgeonError, UsageError
from surgeon.loading import load
from surgeon.model import Model

RNG = np.random.default_rng(0)

# Shape->Gather->Unsqueeze->Concat->Reshape plumbing (what exporters write for a flatten
# that keeps the batch), a Constant/ConstantOfShape chain, two identical initializers
# and one nobody reads.
PLUMBING = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, 4, 4] x) => (float[N, 48] y) <float[2] w1 = {1.5, 2.0}, float[2] w2 = {1.5, 2.0}, float[3] unused = {0.0, 0.0, 0.0}> {
  s = Shape(x)
  i0 = Constant<value = int64 {0}>()
  b = Gather<axis = 0>(s, i0)
  zero = Constant<value = int64[1] {0}>()
  bu = Unsqueeze(b, zero)
  m1 = Constant<value = int64[1] {-1}>()
  ns = Concat<axis = 0>(bu, m1)
  r = Reshape(x, ns)
  dims = Constant<value = int64[1] {48}>()
  ones = ConstantOfShape<value = float[1] {1.0}>(dims)
  k = ReduceSum<keepdims = 1>(w1)
  k2 = ReduceSum<keepdims = 1>(w2)
  kk = Add(k, k2)
  scaled = Mul(ones, kk)
  y = Add(r, scaled)
}
"""


def reference(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ReferenceEvaluator(proto).run(None, feeds)


def ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_constant_chains_fold_and_values_stay_bit_identical_at_two_sizes():
    model = Model(parse(PLUMBING))
    edited = fold(model, tolerance=EXACT)
    assert edited.passed
    proto = edited.model.proto
    # what is left reads the input: the Shape plumbing (N is dynamic) and the two Adds
    assert "ConstantOfShape" not in ops(proto) and "Constant" not in ops(proto)
    assert "ReduceSum" not in ops(proto)
    d = edited.details
    assert d["nodes"]["before"] == 15 and d["nodes"]["after"] == len(proto.graph.node)
    assert d["op_types"]["ConstantOfShape"] == {"before": 1, "after": 0}
    assert {"w1", "w2", "unused"} <= set(d["initializers"]["removed"])
    # verified at the default size and at a second one, each row bit-identical
    names = [t.name for t in edited.report.tensors]
    assert names[0] == "y" and any(n.startswith("y @ ") for n in names[1:])
    assert all(t.max_abs == 0 for t in edited.report.tensors)
    for n in (1, 3):
        x = RNG.standard_normal((n, 3, 4, 4)).astype(np.float32)
        (want,) = reference(model.proto, {"x": x})
        (got,) = reference(proto, {"x": x})
        assert np.array_equal(got, want)
    assert model.proto.graph.node[0].op_type == "Shape"  # the input model is untouched


def test_shape_left_on_a_dynamic_dim_says_why_and_goes_once_static():
    model = Model(parse(PLUMBING))
    dynamic = fold(model)
    (left,) = dynamic.details["shape_ops_left"]
    assert left["input"] == "x" and "N not fixed" in left["why"] and "reshape-io" in left["why"]
    static = reshape_io(model, {"x": "2x3x4x4"}, check=False)
    edited = fold(static.model, tolerance=EXACT)
    assert edited.passed and edited.details["shape_ops_left"] == []
    assert not {"Shape", "Gather", "Concat", "Unsqueeze"} & set(ops(edited.model.proto))
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    (want,) = reference(model.proto, {"x": x})
    (got,) = reference(edited.model.proto, {"x": x})
    assert np.array_equal(got, want)


def test_duplicate_initializers_are_merged():
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 2] x) => (float[N, 2] y) <float[2] a = {1.0, 2.0}, float[2] b = {1.0, 2.0}> {
          p = Mul(x, a)
          q = Add(x, b)
          y = Add(p, q)
        }
        """
    )
    edited = fold(Model(proto), tolerance=EXACT)
    assert edited.passed
    assert edited.details["initializers"]["deduplicated"] == [{"removed": "b", "kept": "a"}]
    assert [t.name for t in edited.model.proto.graph.initializer] == ["a"]
    assert list(edited.model.proto.graph.node[1].input) == ["x", "a"]


# An If on a scalar input; the else branch's output is a constant (onnx-graphsurgeon
# 0.6.1's own flattening leaves such an If output without a producer).
IF_ON_MODE = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x, int64[] mode) => (float[M, 4] y) {
  one = Constant<value = int64 {1}>()
  c = Equal(mode, one)
  y = If(c) <
    then_branch = g1 () => (float[N, 4] t) {
      two = Constant<value = float {2.0}>()
      t = Mul(x, two)
    },
    else_branch = g2 () => (float[1, 4] e) {
      e = Constant<value = float[1, 4] {1.0, 2.0, 3.0, 4.0}>()
    }
  >
}
"""


def if_on_mode() -> onnx.ModelProto:
    """IF_ON_MODE with `mode` declared a scalar (the text syntax leaves its rank unknown)."""
    proto = parse(IF_ON_MODE)
    proto.graph.input[1].type.tensor_type.shape.SetInParent()
    return proto


@pytest.mark.parametrize("mode", [1, 0])
def test_if_on_a_bound_input_folds_to_its_branch(mode):
    model = Model(if_on_mode())
    edited = fold(model, {"mode": np.array(mode)}, tolerance=EXACT)
    assert edited.passed, edited.report.summary()
    proto = edited.model.proto
    assert "If" not in ops(proto) and edited.model.input_names == ["x"]
    assert edited.details["bound"] == {"mode": mode}
    assert any("no longer takes" in n for n in edited.details["notes"])
    for n in (2, 5):
        x = RNG.standard_normal((n, 4)).astype(np.float32)
        (want,) = reference(model.proto, {"x": x, "mode": np.array(mode, dtype=np.int64)})
        (got,) = reference(proto, {"x": x})
        assert np.array_equal(got, want)


def test_if_on_a_constant_condition_folds_without_binding():
    text = IF_ON_MODE.replace("int64[] mode", "float[1] unused_in").replace(
        "c = Equal(mode, one)", "c = Equal(one, one)"
    )
    edited = fold(Model(parse(text)), tolerance=EXACT)
    assert edited.passed and "If" not in ops(edited.model.proto)
    assert edited.details["bound"] == {}


def test_qdq_pairs_are_kept():
    proto = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 2] x) => (float[N, 2] y) <int8[2] wq = {10, -20}, float ws = {0.5}, int8 wz = {0}> {
          w = DequantizeLinear(wq, ws, wz)
          y = Mul(x, w)
        }
        """
    )
    edited = fold(Model(proto), tolerance=EXACT)
    assert edited.passed and ops(edited.model.proto) == ["DequantizeLinear", "Mul"]


def test_dtype_drift_is_cast_back_or_refused():
    proto = onnx.ModelProto()
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1.5, 2.0]), "t"))
    repaired = _repair_dtypes(proto, {"t": onnx.TensorProto.FLOAT})
    assert repaired == [{"tensor": "t", "from": "float64", "to": "float32"}]
    assert proto.graph.initializer[0].data_type == onnx.TensorProto.FLOAT
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([2**40]), "t"))
    with pytest.raises(SurgeonError, match="cannot change back") as e:
        _repair_dtypes(proto, {"t": onnx.TensorProto.INT32})
    assert "`t` folded to int64" in e.value.problems[0]


def test_bind_errors():
    model = Model(if_on_mode())
    with pytest.raises(NameNotFoundError, match="did you mean `mode`"):
        fold(model, {"mdoe": 1})
    with pytest.raises(UsageError, match="one-element"):
        fold(model, {"mode": np.array([1, 2])})
    with pytest.raises(UsageError, match="does not fit"):
        fold(model, {"mode": np.array(1.5)})


def test_cli_binds_scalar_feeds_loudly_and_writes(cli, tmp_path):
    src = write(if_on_mode(), tmp_path / "m.onnx")
    np.savez(tmp_path / "feeds.npz", mode=np.array(1, dtype=np.int64))
    out = tmp_path / "f.onnx"
    res = cli("fold", src, "--feeds", tmp_path / "feeds.npz", "--exact", "-o", out)
    assert res.status == 0, res.stderr
    assert "input `mode` is now the constant 1" in res.stdout and f"wrote {out}" in res.stdout
    folded = load(out)
    assert folded.input_names == ["x"] and folded.provenance[-1]["edit"] == "fold"
    res = cli("fold", src, "--json")
    assert res.status == 0 and res.json["edit"] == "fold" and res.json["details"]["bound"] == {}


def test_cli_failed_check_writes_nothing(cli, tmp_path, monkeypatch):
    import surgeon.edits.fold as fold_module

    real = fold_module._fold_passes

    def corrupting(proto, size_threshold):
        folded, passes, why = real(proto, size_threshold)
        for t in folded.graph.initializer:  # a folder bug: a folded value is off
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.float32:
                t.CopyFrom(numpy_helper.from_array(arr + 1, t.name))
        return folded, passes, why

    monkeypatch.setattr(fold_module, "_fold_passes", corrupting)
    src = write(parse(PLUMBING), tmp_path / "m.onnx")
    out = tmp_path / "f.onnx"
    res = cli("fold", src, "-o", out)
    assert res.status == 1 and not out.exists()
    assert "not written" in res.stdout


def test_cli_usage_errors(cli, tmp_path):
    src = write(parse(PLUMBING), tmp_path / "m.onnx")
    res = cli("fold", src, "--size-threshold", "lots")
    assert res.status == 2 and "size" in res.stderr
    res = cli("fold", tmp_path / "missing.onnx")
    assert res.status == 2


def test_an_input_of_unknown_rank_can_be_bound_from_the_api():
    edited = fold(Model(parse(IF_ON_MODE)), {"mode": 1}, tolerance=EXACT)
    assert edited.passed and edited.model.input_names == ["x"]


# torch writes `w_shared = Identity(w)` for a weight that cloned layers share (RT-DETR's
# decoder layers); folded, the MatMul reads a constant, and onnxruntime prepacks a
# constant weight for its GEMM kernel, which sums in another order than the unpacked path
# the original's run-time weight takes (4e-5 apart at these sizes on an AVX2 machine).
SHARED_WEIGHT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4, 512] x) => (float[1, 4, 8] y) {
  shared = Identity(w)
  y = MatMul(x, shared)
}
"""


def test_a_weight_folded_to_a_constant_is_checked_bit_exact_without_prepacking():
    proto = parse(SHARED_WEIGHT)
    w = RNG.standard_normal((512, 8)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(w, "w"))
    model = Model(proto)
    edited = fold(model, tolerance=EXACT)
    assert edited.passed, edited.report
    (matmul,) = edited.model.proto.graph.node
    assert matmul.input[1] in {t.name for t in edited.model.proto.graph.initializer}
    assert all(t.max_abs == 0 for t in edited.report.tensors)
    (note,) = [n for n in edited.details["notes"] if "prepacking" in n]
    assert "1 node(s)" in note
    x = RNG.standard_normal((1, 4, 512)).astype(np.float32)
    (got,) = reference(edited.model.proto, {"x": x})
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-4)


# YOLOv8's anchor points as torch exports them with dynamic H, W: Shape -> Gather ->
# Cast -> Range (+0.5) -> Expand to the grid, then added to the flattened feature map.
YOLO_ANCHORS = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 2, H, W] f) => (float[N, 2, M] y) {
  s = Shape(f)
  i0 = Constant<value = int64[1] {0}>()
  i1 = Constant<value = int64[1] {1}>()
  i2 = Constant<value = int64[1] {2}>()
  i3 = Constant<value = int64[1] {3}>()
  n = Gather<axis = 0>(s, i0)
  h = Gather<axis = 0>(s, i2)
  w = Gather<axis = 0>(s, i3)
  hs = Squeeze(h, i0)
  ws = Squeeze(w, i0)
  hf = Cast<to = 1>(hs)
  wf = Cast<to = 1>(ws)
  zero = Constant<value = float {0.0}>()
  one = Constant<value = float {1.0}>()
  half = Constant<value = float {0.5}>()
  xr = Range(zero, wf, one)
  yr = Range(zero, hf, one)
  xs = Add(xr, half)
  ys = Add(yr, half)
  grid = Concat<axis = 0>(h, w)
  gx = Expand(xs, grid)
  ys1 = Unsqueeze(ys, i1)
  gy = Expand(ys1, grid)
  ax = Unsqueeze(gx, i0)
  ay = Unsqueeze(gy, i0)
  anchors = Concat<axis = 0>(ax, ay)
  one_two = Constant<value = int64[2] {1, 2}>()
  minus_one = Constant<value = int64[1] {-1}>()
  flat_shape = Concat<axis = 0>(one_two, minus_one)
  a = Reshape(anchors, flat_shape)
  two = Constant<value = int64[1] {2}>()
  feat_shape = Concat<axis = 0>(n, two, minus_one)
  feat = Reshape(f, feat_shape)
  y = Add(feat, a)
}
"""


def yolo_anchors(f: np.ndarray) -> np.ndarray:
    n, _, h, w = f.shape
    gy, gx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    anchors = np.stack([gx, gy]).reshape(1, 2, -1).astype(np.float32)
    return f.reshape(n, 2, -1) + anchors


def test_yolo_anchor_plumbing_folds_away_once_static_and_stays_while_dynamic():
    proto = parse(YOLO_ANCHORS)
    onnx.checker.check_model(proto)
    model = Model(proto)
    dynamic = fold(model, tolerance=EXACT)
    assert dynamic.passed, dynamic.report
    left = dynamic.details["shape_ops_left"]
    assert left and all("not fixed" in row["why"] for row in left)
    static = reshape_io(model, {"f": "1x2x4x6"}, check=False).model
    folded = fold(static, tolerance=EXACT)
    assert folded.passed and folded.details["shape_ops_left"] == []
    assert not {"Shape", "Gather", "Range", "Cast", "Expand", "Concat"} & set(
        ops(folded.model.proto)
    )
    f = RNG.standard_normal((1, 2, 4, 6)).astype(np.float32)
    (got,) = reference(folded.model.proto, {"f": f})
    np.testing.assert_array_equal(got, yolo_anchors(f))
