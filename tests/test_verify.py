"""verify(): the single verifier, checked against plain onnxruntime runs and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SAMPLES, parse
from onnx import numpy_helper

from surgeon.compare import EXACT, Tolerance
from surgeon.errors import SurgeonError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.loading import load
from surgeon.model import Model
from surgeon.runner import RunOptions
from surgeon.verification import Chain, verify

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _model(body: str) -> Model:
    return Model(parse(HEADER + body))


def _perturbed(model: Model, initializer: str, delta: float) -> Model:
    """A copy of ``model`` with element 0 of one initializer moved by ``delta``."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for i, t in enumerate(proto.graph.initializer):
        if t.name == initializer:
            w = numpy_helper.to_array(t).copy()
            w.flat[0] += delta
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, initializer))
            return Model(proto)
    raise AssertionError(initializer)


def _ort_run(model: Model, feeds) -> dict[str, np.ndarray]:
    """An independent onnxruntime run, without surgeon's runner.

    Graph optimisations off, as surgeon's verify runs by default: with them on, fusions
    change the last bits, and how many depends on the CPU's kernels (this test's numbers
    agreed on one machine and differed by 4e-6 on another).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def yolo() -> Model:
    return load(SAMPLES / "tiny_yolo.onnx")


def test_model_against_itself_passes(yolo):
    report = verify(yolo, yolo, tolerance=EXACT)
    assert report and report.passed
    assert [t.name for t in report.tensors] == ["output0"]
    row = report.outputs["output0"]
    assert row.shape == [1, 7, 64] and row.max_abs == 0.0 and row.cosine == pytest.approx(1.0)
    assert report.seed == 0 and report.tolerance == EXACT
    assert report.feeds == {
        "images": {"shape": [1, 3, 64, 64], "dtype": "float32", "from": "random"}
    }


def test_verify_with_nothing_to_compare_fails(yolo):
    report = verify(yolo, yolo, pairs=[], tolerance=EXACT)
    assert not report and report.tensors == []
    assert report.summary().startswith("FAIL: no tensor was compared")
    assert any("nothing was compared" in n for n in report.notes)


def test_perturbed_weight_fails_naming_the_output_with_the_right_numbers(yolo):
    bad = _perturbed(yolo, "head/conv.weight", 0.5)
    report = verify(bad, yolo, feed_options=FeedOptions(seed=5))
    assert not report
    assert [t.name for t in report.failures] == ["output0"]
    assert "`output0` (mismatch)" in report.summary()
    feeds = make_feeds(yolo, FeedOptions(seed=5))
    expected, actual = _ort_run(yolo, feeds)["output0"], _ort_run(bad, feeds)["output0"]
    err = np.abs(actual.astype(np.float64) - expected)
    row = report.outputs["output0"]
    assert row.max_abs == pytest.approx(err.max(), rel=1e-6)
    assert row.mismatches == int(np.sum(err > 1e-5 + 1e-5 * np.abs(expected)))
    assert 0 < row.mismatches < row.size  # only the channel fed by that weight moves


def test_tiny_perturbation_passes_a_loose_tolerance(yolo):
    bad = _perturbed(yolo, "head/conv.weight", 1e-5)
    assert verify(bad, yolo, tolerance=Tolerance(1e-3, 1e-3))
    assert not verify(bad, yolo, tolerance=EXACT)


def test_name_map_for_renamed_outputs():
    ref = _model("g (float[N, 4] x) => (y, z) { y = Relu(x)\n z = Neg(x) }")
    cand = _model("g (float[N, 4] x) => (preds, z) { preds = Relu(x)\n z = Neg(x) }")
    report = verify(cand, ref, name_map={"y": "preds"})
    assert report and [(t.name, t.reference) for t in report.tensors] == [
        ("preds", "y"),
        ("z", "z"),
    ]
    report = verify(cand, ref)
    assert {t.name: t.status for t in report.tensors} == {
        "y": "missing",
        "z": "ok",
        "preds": "extra",
    }


def test_name_map_for_renamed_inputs():
    ref = _model("g (float[N, 4] x) => (y) { y = Relu(x) }")
    cand = _model("g (float[N, 4] data) => (y) { y = Relu(data) }")
    assert verify(cand, ref, name_map={"x": "data"}, tolerance=EXACT)
    with pytest.raises(SurgeonError, match="candidate input `data` has no value"):
        verify(cand, ref)


def test_candidate_inputs_feed_a_subgraph_from_reference_intermediates():
    two_conv = load(SAMPLES / "two_conv.onnx")
    # The second conv alone, fed with the original's conv0_out.
    proto = onnx.ModelProto()
    proto.CopyFrom(two_conv.proto)
    del proto.graph.node[0]
    del proto.graph.input[:]
    proto.graph.input.append(
        onnx.helper.make_tensor_value_info("conv0_out", onnx.TensorProto.FLOAT, [1, 8, "H", "W"])
    )
    tail = Model(proto)
    report = verify(
        tail,
        two_conv,
        pairs=[("out", "out")],
        candidate_inputs={"conv0_out": "conv0_out"},
        feed_options=FeedOptions(dims={"H": 9, "W": 11}),
    )
    assert report and report.outputs["out"].shape == [1, 4, 9, 11]
    assert report.outputs["out"].max_abs < 1e-5
    # A changed weight in the tail must show (the check can fail).
    bad_tail = _perturbed(tail, "conv1.weight", 0.5)
    assert not verify(
        bad_tail, two_conv, pairs=[("out", "out")], candidate_inputs={"conv0_out": "conv0_out"}
    )


def test_pairs_compare_intermediate_tensors():
    two_conv = load(SAMPLES / "two_conv.onnx")
    report = verify(two_conv, two_conv, pairs=[("conv0_out", "conv0_out"), ("in", "in")])
    assert report and report.outputs["conv0_out"].shape == [1, 8, 64, 64]


def test_candidate_inputs_errors():
    ref = _model("g (float[N, 4] x) => (y) { t = Neg(x)\n y = Relu(t) }")
    sub = _model("g (float[N, 4] t) => (y) { y = Relu(t) }")
    assert verify(sub, ref, candidate_inputs={"t": "t"}, tolerance=EXACT)
    with pytest.raises(SurgeonError) as e:
        verify(sub, ref, candidate_inputs={"tt": "t"})
    assert "`tt`" in str(e.value) and "did you mean `t`" in str(e.value)
    with pytest.raises(SurgeonError, match="does not produce `nope`"):
        verify(sub, ref, candidate_inputs={"t": "nope"})


def test_chain_reference_with_two_models():
    first = _model("first (float[N, 4] a, float[N, 4] b) => (s) { s = Add(a, b) }")
    second = _model("second (float[N, 4] v) => (y) { u = Neg(v)\n y = Relu(u) }")
    chain = Chain([first, second], links=[{"v": "s"}])
    merged = _model(
        "merged (float[N, 4] a, float[N, 4] b) => (y) { s = Add(a, b)\n u = Neg(s)\n y = Relu(u) }"
    )
    report = verify(merged, chain, tolerance=EXACT)
    assert report and report.reference == "first -> second"
    feeds = make_feeds(first)
    expected = np.maximum(-(feeds["a"] + feeds["b"]), 0)
    assert np.array_equal(_ort_run(merged, feeds)["y"], expected)
    wrong = _model(
        "wrong (float[N, 4] a, float[N, 4] b) => (y) { s = Sub(a, b)\n u = Neg(s)\n y = Relu(u) }"
    )
    assert not verify(wrong, chain)
    # Intermediates of a step, by name and by "<step>:name".
    report = verify(merged, chain, pairs=[("s", "0:s"), ("u", "u"), ("y", "1:y")])
    assert report and len(report.tensors) == 3


def test_chain_step_without_its_input():
    first = _model("first (float[N, 4] a) => (s) { s = Neg(a) }")
    second = _model("second (float[N, 4] v) => (y) { y = Relu(v) }")
    with pytest.raises(SurgeonError, match="step 2 .* needs input `v`"):
        verify(second, Chain([first, second]))


def test_missing_and_extra_outputs():
    ref = _model("g (float[N, 4] x) => (y, z) { y = Relu(x)\n z = Neg(x) }")
    fewer = _model("g (float[N, 4] x) => (y) { y = Relu(x) }")
    more = _model("g (float[N, 4] x) => (y, z, w) { y = Relu(x)\n z = Neg(x)\n w = Abs(x) }")
    report = verify(fewer, ref)
    assert not report and report.outputs["z"].status == "missing"
    assert report.outputs["z"].reference_shape == [1, 4]
    report = verify(more, ref)
    assert not report and report.outputs["w"].status == "extra"
    assert report.outputs["w"].shape == [1, 4]
    assert verify(more, ref, report_extra=False)


def test_shape_and_dtype_differences():
    ref = _model("g (float[2, 6] x) => (y) { y = Relu(x) }")
    shaped = _model(
        "g (float[2, 6] x) => (y) { r = Relu(x)\n s = Constant<value = int64[2] {3, 4}>()\n y = Reshape(r, s) }"
    )
    typed = _model("g (float[2, 6] x) => (y) { r = Relu(x)\n y = Cast<to = 11>(r) }")
    assert verify(shaped, ref).outputs["y"].status == "shape"
    assert verify(typed, ref).outputs["y"].status == "dtype"


def test_explicit_feeds_are_used(yolo):
    feeds = {"images": np.zeros((2, 3, 64, 64), np.float32)}
    report = verify(yolo, yolo, feeds=feeds)
    assert report.feeds["images"]["shape"] == [2, 3, 64, 64]
    assert report.outputs["output0"].shape == [2, 7, 64]


def test_optimisation_levels_are_noted():
    model = load(SAMPLES / "two_conv.onnx")
    report = verify(
        model,
        model,
        options=RunOptions(optimization="disabled"),
        reference_options=RunOptions(optimization="all"),
    )
    assert report.notes == [
        "candidate ran with optimization=disabled, reference with optimization=all"
    ]
    assert report.outputs["out"].max_abs < 1e-4
    assert verify(model, model, options=RunOptions(optimization="basic")).notes == []
