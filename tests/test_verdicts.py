"""Verdicts of `surgeon debug`: a NaN/Inf is blamed where it is born, user inputs and
deliberate constants are not anomalies, references that do not fit are clear errors, and
every report renders whatever numbers (None, NaN, Inf) it holds."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from surgeon.compare import TensorDiff, Tolerance
from surgeon.debugging import DebugOptions, DebugReport, LayerDiff, NonFinite, debug
from surgeon.loading import load
from surgeon.statistics import TensorStats

MODES = pytest.mark.parametrize("keep_values", [False, True], ids=["statistics", "values"])


def _model(text: str, tmp_path, name="m.onnx", constants=()):
    """A model from text, with extra Constant nodes (name, array) placed first (the text
    syntax cannot write -inf)."""
    proto = parse(text)
    for out, array in reversed(list(constants)):
        node = helper.make_node(
            "Constant", [], [out], name=out, value=numpy_helper.from_array(array, out)
        )
        proto.graph.node.insert(0, node)
    return load(write(proto, tmp_path / name))


# ---------------------------------------------------------------- where NaN/Inf is born
@MODES
def test_inf_born_from_finite_inputs_fails(tmp_path, keep_values):
    model = _model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] x) => (float[2, 4] y) {
            z = Sub (x, x)
            q = Div (x, z)
            y = Relu (q)
        }""",
        tmp_path,
    )
    report = debug(model, DebugOptions(keep_values=keep_values))
    assert not report
    assert [(x.tensor, x.kind) for x in report.born] == [("q", "born")]
    assert report.first_anomaly.name == "q"
    assert "first Inf at `q`" in report.verdict() and "from finite inputs" in report.verdict()
    kinds = {x.tensor: x.kind for x in report.nonfinite}
    assert kinds["y"] == "inherited"


@MODES
def test_nan_in_the_users_input_is_reported_as_such(cli, tmp_path, keep_values):
    model = _model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] images) => (float[2, 4] y) {
            conv0_out = Relu (images)
            y = Neg (conv0_out)
        }""",
        tmp_path,
    )
    x = np.ones((2, 4), np.float32)
    x.flat[[0, 3, 5]] = np.nan
    report = debug(model, DebugOptions(keep_values=keep_values), feeds={"images": x})
    assert report, report.verdict()
    assert report.verdict().startswith("input `images` contains 3 NaN")
    assert "first NaN" not in report.verdict()
    assert report.first_anomaly is None
    np.savez(tmp_path / "feeds.npz", images=x)
    res = cli("debug", model.path, "--feeds", tmp_path / "feeds.npz", "--json")
    assert res.status == 0
    assert res.json["nonfinite"][0] == {
        "tensor": "images",
        "kind": "input",
        "nan": 3,
        "inf": 0,
        "node": None,
        "op": None,
        "untapped_inputs": [],
        "origin": None,
        "constants": [],
        "outputs": [],
        "from_inf": False,
    }


ATTENTION = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4, 8] q, float[1, 4, 8] k, float[1, 4, 8] v) => (float[1, 4, 8] y) {
    kt = Transpose <perm = [0, 2, 1]> (k)
    scores = MatMul (q, kt)
    shape = Shape (scores)
    ones = ConstantOfShape <value = bool[1] {1}> (shape)
    keep = Trilu <upper = 0> (ones)
    zero = Constant <value = float {0.0}> ()
    bias = Where (keep, zero, FloatNegInf)
    masked = Add (scores, bias)
    dead = Where (RowIsDead, FloatNegInf, masked)
    probs = Softmax <axis = -1> (dead)
    isnan = IsNaN (probs)
    safe = Where (isnan, zero, probs)
    zeros = ConstantOfShape <value = float[1] {0.0}> (shape)
    kept = Add (safe, zeros)
    y = MatMul (kept, v)
}"""


@MODES
def test_attention_with_a_neg_inf_mask_constant_passes(cli, tmp_path, keep_values):
    """The expanded Attention of onnx's operator tests: a `FloatNegInf` Constant masks the
    scores (causal), a fully masked row makes Softmax give NaN, and a Where replaces it.
    Nothing there is an anomaly: the non-finite values flow from constants."""
    dead_row = np.zeros((1, 4, 1), bool)
    dead_row[0, 0, 0] = True
    model = _model(
        ATTENTION,
        tmp_path,
        constants=[
            ("FloatNegInf", np.array(-np.inf, np.float32)),
            ("RowIsDead", dead_row),
        ],
    )
    report = debug(model, DebugOptions(keep_values=keep_values))
    assert report, report.verdict()
    kinds = {x.tensor: x.kind for x in report.nonfinite}
    assert kinds["FloatNegInf"] == "constant"
    assert kinds["bias"] == "constant"
    assert kinds["masked"] == kinds["dead"] == kinds["probs"] == "inherited"
    assert report.born == []
    # the all-zero ConstantOfShape is flagged in the table but is not the first anomaly
    zeros = next(s for s in report.stats if s.name == "zeros")
    assert "all-zero" in zeros.flags
    assert report.first_anomaly is None
    verdict = report.verdict()
    assert "deliberate non-finite values in constants: `FloatNegInf`" in verdict
    assert "no NaN/Inf is born inside the model" in verdict
    res = cli("debug", model.path)
    assert res.status == 0, res.stdout
    assert "deliberate constant" in " ".join(res.stdout.split())


def test_real_anomaly_ranks_above_flags_on_constants_and_integers(tmp_path):
    model = _model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] x) => (float[2, 4] y, int64[1] n) {
            shape = Shape (x)
            zeros = ConstantOfShape <value = float[1] {0.0}> (shape)
            a = Abs (x)
            b = Neg (a)
            dead = Relu (b)
            y = Add (dead, zeros)
            big = Constant <value = int64[1] {100000}> ()
            n = Mul (big, big)
        }""",
        tmp_path,
    )
    report = debug(model)
    assert report  # flags are not failures
    assert report.first_anomaly.name == "dead"
    assert "first anomaly: all-zero at `dead`" in report.verdict()
    flagged = {s.name for s in report.stats if s.flags}
    assert "zeros" in flagged  # kept in the table


def test_untapped_inputs_make_the_birthplace_unknown_and_still_fail(tmp_path):
    model = _model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 8] x) => (float[2, 8] y) {
            a = Abs (x)
            b = Neg (a)
            one = Constant <value = float {1.0}> ()
            c = Sub (b, one)
            d = Sqrt (c)
            y = Add (d, x)
        }""",
        tmp_path,
    )
    report = debug(model, DebugOptions(taps=("d",)))
    assert not report
    (first,) = report.born
    assert first.kind == "unknown" and first.untapped_inputs == ["c"]
    assert "its input(s) `c` were not tapped" in report.verdict()
    report = debug(model, DebugOptions(taps=("c", "d")))
    assert [x.kind for x in report.born] == ["born"]


# ---------------------------------------------------------------- references that do not fit
def _acts(tmp_path, **extra):
    feeds = {"in": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    report = debug(load(SAMPLES / "two_conv.onnx"), DebugOptions(keep_values=True), feeds=feeds)
    arrays = {**feeds, **report.values, **extra}
    return arrays


def test_reference_npz_matching_nothing_is_a_usage_error_with_close_matches(cli, tmp_path):
    arrays = _acts(tmp_path)
    np.savez(tmp_path / "acts.npz", **{"in": arrays["in"], "conv0_outt": arrays["conv0_out"]})
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz")
    assert res.status == 2, res.stdout
    text = " ".join(res.stderr.split())
    assert "nothing to compare" in text
    assert "`conv0_outt`: did you mean `conv0_out`" in text
    assert "Traceback" not in res.stderr


def test_unused_reference_keys_are_listed(cli, tmp_path):
    arrays = _acts(tmp_path, extra_layer=np.zeros(3, np.float32))
    np.savez(tmp_path / "acts.npz", **arrays)
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz", "--json")
    assert res.status == 0
    assert res.json["unused_reference"] == ["extra_layer"]
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz")
    assert "matched no tapped tensor (not compared): extra_layer" in " ".join(res.stdout.split())


def test_reference_tensor_of_the_wrong_shape_is_a_row_not_a_crash(cli, tmp_path):
    arrays = _acts(tmp_path)
    arrays["conv0_out"] = arrays["conv0_out"][:, :2]
    np.savez(tmp_path / "acts.npz", **arrays)
    res = cli(
        "debug",
        SAMPLES / "two_conv.onnx",
        "--ref",
        tmp_path / "acts.npz",
        "--html",
        tmp_path / "r.html",
    )
    assert res.status == 1, res.stderr
    text = " ".join(res.stdout.split())
    assert "does not fit the reference (shape [1, 8, 16, 16] != reference [1, 2, 16, 16])" in text
    assert "ROOT CAUSE" in text
    assert "ROOT CAUSE (shape)" in (tmp_path / "r.html").read_text()
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", tmp_path / "acts.npz", "--json")
    row = res.json["comparison"][0]
    assert row["status"] == "shape" and row["max_abs"] is None


def test_reference_model_with_no_common_names_is_a_usage_error(cli, tmp_path):
    m = onnx.load(str(SAMPLES / "two_conv.onnx"))
    renamed = {o: f"ref_{o}" for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        n.input[:] = [renamed.get(x, x) for x in n.input]
        n.output[:] = [renamed[o] for o in n.output]
    for o in m.graph.output:
        o.name = renamed[o.name]
    ref = write(m, tmp_path / "ref.onnx")
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", ref)
    assert res.status == 2, res.stdout + res.stderr
    text = " ".join(res.stderr.split())
    assert "nothing to compare" in text and "`ref_conv0_out`: did you mean `conv0_out`" in text
    # --map pairs them, and then the comparison runs
    res = cli("debug", SAMPLES / "two_conv.onnx", "--ref", ref, "--map", "ref_out=out")
    assert res.status == 0, res.stderr


FP16 = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float16[2, 4] x) => (float16[2, 4] y) {
    a = Abs (x)
    y = Neg (a)
}"""


def test_float32_activations_for_a_float16_model(cli, tmp_path):
    model = _model(FP16, tmp_path)
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "acts.npz", x=x, a=np.abs(x), y=-np.abs(x))
    res = cli("debug", model.path, "--ref", tmp_path / "acts.npz", "--atol", "1e-3", "--json")
    assert res.status == 0, res.stderr
    assert res.json["notes"][0] == (
        "input `x`: float32 values from acts.npz fed as float16, the model's dtype"
    )
    # and the tap check allowed float16 rounding, which the report says
    assert res.json["notes"][1].startswith("float16 model: the tap check allows atol=")
    assert len(res.json["notes"]) == 2
    assert res.json["feeds"]["x"]["dtype"] == "float16"
    # values of another kind are an error naming the input, not onnxruntime's message
    np.savez(tmp_path / "ints.npz", x=x.astype(np.int64), y=-np.abs(x))
    res = cli("debug", model.path, "--ref", tmp_path / "ints.npz")
    assert res.status == 2
    text = " ".join(res.stderr.split())
    assert "`x` in ints.npz is int64; m.onnx wants float16" in text
    assert "Unexpected input data type" not in text
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 4), np.float16), y=-np.abs(x))
    res = cli("debug", model.path, "--ref", tmp_path / "shape.npz")
    assert res.status == 2 and "has shape [3, 4]" in res.stderr


# ---------------------------------------------------------------- every number renders
NUMBERS = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stats_numbers=st.lists(NUMBERS, min_size=6, max_size=6),
    diff_numbers=st.lists(NUMBERS, min_size=3, max_size=3),
    status=st.sampled_from(["ok", "mismatch", "shape", "dtype", "missing"]),
    tol=st.sampled_from([0.0, 1e-4, math.inf]),
    kind=st.sampled_from(["born", "unknown", "inherited", "input", "constant"]),
)
def test_reports_render_whatever_numbers_they_hold(stats_numbers, diff_numbers, status, tol, kind):
    from rich.console import Console

    from surgeon.jsonout import write_json
    from surgeon.report.debug import render_debug
    from surgeon.report.html import debug_html

    mn, mx, mean, std, zeros, _ = stats_numbers
    s = TensorStats(
        "t",
        "n",
        "Op",
        0,
        None,
        None,
        size=3,
        min=mn,
        max=mx,
        mean=mean,
        std=std,
        zeros=zeros,
        nan=1,
        inf=1,
        flags=["nan", "inf", "all-zero"],
    )
    max_abs, max_rel, cosine = diff_numbers
    d = TensorDiff(
        "t",
        "t",
        status,
        max_abs=max_abs,
        max_rel=max_rel,
        cosine=cosine,
        message="shape [1] != reference [2]" if status == "shape" else "",
    )
    layer = LayerDiff(d, "n", "Op", 0, [], diverged=status != "ok")
    report = DebugReport(
        model="m.onnx",
        stats=[s, TensorStats("u", "n2", "Op", 1, [2], "float32")],
        tap_check=None,
        not_tappable={},
        feeds={"x": {"shape": None, "dtype": "sequence"}, "y": {"shape": [2], "dtype": "float32"}},
        seed=0,
        optimization="disabled",
        reference="ref.npz",
        tolerance=Tolerance(atol=tol, rtol=tol),
        layers=[layer],
        root_cause=layer if layer.diverged else None,
        first_anomaly=s,
        nonfinite=[NonFinite("t", kind, 1, 1, "n", "Op", ["c"] if kind == "unknown" else [])],
        unused_reference=["extra"],
        notes=["a note"],
    )
    report.verdict()
    for width in (80, 140):
        out = io.StringIO()
        render_debug(Console(file=out, width=width, color_system=None), report, rows=0)
        assert "t" in out.getvalue()
    page = debug_html(report)
    assert "<table>" in page
    buffer = io.StringIO()
    write_json(buffer, report.to_dict())  # allow_nan=False: NaN must not reach JSON
    json.loads(buffer.getvalue())


# ---------------------------------------------------------------- surgeon's own nodes
def test_statistics_nodes_onnxruntime_cannot_run_fall_back_to_numpy(tmp_path, monkeypatch):
    """A run-time failure in the statistics model is surgeon's, not the model's: the
    tensors are measured with numpy instead, with a note, and the numbers are the same."""
    import surgeon.debugging.orchestration as orchestration
    from surgeon.errors import RuntimeFailure

    model = load(SAMPLES / "two_conv.onnx")
    expected = debug(model, DebugOptions(keep_values=True))
    real_verify = orchestration.verify

    def failing_statistics(candidate, *args, options=None, **kwargs):
        if options is not None and options.execution_order == "priority":
            raise RuntimeFailure("onnxruntime could not run it: no kernel for surgeon_stats/0")
        return real_verify(candidate, *args, options=options, **kwargs)

    monkeypatch.setattr(orchestration, "verify", failing_statistics)
    report = debug(model)
    assert report.passed and report.mode == "values"
    assert any("statistics nodes" in n for n in report.notes)
    got = {s.name: (s.min, s.max, s.mean) for s in report.stats}
    assert got == {s.name: (s.min, s.max, s.mean) for s in expected.stats}


def test_a_model_onnxruntime_cannot_run_is_still_an_error(tmp_path):
    from surgeon.errors import RuntimeFailure

    model = _model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2] x) => (y) { s = Constant <value = int64[1] {3}> ()
                                     y = Reshape(x, s) }""",
        tmp_path,
    )
    with pytest.raises(RuntimeFailure):
        debug(model)
