"""`extract`: subgraphs cut between tensors, checked against independent references
(onnx.reference.ReferenceEvaluator on the original with its cut tensors exposed by plain
onnx.helper edits), every error path, external data and the large-model code path."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx.reference import ReferenceEvaluator

import surgeon
import surgeon.runner as runner_module
import surgeon.saving as saving_module
from surgeon import graph_facts
from surgeon.edits import extract as extract_module
from surgeon.edits.boundary import learn_from_runs
from surgeon.edits.extract import extract
from surgeon.errors import NameNotFoundError, UsageError
from surgeon.graph_facts import inference_skeleton
from surgeon.loading import load
from surgeon.model import Model
from surgeon.recipes import cut_backbone


def reference_values(proto: onnx.ModelProto, feeds: dict, names: list[str]) -> dict:
    """``names`` computed by ReferenceEvaluator on a copy of ``proto`` with them as outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for n in names:
        if n not in {o.name for o in copy.graph.output}:
            copy.graph.output.append(onnx.ValueInfoProto(name=n))
    values = ReferenceEvaluator(copy).run(names, feeds)
    return dict(zip(names, values, strict=True))


def images(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, 3, 64, 64)).astype(np.float32)


# ---------------------------------------------------------------------- the detector
def test_middle_of_detector_matches_the_original(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = extract(model, "backbone/act0_out", "head/conv_out")
    assert (
        edited.passed and edited.report.worst_abs() == 0
    )  # equal values, not only within tolerance
    sub = edited.model.proto
    onnx.checker.check_model(sub, full_check=True)
    assert [n.name for n in sub.graph.node] == [
        "backbone/conv1",
        "backbone/act1",
        "backbone/conv2",
        "backbone/act2",
        "head/conv",
    ]
    assert sorted(t.name for t in sub.graph.initializer) == sorted(
        f"{n}.{p}"
        for n in ("backbone/conv1", "backbone/conv2", "head/conv")
        for p in ("weight", "bias")
    )
    assert [(i.name, i.dtype, i.shape) for i in edited.model.inputs] == [
        ("backbone/act0_out", "float32", ("batch", 8, 32, 32))
    ]
    assert edited.model.outputs[0].shape == ("batch", 7, 8, 8)
    # Independent reference: the original under ReferenceEvaluator, cut tensors exposed.
    x = images()
    want = reference_values(model.proto, {"images": x}, ["backbone/act0_out", "head/conv_out"])
    (got,) = ReferenceEvaluator(sub).run(None, {"backbone/act0_out": want["backbone/act0_out"]})
    np.testing.assert_allclose(got, want["head/conv_out"], rtol=1e-5, atol=1e-5)
    # and under onnxruntime, where the promise is bit-identity
    ort = surgeon.run(model, {"images": x}, outputs=["backbone/act0_out", "head/conv_out"])
    sub_out = surgeon.run(edited.model, {"backbone/act0_out": ort["backbone/act0_out"]})
    assert np.array_equal(sub_out["head/conv_out"], ort["head/conv_out"])
    assert model.proto.graph.node[0].name == "backbone/conv0"  # the input is untouched
    assert edited.model.provenance[-1]["edit"] == "extract"


def test_node_name_with_several_outputs_means_all_of_them(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = extract(model, ["head/split"], ["head/concat"])
    assert edited.passed
    assert edited.model.input_names == ["head/xy_raw", "head/wh_raw", "head/cls_raw"]
    assert edited.model.output_names == ["output0"]


def test_weights_made_inputs(samples):
    """An initializer as a cut input becomes a graph input. With onnxruntime's
    optimisations on, a Conv whose weight is no longer constant gets another kernel, so
    the default verification runs them off, where the two graphs are bit-identical."""
    model = load(samples / "two_conv.onnx")
    edited = extract(model, ["in", "conv0.weight"], ["conv0_out"])
    assert (
        edited.passed and edited.report.worst_abs() == 0
    )  # equal values, not only within tolerance
    assert edited.model.input_names == ["in", "conv0.weight"]
    assert edited.details["inputs"][1] == {
        "name": "conv0.weight",
        "dtype": "float32",
        "shape": [8, 3, 3, 3],
        "source": "declared",
    }


def test_if_bodies_bring_their_outer_scope_reads(samples):
    model = load(samples / "if_model.onnx")
    edited = extract(model, ["x"], ["branch_out"])
    assert edited.passed
    # the branches read `w` and `one` from the main graph; `zero` feeds Greater
    assert sorted(t.name for t in edited.model.proto.graph.initializer) == ["one", "w", "zero"]
    onnx.checker.check_model(edited.model.proto, full_check=True)
    x = np.array([[1, -2, 3], [0.5, 0.5, -1]], np.float32)
    (want,) = ReferenceEvaluator(edited.model.proto).run(None, {"x": x})
    w = onnx.numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == "w"))
    np.testing.assert_allclose(want, x * w)  # sum(x) > 0: the then-branch


def test_cli_writes_the_subgraph_and_json(cli, samples, tmp_path):
    out = tmp_path / "mid.onnx"
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "backbone/act0_out",
        "--outputs",
        "head/conv_out",
        "-o",
        out,
        "--json",
    )
    assert res.status == 0, res.stderr
    doc = res.json
    assert doc["schema"] == "surgeon.edit/1" and doc["edit"] == "extract"
    assert doc["written"] and doc["passed"] and doc["verification"]["tolerance"]["atol"] == 1e-4
    assert set(doc["details"]) >= {
        "inputs",
        "outputs",
        "nodes",
        "initializers",
        "dropped_inputs",
        "notes",
    }
    assert doc["details"]["nodes"] == {"kept": 5, "removed": 15}
    assert load(out).input_names == ["backbone/act0_out"]


def test_cli_human_output(cli, samples, tmp_path):
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "images",
        "--outputs",
        "backbone/act2_out",
        "-o",
        tmp_path / "bb.onnx",
    )
    assert res.status == 0
    assert "PASS" in res.stdout and "[batch, 16, 8, 8]" in res.stdout and "wrote" in res.stdout


# ---------------------------------------------------------------------- external data, size
def test_model_with_external_data(cli, samples, tmp_path):
    model = load(samples / "ext_weights.onnx")
    assert model.external_data_files == ["ext_weights.onnx.data"]
    edited = extract(model, "act0", "y")
    assert edited.passed
    assert [t.name for t in edited.model.proto.graph.initializer] == ["fc1.weight", "fc1.bias"]
    out = tmp_path / "tail.onnx"
    res = cli(
        "extract",
        samples / "ext_weights.onnx",
        "--inputs",
        "act0",
        "--outputs",
        "y",
        "-o",
        out,
        "--external-data",
        "always",
    )
    assert res.status == 0, res.stderr
    assert (tmp_path / "tail.onnx.data").is_file()
    reloaded = load(out)
    x = np.random.default_rng(3).standard_normal((5, 32)).astype(np.float32)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    want = x @ weights["fc1.weight"] + weights["fc1.bias"]  # numpy reference
    (got,) = ReferenceEvaluator(reloaded.proto).run(None, {"act0": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_large_model_path_never_serialises_the_whole_model(samples, tmp_path, monkeypatch):
    """Pretend the protobuf limit is tiny: the runner and the saver must take their
    external-data paths, and shape inference must see a skeleton without the weights."""
    model = load(samples / "ext_weights.onnx")
    skeleton = inference_skeleton(model)
    assert not any(
        len(t.raw_data) > graph_facts.INFERENCE_WEIGHT_LIMIT for t in skeleton.graph.initializer
    )
    assert "fc0.weight" in {i.name for i in skeleton.graph.input}
    monkeypatch.setattr(saving_module, "PROTO_LIMIT", 1024)
    monkeypatch.setattr(runner_module, "PROTO_LIMIT", 1024)
    edited = extract(model, "x", "act0")
    assert edited.passed
    assert edited.details["inputs"][0]["shape"] == ["N", 16]
    assert edited.details["outputs"][0] == {
        "name": "act0",
        "dtype": "float32",
        "shape": ["N", 32],
        "source": "inferred",
    }
    surgeon.save(edited.model, tmp_path / "head.onnx")
    assert (tmp_path / "head.onnx.data").is_file()  # switched to external data by itself


# ---------------------------------------------------------------------- boundary types
def test_types_that_only_a_run_can_tell_keep_symbolic_dims():
    # Squeeze without axes: neither ONNX nor onnxruntime knows the output rank statically.
    model = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, K, 1] x) => (y) {
        s = Squeeze(x)
        y = Relu(s)
    }""")
    )
    learned, notes = learn_from_runs(model, ["s"])
    assert learned["s"].shape == (2, "K") and notes == []
    edited = extract(model, "s", "y")
    assert edited.passed
    assert edited.details["inputs"][0] == {
        "name": "s",
        "dtype": "float32",
        "shape": [2, "K"],
        "source": "run",
    }


def test_dims_seen_in_one_run_only_are_left_unknown_and_say_so():
    model = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, K, 1] x) => (y) {
        s = Squeeze(x)
        r = Reshape(s, shp)
        y = Relu(r)
    }""")
    )
    model.proto.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([2, 4, 16], np.int64), "shp")
    )
    # the second run (K moved to 96) cannot reshape to 2x4x16, so only one run counts:
    # the rank is learned, the dims are not (64 follows K; nothing says so)
    learned, notes = learn_from_runs(model, ["s"])
    assert learned["s"].shape == (None, None)
    assert notes and "one run" in notes[0] and "fails at other input sizes" in notes[0]


# The shape of `t` follows the values of `size` (static shape, so there is no second run
# at other sizes) and no static source knows its rank (Squeeze without axes). The If's
# then-branch squeezes axis 1 of `t`; it never runs at these feeds (c is false), but
# onnxruntime type-checks both branches when it loads a model.
DATA_DEPENDENT_IF = """<ir_version: 8, opset_import: ["" : 17]>
agraph (int64[3] size, bool c) => (y) {
    full = ConstantOfShape <value = float[1] {1.5}> (size)
    t = Squeeze(full)
    axis = Constant <value = int64[1] {1}> ()
    y = If(c) <
        then_branch = g1 () => (float[] then_out) { then_out = Squeeze(t, axis) },
        else_branch = g2 () => (float[] else_out) { else_out = Identity(t) }
    >
}"""


def test_dims_of_a_data_dependent_cut_are_not_frozen_into_an_untaken_branch(tmp_path):
    """Regression (onnx corpus: test_affine_grid_3d_expanded): the cut input was declared
    with the dims of one run, and onnxruntime refused to load the subgraph because the If
    branch that does not run squeezes an axis that is 4 there."""
    import onnxruntime as ort

    model = Model(parse(DATA_DEPENDENT_IF))
    feeds = {"size": np.array([3, 4, 1], np.int64), "c": np.array(False)}
    edited = extract(model, ["t", "c"], ["y"], feeds=feeds)
    assert edited.passed, edited.report.summary()
    t_info = edited.details["inputs"][0]
    assert t_info == {"name": "t", "dtype": "float32", "shape": [None, None], "source": "run"}
    assert "one run" in edited.details["notes"][0]
    assert "`t`" in edited.details["notes"][0] and "static" in edited.details["notes"][0]

    # a plain onnxruntime session loads the subgraph and gives the else-branch's value
    path = surgeon.save(edited.model, tmp_path / "sub.onnx")
    t = np.full((3, 4), 1.5, np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"t": t, "c": np.array(False)})
    np.testing.assert_array_equal(y, t)
    # ... and at other sizes, where the then-branch runs too (independent: numpy)
    t2 = np.arange(6, dtype=np.float32).reshape(6, 1)
    (y2,) = session.run(["y"], {"t": t2, "c": np.array(True)})
    np.testing.assert_array_equal(y2, t2[:, 0])

    # The model does exercise the failure: with the dims of the run declared, onnxruntime
    # refuses to load the same subgraph.
    frozen = onnx.ModelProto()
    frozen.CopyFrom(edited.model.proto)
    dims = frozen.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = 3, 4
    with pytest.raises(Exception, match="Squeeze"):
        ort.InferenceSession(frozen.SerializeToString(), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------- errors
def test_unknown_names_are_listed_with_suggestions(cli, samples, tmp_path):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(NameNotFoundError) as e:
        extract(model, ["backbone/act0_ot"], ["head/concot"])
    text = str(e.value)
    assert "`backbone/act0_out`" in text and "`head/concat`" in text
    out = tmp_path / "x.onnx"
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "nope",
        "--outputs",
        "head/concot",
        "-o",
        out,
    )
    assert res.status == 2 and "did you mean" in res.stderr and not out.exists()


def test_output_that_does_not_depend_on_the_inputs(cli, samples, tmp_path):
    out = tmp_path / "x.onnx"
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "head/conv_out",
        "--outputs",
        "backbone/act0_out",
        "-o",
        out,
    )
    assert res.status == 2 and not out.exists()
    assert "does not depend on the given inputs" in res.stderr
    assert "wrong way round" in res.stderr


def test_output_needing_unlisted_graph_inputs_names_them(cli, tmp_path):
    path = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[4] x, float[4] mask, float[4] bias) => (float[4] y) {
        r = Relu(x)
        m = Mul(r, mask)
        y = Add(m, bias)
    }"""),
        tmp_path / "m.onnx",
    )
    with pytest.raises(UsageError) as e:
        extract(load(path), ["r"], ["y"])
    assert "`mask`" in str(e.value) and "`bias`" in str(e.value)
    assert e.value.hint == "Add `mask`, `bias` to the inputs."
    out = tmp_path / "sub.onnx"
    res = cli("extract", path, "--inputs", "r", "--outputs", "y", "-o", out)
    assert res.status == 2 and "not listed as inputs" in res.stderr and not out.exists()
    assert extract(load(path), "r,mask,bias", "y").passed


def test_input_that_is_not_needed(tmp_path):
    model = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[4] x) => (float[4] y) {
        a = Relu(x)
        b = Neg(a)
        y = Abs(b)
    }""")
    )
    with pytest.raises(UsageError, match="input `x` is not needed"):
        extract(model, ["x", "a"], ["y"])


def test_output_computed_from_constants_only():
    model = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[4] x) => (float[4] y) {
        c = Constant<value = float[4] {1, 2, 3, 4}>()
        k = Neg(c)
        y = Add(x, k)
    }""")
    )
    with pytest.raises(UsageError, match="constants only"):
        extract(model, ["x"], ["k"])


def test_no_inputs_or_outputs(samples):
    with pytest.raises(UsageError, match="at least one input and one output"):
        extract(load(samples / "tiny_yolo.onnx"), [], ["output0"])


def test_output_path_is_checked_before_any_work(cli, samples):
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "images",
        "--outputs",
        "output0",
        "-o",
        samples / "tiny_yolo.onnx",
    )
    assert res.status == 2 and "refusing to overwrite" in res.stderr


def test_failed_verification_writes_nothing(cli, samples, tmp_path, monkeypatch):
    """The check can fail: a subgraph whose weights were damaged must not be written."""
    real = extract_module.build_subgraph

    def damaged(model, plan, infos):
        sub = real(model, plan, infos)
        t = sub.proto.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(t).copy()
        arr.flat[0] += 1.0
        t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        return sub

    monkeypatch.setattr(extract_module, "build_subgraph", damaged)
    out = tmp_path / "bad.onnx"
    res = cli(
        "extract",
        samples / "tiny_yolo.onnx",
        "--inputs",
        "images",
        "--outputs",
        "backbone/act0_out",
        "-o",
        out,
        "--json",
    )
    assert res.status == 1 and not out.exists()
    assert res.json["passed"] is False and res.json["written"] is False


# ---------------------------------------------------------------------- the recipe
def test_cut_backbone_recipe(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = cut_backbone.recipe([model])
    assert edited.passed and edited.edit == "extract"
    assert edited.model.output_names == ["backbone/act2_out"]
    assert [n.name for n in edited.model.proto.graph.node][-1] == "backbone/act2"
    assert set(cut_backbone.PARAMS) == {"prefix", "outputs", "inputs"}
    with pytest.raises(UsageError, match="no node"):
        cut_backbone.recipe([model], prefix="trunk/")


def test_nothing_between_inputs_and_outputs_is_an_error(tmp_path):
    from conftest import SAMPLES, run_cli

    res = run_cli(
        "extract",
        SAMPLES / "tiny_yolo.onnx",
        "--inputs",
        "images",
        "--outputs",
        "images",
        "-o",
        tmp_path / "x.onnx",
    )
    assert res.status == 2 and "nothing to extract" in res.stderr
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------- old-style models
def old_style_model(ir_version: int) -> onnx.ModelProto:
    """Convs, a MatMul and a Gemm large enough for onnxruntime to pre-pack their weights,
    with every initializer also listed as a graph input (how IR 3/4 exporters wrote it)."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    weights = {
        "w0": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
        "w1": (rng.standard_normal((64, 64, 3, 3)) * 0.1).astype(np.float32),
        "m": (rng.standard_normal((64 * 16 * 16, 128)) * 0.01).astype(np.float32),
        "g": rng.standard_normal((128, 64)).astype(np.float32),
        "gb": rng.standard_normal(64).astype(np.float32),
    }
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        h.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        h.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Flatten", ["r1"], ["f"], name="flat"),
        h.make_node("MatMul", ["f", "m"], ["mm"], name="mm"),
        h.make_node("Gemm", ["mm", "g", "gb"], ["y"], name="gemm"),
    ]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in weights.items()]
    inputs = [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [
        h.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in weights.items()
    ]
    graph = h.make_graph(
        nodes,
        "old",
        inputs,
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        inits,
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 9)])
    proto.ir_version = ir_version
    return proto


@pytest.mark.parametrize("ir_version", [3, 4])
def test_old_style_model_with_initializers_as_inputs_extracts_bit_exactly(ir_version):
    # From IR 4 on, onnxruntime treats an initializer that is also a graph input as
    # overridable and does not pre-pack it; a subgraph holding it as a plain initializer
    # got pre-packed kernels and differed in the last bits (max_abs 2e-4 here).
    model = Model(old_style_model(ir_version))
    edited = extract(model, "r0", "y")
    assert edited.passed and edited.report.worst_abs() == 0, edited.report.summary()
    sub = edited.model.proto
    onnx.checker.check_model(sub)
    # The subgraph lists its weights as inputs exactly as the original does.
    assert [v.name for v in sub.graph.input] == ["r0", "w1", "m", "g", "gb"]
    assert edited.model.input_names == ["r0"]
    # Independent check: plain onnxruntime runs of both, optimisations off.
    options = extract_module.VERIFY_OPTIONS
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = surgeon.run(model, {"x": x}, outputs=["r0", "y"], options=options)
    got = surgeon.run(edited.model, {"r0": want["r0"]}, options=options)
    assert np.array_equal(got["y"], want["y"])


def test_a_failed_extract_reads_as_a_failure(tmp_path, cli):
    # RandomNormalLike without a seed: the subgraph cannot reproduce the original.
    path = write(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[2, 8] x) => (float[2, 8] y) {
                r = Relu(x)
                noise = RandomNormalLike(r)
                y = Add(r, noise)
            }"""
        ),
        tmp_path / "noisy.onnx",
    )
    res = cli("extract", path, "--inputs", "r", "--outputs", "y", "-o", tmp_path / "sub.onnx")
    assert res.status == 1, res.stdout + res.stderr
    first = res.stdout.strip().splitlines()[0]
    assert first.startswith("FAIL: subgraph of 2 of 3 nodes does not reproduce the original")
    assert "1 of 1 tensor(s) differ" in first
    assert "reproduces" not in res.stdout + res.stderr
    assert not (tmp_path / "sub.onnx").exists()
    doc = cli("extract", path, "--inputs", "r", "--outputs", "y", "--json").json
    assert doc["passed"] is False and doc["verification"]["summary"].startswith("FAIL")
    assert "reproduces" not in json.dumps(doc)
