"""Merging two models: connections, names, opsets, the verification, the CLI and the
detector + NMS recipe. References are the two models run in sequence with onnxruntime,
numpy, and the numpy NMS of test_nms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, write
from test_nms import expected_outputs, reference_nms

import surgeon
from surgeon.compare import EXACT
from surgeon.edits.merge import merge, verify_merge
from surgeon.edits.nms import build_nms
from surgeon.errors import SurgeonError, UsageError
from surgeon.feeds import FeedOptions
from surgeon.loading import load
from surgeon.model import Model
from surgeon.recipes import detector_nms
from surgeon.runner import run
from surgeon.verification import Chain, verify

FIRST = """<ir_version: 8, opset_import: ["" : 17]>
first (float[N, 4] x) => (float[N, 4] y, float[N, 4] aux) {
    t = Relu(x)
    y = Neg(t)
    aux = Abs(x)
}"""
SECOND = """<ir_version: 8, opset_import: ["" : 17]>
second (float[N, 4] y) => (float[N, 4] z) {
    t = Exp(y)
    z = Add(t, y)
}"""


def flat(text: str) -> str:
    """Console text with the line wrapping undone."""
    return " ".join(text.split())


def model(text: str) -> Model:
    return Model(parse(text))


def x_values(n=3):
    return np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)


# ---------------------------------------------------------------------- any two graphs
def test_equal_names_connect_and_clashing_names_get_the_prefix():
    result = merge(model(FIRST), model(SECOND))
    assert result and result.report.worst_abs() == 0  # equal values, not only within tolerance
    assert result.details["how"] == "names"
    assert result.details["connections"][0]["output"] == "y"
    assert result.details["renamed"]["second"] == {"t": "second/t"}
    assert result.model.input_names == ["x"] and result.model.output_names == ["z"]
    x = x_values()
    y = -np.maximum(x, 0)
    np.testing.assert_allclose(run(result.model, {"x": x})["z"], np.exp(y) + y, rtol=1e-6)
    assert result.model.provenance[-1]["edit"] == "merge"


def test_a_merged_output_keeps_its_name_and_the_first_graph_yields():
    second = model(
        SECOND.replace("=> (float[N, 4] z)", "=> (float[N, 4] t)").replace(
            "t = Exp(y)\n    z = Add(t, y)", "u = Exp(y)\n    t = Add(u, y)"
        )
    )
    result = merge(model(FIRST), second, prefix1="det/")
    assert result
    assert result.details["renamed"]["first"] == {"t": "det/t"}
    assert result.model.output_names == ["t"]


def test_keep_outputs():
    everything = merge(model(FIRST), model(SECOND), keep_outputs=True)
    assert everything and everything.model.output_names == ["aux", "z"]
    named = merge(model(FIRST), model(SECOND), keep_outputs=["y"])
    assert named and named.model.output_names == ["y", "z"]
    assert named.report.outputs["y"].reference == "y"
    with pytest.raises(SurgeonError, match="cannot keep `auxx`"):
        merge(model(FIRST), model(SECOND), keep_outputs=["auxx"])


def test_preprocessing_graph_before_a_model():
    pre = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        pre (uint8[1, H, W, 3] raw) => (float[1, 3, H, W] pixels) {
            f = Cast<to = 1>(raw)
            p = Transpose<perm = [0, 3, 1, 2]>(f)
            scale = Constant<value = float {255.0}>()
            pixels = Div(p, scale)
        }"""
    )
    net = load(SAMPLES / "two_conv.onnx")
    result = merge(pre, net, feed_options=FeedOptions(dims={"H": 16, "W": 24}))
    assert result, result.report.summary()
    assert result.details["how"] == "single"
    raw = np.random.default_rng(1).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    pixels = raw.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    expected = run(net, {"in": pixels})["out"]
    np.testing.assert_array_equal(run(result.model, {"raw": raw})["out"], expected)


def test_shared_input():
    second = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        second (float[N, 4] y, float[N, 4] x) => (float[N, 4] z) { z = Add(y, x) }"""
    )
    result = merge(model(FIRST), second)
    assert result and result.details["shared_inputs"] == ["x"]
    assert result.model.input_names == ["x"]
    x = x_values()
    np.testing.assert_array_equal(run(result.model, {"x": x})["z"], -np.maximum(x, 0) + x)


def test_unconnected_input_of_the_second_stays_an_input():
    second = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        second (float[N, 4] y, float[N, 4] bias) => (float[N, 4] z) { z = Add(y, bias) }"""
    )
    result = merge(model(FIRST), second)
    assert result and result.model.input_names == ["x", "bias"]


def test_lower_opset_is_upgraded():
    first = model(FIRST.replace('"" : 17', '"" : 13'))
    result = merge(first, model(SECOND))
    assert result, result.report.summary()
    assert result.details["opset"] == {
        "first": 13,
        "second": 17,
        "merged": 17,
        "converted": "first",
    }
    assert result.model.opset == 17


def tamper(merged: Model) -> Model:
    """The merged model with the second graph's Exp turned into Sin: a wrong merge."""
    proto = onnx.ModelProto()
    proto.CopyFrom(merged.proto)
    for node in proto.graph.node:
        if node.op_type == "Exp":
            node.op_type = "Sin"
    return Model(proto)


def test_the_verification_catches_a_wrong_merge():
    first, second = model(FIRST), model(SECOND)
    result = merge(first, second)
    report = verify_merge(tamper(result.model), first, second, result.details)
    assert not report and [t.name for t in report.failures] == ["z"]
    assert report.failures[0].status == "mismatch"


# ---------------------------------------------------------------------- problems
def test_every_connection_problem_is_listed_at_once():
    second = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        second (float16[N, 4] y, float[N] aux) => (float[N] z) { z = Identity(aux) }"""
    )
    with pytest.raises(SurgeonError) as e:
        merge(model(FIRST), second)
    problems = e.value.problems
    assert len(problems) == 2
    assert "dtype float32 does not match float16" in problems[0]
    assert "rank 2 does not match rank 1" in problems[1]


def test_static_dim_mismatch():
    second = model(SECOND.replace("float[N, 4] y", "float[N, 5] y"))
    with pytest.raises(SurgeonError, match="dim 1 is 4 but the input wants 5"):
        merge(model(FIRST), second)


def test_unknown_names_in_the_map_are_listed_with_suggestions():
    with pytest.raises(UsageError) as e:
        merge(model(FIRST), model(SECOND), [("yy", "y"), ("aux", "zz")])
    text = str(e.value)
    assert "`yy` is not an output" in text and "did you mean `y`" in text
    assert "`zz` is not an input" in text


def test_no_way_to_decide_lists_the_candidates():
    second = model(
        SECOND.replace("float[N, 4] y", "float[N, 4] w")
        .replace("(y)", "(w)")
        .replace(", y)", ", w)")
    )
    with pytest.raises(UsageError) as e:
        merge(model(FIRST), second)
    text = str(e.value)
    assert "--map" in text and "`y` float32[N, 4]" in text and "`w` float32[N, 4]" in text


GROUP_NORM_18 = """<ir_version: 8, opset_import: ["" : 18]>
first (float[2, 4, 3] x, float[2] s) => (float[2, 4, 3] y) {
    y = GroupNormalization<num_groups = 2>(x, s, s)
}"""
IDENTITY_19 = """<ir_version: 9, opset_import: ["" : 19]>
second (float[2, 4, 3] y) => (float[2, 4, 3] z) { z = Identity(y) }"""


def test_opset_gap_the_converter_cannot_bridge():
    # GroupNormalization-18 is deprecated at opsets 19 and 20: no upgrade to 19 exists.
    with pytest.raises(SurgeonError, match="cannot upgrade first to opset 19"):
        merge(model(GROUP_NORM_18), model(IDENTITY_19))


# ---------------------------------------------------------------------- detector + NMS
def sequential(det, nms, images):
    head = run(det, {"images": images})["output0"]
    return run(nms, {"predictions": head}), head


@pytest.mark.parametrize("batch", [1, 4])
def test_tiny_yolo_with_nms_equals_the_chain_and_the_numpy_nms(batch):
    det = load(SAMPLES / "tiny_yolo.onnx")
    nms = build_nms("yolov8", 3, max_det=20)
    result = merge(det, nms, feed_options=FeedOptions(dims={"batch": batch}))
    assert result, result.report.summary()
    # The verifier, called independently, with the chain as reference.
    report = verify(
        result.model,
        Chain([det, nms], links=[{"predictions": "output0"}]),
        tolerance=EXACT,
        feed_options=FeedOptions(seed=5, dims={"batch": batch}),
    )
    assert report and len(report.tensors) == 4
    images = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    got = run(result.model, {"images": images})
    chain, head = sequential(det, nms, images)
    for name in chain:
        np.testing.assert_array_equal(got[name], chain[name])
    want = expected_outputs(reference_nms("yolov8", [head], 3, max_det=20), "efficient", 20)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)
    assert got["num_dets"].shape == (batch, 1) and got["num_dets"].min() > 0


def test_float16_detector_gets_a_cast():
    det = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        det (float16[B, 7, 16] raw) => (float16[B, 7, 16] output0) { output0 = Abs(raw) }"""
    )
    nms = build_nms("yolov8", detector=det, max_det=5)
    assert nms.inputs[0].dtype == "float16"
    result = merge(det, nms)
    assert result, result.report.summary()
    assert {o.name: o.dtype for o in result.model.outputs}["det_scores"] == "float32"


def test_ultralytics_output_name_survives_the_clash_with_the_detector():
    det = load(SAMPLES / "tiny_yolo.onnx")
    result = merge(det, build_nms("yolov8", 3, output_format="ultralytics"))
    assert result and result.model.output_names == ["output0"]
    assert result.details["renamed"]["first"] == {"output0": "tiny_yolo/output0"}


def test_recipe_makes_a_deployable_detector():
    det = load(SAMPLES / "tiny_yolo.onnx")
    result = detector_nms.recipe([det], max_det=10)
    assert result and result.edit == "merge"  # the input is already called images
    assert result.model.input_names == ["images"]
    assert result.model.output_names == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    assert result.params["io_map"] == [["output0", "predictions"]]
    history = [(r["edit"], r["params"].get("max_det")) for r in result.model.provenance]
    assert history == [("nms", 10), ("merge", None)]
    steps = detector_nms.recipe([det], input_name="input", format="mmdeploy")
    assert [s.edit for s in steps] == ["merge", "rename"] and all(steps)
    final = steps[-1].model
    assert final.input_names == ["input"] and final.output_names == ["dets", "labels"]
    out = run(final, {"input": np.zeros((2, 3, 64, 64), np.float32)})
    assert out["dets"].shape == (2, 100, 5)
    assert set(detector_nms.PARAMS) <= set(detector_nms.recipe.__code__.co_varnames)


def test_public_api():
    assert surgeon.merge.__wrapped__ is merge and surgeon.build_nms.__wrapped__ is build_nms


# ---------------------------------------------------------------------- CLI
def test_cli_merge_with_nms_shortcut(cli, samples, tmp_path):
    out = tmp_path / "det_nms.onnx"
    res = cli(
        "merge",
        samples / "tiny_yolo.onnx",
        "--nms",
        "yolov8",
        "--classes",
        "3",
        "-o",
        out,
        "--json",
    )
    assert res.status == 0, res.stderr
    data = res.json
    assert data["schema"] == "surgeon.merge/1" and data["passed"] and data["written"]
    for key in (
        "first",
        "second",
        "output",
        "how",
        "connections",
        "shared_inputs",
        "renamed",
        "opset",
        "kept_outputs",
        "dropped_outputs",
        "output_names",
        "inputs",
        "outputs",
        "nms",
        "verification",
    ):
        assert key in data
    assert data["verification"]["tolerance"]["atol"] == 1e-4  # the shared default
    assert data["nms"]["classes"] == 3 and data["nms"]["classes_inferred"] is False
    merged = load(out)
    det = load(samples / "tiny_yolo.onnx")
    nms = build_nms("yolov8", 3)
    for batch in (1, 4):
        images = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        got = run(merged, {"images": images})
        chain, head = sequential(det, nms, images)
        for name in chain:
            np.testing.assert_array_equal(got[name], chain[name])
        want = expected_outputs(reference_nms("yolov8", [head], 3), "efficient", 100)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


def test_cli_merge_two_files_and_text_output(cli, samples, tmp_path):
    nms_path = tmp_path / "nms.onnx"
    assert cli("nms", "--layout", "yolov8", "--classes", "3", "-o", nms_path).status == 0
    out = tmp_path / "merged.onnx"
    res = cli(
        "merge",
        samples / "tiny_yolo.onnx",
        nms_path,
        "--map",
        "output0=predictions",
        "-o",
        out,
        "--shape",
        "batch=4",
    )
    assert res.status == 0, res.stderr
    assert "PASS" in res.stdout and "output0 float32[batch, 7, 64]" in flat(res.stdout)
    assert "wrote" in res.stdout and out.exists()
    assert onnx.load(str(out)).graph.output[0].name == "num_dets"


def test_cli_classes_read_from_the_detector(cli, samples, tmp_path):
    res = cli(
        "merge", samples / "tiny_yolo.onnx", "--nms", "yolov8", "-o", tmp_path / "m.onnx", "--json"
    )
    assert res.status == 0, res.stderr
    assert res.json["nms"]["classes"] == 3 and res.json["nms"]["classes_inferred"] is True


def test_cli_static_dim_mismatch_writes_nothing(cli, samples, tmp_path):
    out = tmp_path / "m.onnx"
    res = cli("merge", samples / "tiny_yolo.onnx", "--nms", "yolov8", "--classes", "80", "-o", out)
    assert res.status == 2
    assert "dim 1 is 7 but the input wants 84" in flat(res.stderr)
    assert not out.exists()


def test_cli_dtype_and_rank_problems_listed_together(cli, tmp_path):
    first = write(parse(FIRST), tmp_path / "first.onnx")
    second = write(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            second (float16[N, 4] y, float[N] aux) => (float[N] z) { z = Identity(aux) }"""
        ),
        tmp_path / "second.onnx",
    )
    out = tmp_path / "m.onnx"
    res = cli("merge", first, second, "-o", out, "--json")
    assert res.status == 2 and not out.exists()
    problems = res.json["problems"]
    assert len(problems) == 2 and "dtype" in problems[0] and "rank" in problems[1]


def test_cli_unknown_map_names(cli, tmp_path):
    first = write(parse(FIRST), tmp_path / "first.onnx")
    second = write(parse(SECOND), tmp_path / "second.onnx")
    out = tmp_path / "m.onnx"
    res = cli("merge", first, second, "--map", "yy=y", "--map", "aux=zz", "-o", out)
    assert res.status == 2 and not out.exists()
    assert "`yy` is not an output of first.onnx" in flat(res.stderr) and "`zz`" in res.stderr


def test_cli_opset_gap(cli, tmp_path):
    first = write(parse(GROUP_NORM_18), tmp_path / "gn.onnx")
    second = write(parse(IDENTITY_19), tmp_path / "id.onnx")
    out = tmp_path / "m.onnx"
    res = cli("merge", first, second, "-o", out)
    assert res.status == 2 and not out.exists()
    assert "cannot upgrade gn.onnx to opset 19" in flat(res.stderr)


def test_cli_failed_verification_exits_1_and_writes_nothing(cli, tmp_path, monkeypatch):
    import surgeon.edits.merge as merge_module

    real = merge_module.build_merged
    monkeypatch.setattr(merge_module, "build_merged", lambda *a, **k: tamper(real(*a, **k)))
    first = write(parse(FIRST), tmp_path / "first.onnx")
    second = write(parse(SECOND), tmp_path / "second.onnx")
    out = tmp_path / "m.onnx"
    res = cli("merge", first, second, "-o", out, "--json")
    assert res.status == 1 and not out.exists()
    assert res.json["passed"] is False and res.json["written"] is False
    assert res.json["verification"]["tensors"][0]["status"] == "mismatch"
    res = cli("merge", first, second, "-o", out)
    assert res.status == 1 and "nothing written" in flat(res.stdout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["SECOND", "--nms", "yolov8"], "not both"),
        ([], "give SECOND.onnx or --nms"),
        (["SECOND", "--iou", "0.5"], "--iou only applies with --nms"),
        (["--nms", "yolo8"], "did you mean `yolov8`"),
        (["--nms", "detr"], "number of classes is needed"),
        (["--nms", "yolov8", "-o", "FIRST"], "refusing to overwrite"),
    ],
)
def test_cli_usage_errors(cli, samples, tmp_path, args, message):
    second = write(parse(SECOND), tmp_path / "second.onnx")
    det = samples / "tiny_yolo.onnx"
    argv = [str(second) if a == "SECOND" else str(det) if a == "FIRST" else a for a in args]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "m.onnx")]
    before = det.read_bytes()
    res = cli("merge", det, *argv)
    assert res.status == 2, res.stdout
    assert message in flat(res.stderr)
    assert not (tmp_path / "m.onnx").exists() and det.read_bytes() == before


def test_cli_no_verify_and_no_output(cli, samples, tmp_path):
    out = tmp_path / "m.onnx"
    res = cli(
        "merge", samples / "tiny_yolo.onnx", "--nms", "yolov8", "--no-verify", "-o", out, "--json"
    )
    assert res.status == 0 and out.exists()
    assert res.json["verification"] is None and res.json["written"] is True
    res = cli("merge", samples / "tiny_yolo.onnx", "--nms", "yolov8", "--json")
    assert res.status == 0 and res.json["written"] is False and res.json["passed"] is True


def test_map_accepts_the_equals_form_of_other_commands(tmp_path):
    from conftest import SAMPLES, run_cli

    res = run_cli(
        "merge",
        SAMPLES / "tiny_yolo.onnx",
        "--nms",
        "yolov8",
        "--map",
        "output0=predictions",
        "-o",
        tmp_path / "m.onnx",
        "--json",
    )
    assert res.status == 0, res.stderr


@pytest.mark.parametrize("fmt", ["efficient", "ultralytics", "mmdeploy"])
@pytest.mark.parametrize("score", [0.999, 0.01])
def test_an_nms_that_kept_no_box_says_it_was_not_exercised(cli, fmt, score):
    """Bit-identity of zero padding proves nothing about the NMS: say so."""
    res = cli(
        "merge",
        SAMPLES / "tiny_yolo.onnx",
        "--nms",
        "yolov8",
        "--classes",
        "3",
        "--score",
        str(score),
        "--format",
        fmt,
        "--json",
    )
    assert res.status == 0, res.stderr
    notes = " ".join(res.json["verification"]["notes"])
    assert ("NMS was not exercised" in notes) == (score > 0.5)
