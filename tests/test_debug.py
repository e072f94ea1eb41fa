"""`surgeon debug`: tap selection, statistics, anomaly verdicts, layer-wise comparison."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SAMPLES, parse, write
from onnx import numpy_helper

from surgeon.debugging import DebugOptions, debug
from surgeon.edits.tap import select_taps, tap
from surgeon.errors import NameNotFoundError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.loading import load
from surgeon.statistics import stats_from_array

NAN_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 8] x) => (y) {
    a = Abs (x)
    b = Neg (a)
    one = Constant <value = float {1.0}> ()
    c = Sub (b, one)
    d = Sqrt (c)
    y = Add (d, x)
}"""


def _plain_run(path, feeds, outputs):
    m = onnx.load(str(path))
    for o in outputs:
        if o not in [x.name for x in m.graph.output]:
            m.graph.output.add(name=o)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(outputs, s.run(outputs, feeds), strict=True))


def _perturb(src, dst, weight, delta=0.5):
    m = onnx.load(str(src))
    for t in m.graph.initializer:
        if t.name == weight:
            a = numpy_helper.to_array(t).copy()
            a.flat[0] += delta
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, str(dst))
    return dst


# ---------------------------------------------------------------- selection
def test_select_by_node_tensor_glob_op_all():
    m = load(SAMPLES / "tiny_yolo.onnx")
    assert select_taps(m, ["backbone/conv1"]) == ["backbone/conv1_out"]
    assert select_taps(m, ["backbone/act0_out"]) == ["backbone/act0_out"]
    assert select_taps(m, ["backbone/*"]) == [
        "backbone/conv0_out",
        "backbone/act0_out",
        "backbone/conv1_out",
        "backbone/act1_out",
        "backbone/conv2_out",
        "backbone/act2_out",
    ]
    assert select_taps(m, [], ops=["Conv"]) == [
        "backbone/conv0_out",
        "backbone/conv1_out",
        "backbone/conv2_out",
        "head/conv_out",
    ]
    everything = select_taps(m, ["all"])
    assert len(everything) == 22 and everything[-1] == "output0"
    # a multi-output node means all its outputs, in order
    assert select_taps(m, ["head/split"]) == ["head/xy_raw", "head/wh_raw", "head/cls_raw"]


def test_unknown_name_suggests_close_matches():
    m = load(SAMPLES / "two_conv.onnx")
    with pytest.raises(NameNotFoundError) as e:
        select_taps(m, ["conv_0"])
    assert "conv0" in e.value.suggestions


def test_unknown_op_type():
    m = load(SAMPLES / "two_conv.onnx")
    with pytest.raises(NameNotFoundError, match="Conv"):
        select_taps(m, [], ops=["Cnv"])


def test_cli_unknown_tap_is_exit_2_and_writes_nothing(cli, tmp_path):
    res = cli(
        "debug",
        SAMPLES / "two_conv.onnx",
        "--tap",
        "conv_0",
        "-o",
        tmp_path / "t.onnx",
        "--save",
        tmp_path / "t.npz",
    )
    assert res.status == 2
    assert "did you mean `conv0`" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_subgraph_tensors_are_tapped_by_where_they_live(cli):
    res = cli("debug", SAMPLES / "if_model.onnx", "--json")
    assert res.status == 0 and res.json["not_tappable"] == []
    executed = {x["name"]: x["executed"] for x in res.json["bodies"]["taps"]}
    assert executed == {"choose/then_branch/then_y": True, "choose/else_branch/else_y": False}
    res = cli("debug", SAMPLES / "if_model.onnx", "--tap", "then_y", "--json")
    assert res.status == 0
    assert [t["name"] for t in res.json["taps"]] == ["choose/then_branch/then_y"]


# ---------------------------------------------------------------- tap edit
def test_tap_keeps_original_outputs_bit_identical_and_types_taps():
    m = load(SAMPLES / "tiny_yolo.onnx")
    before = m.proto.SerializeToString()
    result = tap(m, ["all"])
    assert result and result.report.tolerance.exact
    assert m.proto.SerializeToString() == before  # input untouched
    outs = {o.name: o for o in result.model.outputs}
    assert outs["head/scores"].dtype == "float32"
    assert result.model.output_names[0] == "output0"
    assert result.model.provenance[-1]["edit"] == "tap"


def test_tap_learns_types_inference_cannot_give(tmp_path):
    # ONNX shape inference does not know onnxruntime's contrib ops; onnxruntime does.
    m = parse("""<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    agraph (float[N, 4] x) => (y) {
        z = com.microsoft.Gelu (x)
        y = Mul (z, x)
    }""")
    model = load(write(m, tmp_path / "m.onnx"))
    result = tap(model, ["z"])
    assert {o.name: o.dtype for o in result.model.outputs}["z"] == "float32"


# ---------------------------------------------------------------- statistics
def test_statistics_mode_matches_numpy_on_the_same_values():
    m = load(SAMPLES / "tiny_yolo.onnx")
    lean = debug(m, DebugOptions())
    full = debug(m, DebugOptions(keep_values=True))
    assert lean.mode == "statistics" and full.mode == "values"
    assert [s.name for s in lean.stats] == [s.name for s in full.stats]
    for a, b in zip(lean.stats, full.stats, strict=True):
        ref = stats_from_array(b.name, b.node, b.op, b.index, full.values[b.name])
        assert a.shape == ref.shape and a.dtype == ref.dtype
        assert a.nan == ref.nan and a.inf == ref.inf
        assert a.min == pytest.approx(ref.min) and a.max == pytest.approx(ref.max)
        assert a.mean == pytest.approx(ref.mean, rel=1e-4, abs=1e-6)
        assert a.std == pytest.approx(ref.std, rel=1e-3, abs=1e-5)
        assert a.zeros == pytest.approx(ref.zeros)


def test_stats_against_independent_numpy():
    x = np.array([[0.0, 1.0, -3.0], [np.nan, np.inf, 0.0]], np.float32)
    s = stats_from_array("t", "n", "Op", 0, x)
    assert (s.nan, s.inf) == (1, 1)
    assert s.min == -3.0 and s.max == math.inf
    assert s.zeros == pytest.approx(2 / 6)
    assert math.isnan(s.mean)
    assert s.flags == ["nan", "inf"]
    z = stats_from_array("z", "n", "Op", 0, np.zeros((3, 3), np.float32))
    assert z.flags == ["all-zero"]
    c = stats_from_array("c", "n", "Op", 0, np.full((4,), 7.0, np.float32))
    assert c.flags == ["constant"]
    big = stats_from_array("b", "n", "Op", 0, np.array([1e6, 1.0], np.float32))
    assert big.flags == ["beyond-float16"]
    ints = stats_from_array("i", "n", "Shape", 0, np.array([1, 1], np.int64))
    assert ints.flags == []  # constant integers (shapes) are normal


@pytest.mark.parametrize("keep_values", [False, True])
def test_planted_nan_names_the_node(tmp_path, keep_values):
    model = load(write(parse(NAN_MODEL), tmp_path / "nan.onnx"))
    model.proto.graph.node[4].name = "sqrt_node"
    report = debug(model, DebugOptions(keep_values=keep_values))
    assert not report
    assert report.first_anomaly.name == "d"
    assert report.first_anomaly.node == "sqrt_node"
    assert report.verdict().startswith("first NaN at `d`, produced by `sqrt_node` (Sqrt)")


def test_cli_planted_nan_exit_1(cli, tmp_path):
    m = parse(NAN_MODEL)
    m.graph.node[4].name = "sqrt_node"
    path = write(m, tmp_path / "nan.onnx")
    res = cli("debug", path)
    assert res.status == 1
    assert "first NaN at `d`, produced by `sqrt_node` (Sqrt)" in res.stdout.replace("\n", " ")
    res = cli("debug", path, "--json")
    assert res.json["first_anomaly"]["node"] == "sqrt_node"
    assert res.json["passed"] is False


# ---------------------------------------------------------------- comparison
def test_reference_model_root_cause_is_the_perturbed_layer(tmp_path):
    bad = _perturb(SAMPLES / "tiny_yolo.onnx", tmp_path / "bad.onnx", "backbone/conv1.weight")
    report = debug(load(bad), DebugOptions(reference=SAMPLES / "tiny_yolo.onnx"))
    assert not report
    assert report.root_cause.node == "backbone/conv1"
    assert report.root_cause.diff.name == "backbone/conv1_out"
    # later layers diverge too, but they are not root causes
    diverged = [layer.diff.name for layer in report.diverged]
    assert diverged[0] == "backbone/conv1_out" and len(diverged) > 3
    assert report.other_roots == []
    earlier = [layer for layer in report.layers if layer.index < report.root_cause.index]
    assert earlier and all(layer.diff.max_abs == 0 for layer in earlier)


def test_reference_npz_from_a_plain_run(cli, tmp_path):
    bad = _perturb(SAMPLES / "two_conv.onnx", tmp_path / "bad.onnx", "conv1.weight")
    feeds = {"in": np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    acts = _plain_run(SAMPLES / "two_conv.onnx", feeds, ["conv0_out", "out"])
    np.savez(tmp_path / "acts.npz", **acts, **feeds)
    res = cli("debug", bad, "--ref", tmp_path / "acts.npz", "--json")
    assert res.status == 1
    assert res.json["root_cause"]["node"] == "conv1"
    assert res.json["feeds"]["in"]["shape"] == [1, 3, 16, 16]


def test_reference_npz_without_inputs_is_refused(cli, tmp_path):
    np.savez(tmp_path / "acts.npz", conv0_out=np.zeros((1, 8, 4, 4), np.float32))
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz")
    assert res.status == 2 and "holds no values for input(s) `in`" in res.stderr


def test_map_pairs_renamed_tensors(tmp_path):
    m = onnx.load(str(SAMPLES / "two_conv.onnx"))
    for n in m.graph.node:
        n.output[:] = ["mid" if o == "conv0_out" else o for o in n.output]
        n.input[:] = ["mid" if i == "conv0_out" else i for i in n.input]
    renamed = write(m, tmp_path / "renamed.onnx")
    report = debug(
        load(renamed),
        DebugOptions(reference=SAMPLES / "two_conv.onnx", name_map={"conv0_out": "mid"}),
    )
    assert report and [layer.diff.reference for layer in report.layers] == ["conv0_out", "out"]
    with pytest.raises(NameNotFoundError):
        debug(
            load(renamed),
            DebugOptions(reference=SAMPLES / "two_conv.onnx", name_map={"conv0_ot": "mid"}),
        )


def test_float16_model_against_float32_original(tmp_path):
    src = onnx.load(str(SAMPLES / "two_conv.onnx"))
    for t in src.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in list(src.graph.input) + list(src.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    half = load(write(src, tmp_path / "half.onnx"))
    ref = SAMPLES / "two_conv.onnx"
    loose = debug(
        half,
        DebugOptions(
            reference=ref, tolerance=__import__("surgeon").Tolerance(atol=5e-2, rtol=5e-2)
        ),
    )
    assert loose, loose.verdict()
    assert all(layer.diff.cosine > 0.999 for layer in loose.layers)
    assert "compared as float32" in loose.layers[0].diff.message
    strict = debug(half, DebugOptions(reference=ref))
    # at 1e-4 every float16 node rounds beyond tolerance; the root cause is the one whose
    # own error is worst (in multiples of the tolerance), whatever its position
    assert not strict and strict.isolated_verdict == "found"
    worst = max(strict.layers, key=lambda layer: layer.severity.excess)
    assert strict.root_cause is worst and worst.rank == 1


def test_compare_two_optimisation_levels(cli):
    res = cli("debug", SAMPLES / "tiny_yolo.onnx", "--ref-optimization", "all", "--json")
    assert res.status == 0, res.stdout
    assert res.json["reference"].endswith("optimization=all")
    assert len(res.json["comparison"]) == 22


# ---------------------------------------------------------------- outputs
def test_outputs_written_and_consistent(cli, tmp_path):
    res = cli(
        "debug",
        SAMPLES / "two_conv.onnx",
        "--tap",
        "conv0",
        "-o",
        tmp_path / "tapped.onnx",
        "--save",
        tmp_path / "taps.npz",
        "--html",
        tmp_path / "report.html",
        "--shape",
        "in:1x3x8x8",
    )
    assert res.status == 0, res.stderr
    tapped = load(tmp_path / "tapped.onnx")
    assert tapped.output_names == ["out", "conv0_out"]
    assert tapped.outputs[1].dtype == "float32"
    with np.load(tmp_path / "taps.npz") as z:
        assert sorted(z.files) == ["conv0_out", "in"]  # the inputs too: usable as --ref
        feeds = make_feeds(
            load(SAMPLES / "two_conv.onnx"), FeedOptions(shapes={"in": (1, 3, 8, 8)})
        )
        expected = _plain_run(SAMPLES / "two_conv.onnx", feeds, ["conv0_out"])["conv0_out"]
        assert np.array_equal(z["conv0_out"], expected)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "conv0_out" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "<script" not in page


def test_json_keys(cli):
    res = cli("debug", SAMPLES / "two_conv.onnx", "--json", "--shape", "H=8", "--shape", "W=8")
    data = res.json
    assert data["schema"] == "surgeon.debug/1"
    assert set(data) >= {
        "verdict",
        "passed",
        "taps",
        "tap_check",
        "first_anomaly",
        "not_tappable",
        "seed",
        "feeds",
        "mode",
    }
    assert data["tap_check"]["tolerance"]["exact"] is True
    assert set(data["taps"][0]) >= {
        "name",
        "node",
        "op",
        "shape",
        "dtype",
        "min",
        "max",
        "mean",
        "std",
        "nan",
        "inf",
        "zeros",
        "flags",
    }
    assert data["feeds"]["in"]["shape"] == [1, 3, 8, 8]


def test_output_would_overwrite_input(cli, samples):
    res = cli("debug", samples / "two_conv.onnx", "-o", samples / "two_conv.onnx")
    assert res.status == 2 and "--inplace" in res.stderr


@pytest.mark.parametrize("keep_values", [False, True])
def test_declared_shapes_that_lie_are_reported(tmp_path, keep_values):
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 8] x) => (float[2, 4] y) {
        a = Relu (x)
        y = Identity (a)
    }""")
    m.graph.value_info.append(
        onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2, 3])
    )
    report = debug(load(write(m, tmp_path / "liar.onnx")), DebugOptions(keep_values=keep_values))
    found = {(x.name, x.kind) for x in report.shape_mismatches}
    assert found == {("a", "dim"), ("y", "dim")}
    assert report  # informational: not a failure
    assert report.to_dict()["declared_shape_mismatches"][0]["name"] == "a"


def test_float16_tap_check_failure_explains_itself():
    from surgeon.compare import DiffReport, TensorDiff
    from surgeon.debugging import DebugReport

    failing = DiffReport(
        "tap check", "m", "m", [TensorDiff("y", "y", "mismatch", mismatches=3, size=8)]
    )
    report = DebugReport("m.onnx", [], failing, {}, {}, 0, "disabled", float16=True)
    assert "float16 model" in report.verdict() and "--optimization all" in report.verdict()
    # once the check allowed float16 rounding, a failure says the model is that sensitive
    report.float16_tap_tolerance = True
    assert "already allowed 8 float16 ulps" in report.verdict()
    assert "--optimization all" not in report.verdict()


def test_saved_taps_work_as_reference(cli, tmp_path):
    res = cli(
        "debug",
        SAMPLES / "two_conv.onnx",
        "--save",
        tmp_path / "acts.npz",
        "--shape",
        "H=8",
        "--shape",
        "W=8",
    )
    assert res.status == 0, res.stderr
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz", "--json")
    assert res.status == 0, res.stderr
    assert len(res.json["comparison"]) == 2 and res.json["root_cause"] is None


def test_outputs_may_not_replace_the_reference_or_weights(cli, samples, tmp_path):
    ref = samples / "two_conv.onnx"
    before = ref.read_bytes()
    for flag in ("--html", "--save", "-o"):
        res = cli("debug", samples / "two_conv.onnx", "--ref", ref, flag, ref)
        assert res.status == 2, (flag, res.stdout)
    assert ref.read_bytes() == before
    data = samples / "ext_weights.onnx.data"
    before = data.read_bytes()
    res = cli("debug", samples / "ext_weights.onnx", "--save", data)
    assert res.status == 2 and data.read_bytes() == before
    res = cli(
        "debug", samples / "two_conv.onnx", "--save", tmp_path / "x", "--html", tmp_path / "x"
    )
    assert res.status == 2 and "both write" in res.stderr


def test_save_keeps_tensors_named_like_savez_arguments(cli, tmp_path):
    """np.savez(file, *args, allow_pickle=..., **kwds): tensors named `file` or
    `allow_pickle` must not collide with its parameters (issue 12)."""
    path = write(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            agraph (float[2] file) => (float[2] allow_pickle) {
                args = Abs (file)
                kwds = Neg (args)
                allow_pickle = Relu (kwds)
            }"""
        ),
        tmp_path / "m.onnx",
    )
    res = cli("debug", path, "--save", tmp_path / "taps.npz")
    assert res.status == 0, res.stderr
    with np.load(tmp_path / "taps.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["allow_pickle", "args", "file", "kwds"]
        assert np.array_equal(data["kwds"], -np.abs(data["file"]))
    # and the file works as a reference
    res = cli("debug", path, "--ref", tmp_path / "taps.npz")
    assert res.status == 0, res.stderr


def test_runs_without_spinning_threads_keep_the_same_numbers():
    # debug's runs set spinning=False (idle onnxruntime threads sleep): the option reaches
    # the session, and the work split, hence every number, is the same as with spinning.
    from surgeon.model import Model
    from surgeon.runner import RunOptions, run, session_options

    so = session_options(RunOptions(spinning=False))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[64, 3000] x) => (float[64] y) {
            a = Constant <value = int64[1] {1}> ()
            y = ReduceSum <keepdims = 0> (x, a)
        }"""
    )
    x = np.random.default_rng(0).standard_normal((64, 3000)).astype(np.float32)
    spin = run(Model(proto), {"x": x}, options=RunOptions(threads=2))["y"]
    rest = run(Model(proto), {"x": x}, options=RunOptions(threads=2, spinning=False))["y"]
    assert spin.tobytes() == rest.tobytes()


def test_only_the_cli_changes_the_allocator_policy(cli, monkeypatch):
    # mallopt is process-wide: the debug command sets it, the library's debug() does not.
    import ctypes

    calls = []

    class FakeLibc:
        def __init__(self, name):
            self.mallopt = lambda *args: calls.append(args)

    monkeypatch.setattr(ctypes, "CDLL", FakeLibc)
    debug(load(SAMPLES / "if_model.onnx"), DebugOptions())
    assert calls == []
    assert cli("debug", SAMPLES / "if_model.onnx", "--json").status == 0
    assert calls == [(-3, 128 * 1024)]
