"""debug --ref with the statistics and the tap check folded into the merged run
(surgeon.debugging.orchestration._debug_folded): the same report as debug's usual path
(a separate statistics run, SURGEON_FASTOPS=0 measures with ONNX nodes) and as the
values path, the tap check still able to fail, the candidate's own failure named first,
and the cases the fold must get right (outputs that are inputs or initializers, integer
tensors, NaN/Inf, large weights, float16 declined)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
from conftest import run_cli, write
from onnx import TensorProto, helper
from test_debug_in_graph import _normalise
from test_ref_speed_isolated import _fp16_options
from test_statistics import check, onnx_nodes_only

import surgeon.debugging.orchestration as orchestration
from surgeon import fastops
from surgeon.compare import Tolerance
from surgeon.debugging import debug
from surgeon.loading import load

pytestmark = pytest.mark.skipif(
    not fastops.available(), reason="surgeon's kernel library is not built here"
)


def _model(scale: float = 1.0, *, nan: bool = False) -> onnx.ModelProto:
    """x -> Mul(w) -> m -> Sqrt -> r (NaN where m < 0 when ``nan``) -> Relu -> y, plus
    ArgMax (int64) and Shape outputs, a passthrough output (the input x) and a constant
    output (an initializer)."""
    w = np.full((3, 5), scale, np.float32)
    if nan:
        w[0, 0] = -1.0
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"], name="mul")]
    if not nan:
        nodes.append(helper.make_node("Abs", ["m"], ["a"], name="abs"))
    nodes += [
        helper.make_node("Sqrt", ["m" if nan else "a"], ["r"], name="sqrt"),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
        helper.make_node("ArgMax", ["y"], ["am"], name="argmax", axis=1),
        helper.make_node("Shape", ["y"], ["sh"], name="shape"),
    ]
    g = helper.make_graph(
        nodes,
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
            helper.make_tensor_value_info("am", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("sh", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [2]),
        ],
        [
            onnx.numpy_helper.from_array(w, "w"),
            onnx.numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "c"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _graph(nodes, **kwargs) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph([n for n in nodes if n is not None], **kwargs),
        opset_imports=[helper.make_opsetid("", 17)],
    )


def _paths(tmp_path, candidate: onnx.ModelProto, reference: onnx.ModelProto):
    tolerance = Tolerance(1e-4, 1e-4)
    cand, options = _fp16_options(tmp_path, reference, candidate, tolerance, shape=(3, 5))
    return cand, options, np.load(tmp_path / "feeds.npz")["x"]


def _spy(monkeypatch) -> list:
    calls: list = []
    original = orchestration._debug_folded

    def spying(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(orchestration, "_debug_folded", spying)
    return calls


def _three_ways(cand, options):
    """The folded run, debug's usual path (ONNX nodes) and the values path."""
    model = load(cand)
    folded = debug(model, options)
    with onnx_nodes_only():
        usual = debug(load(cand), options)
    values = debug(load(cand), dataclasses.replace(options, keep_values=True))
    return folded, usual, values


def _stats_agree(a, b):
    assert [s.name for s in a.stats] == [s.name for s in b.stats]
    for x, y in zip(a.stats, b.stats, strict=True):
        assert (x.nan, x.inf, x.zeros, x.min, x.max, x.shape, x.dtype, x.flags) == (
            y.nan,
            y.inf,
            y.zeros,
            y.min,
            y.max,
            y.shape,
            y.dtype,
            y.flags,
        ), x.name
        for k in ("mean", "std"):
            u, v = getattr(x, k), getattr(y, k)
            assert u == v or math.isclose(u, v, rel_tol=1e-12) or (math.isnan(u) and math.isnan(v))


def _without_taps(report) -> dict:
    d = _normalise(report.to_dict())
    d.pop("tap_check", None)
    return d


@pytest.mark.parametrize("scale", [1.0, 1.01])
def test_folded_equals_the_usual_path_and_the_values_path(tmp_path, monkeypatch, scale):
    calls = _spy(monkeypatch)
    cand, options, x = _paths(tmp_path, _model(scale), _model(1.0))
    folded, usual, values = _three_ways(cand, options)
    assert calls[0] is True  # the first run folded; the others did not try (or declined)
    assert folded.mode == usual.mode == "statistics"
    assert folded.tap_check.passed and folded.tap_check.tolerance.exact
    assert _normalise(folded.to_dict()) == _normalise(usual.to_dict())
    assert _without_taps(folded) == _without_taps(dataclasses.replace(values, mode="statistics"))
    _stats_agree(folded, values)
    assert bool(folded) == (scale == 1.0)
    # the statistics against numpy on the tensors themselves (values path's arrays)
    by_name = {s.name: s for s in folded.stats}
    for name, value in values.values.items():
        check(by_name[name], value)
    # every original output is in the tap check, passthrough and constant ones too
    assert {t.name for t in folded.tap_check.tensors} == {"y", "am", "sh", "x", "c"}


def test_nan_is_blamed_where_born_in_the_folded_run(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    cand, options, x = _paths(tmp_path, _model(1.0, nan=True), _model(1.0, nan=True))
    folded, usual, _ = _three_ways(cand, options)
    assert calls[0] is True
    r = next(s for s in folded.stats if s.name == "r")
    w = onnx.numpy_helper.to_array(_model(1.0, nan=True).graph.initializer[0])
    with np.errstate(invalid="ignore"):
        assert r.nan == int(np.isnan(np.sqrt(x * w)).sum()) > 0
    born = [n for n in folded.nonfinite if n.kind == "born"]
    assert born and born[0].node == "sqrt"
    assert _normalise(folded.to_dict()) == _normalise(usual.to_dict())


def test_the_folded_tap_check_can_fail(tmp_path, monkeypatch):
    """A plain run that gives other outputs (as a tap changing them would look) fails
    the tap check, the report and the exit status."""
    cand, options, _ = _paths(tmp_path, _model(1.0), _model(1.0))
    import surgeon.verification as verification

    original = verification._compute

    def perturbed(model, feeds, names, options, overlap=None):
        values = original(model, feeds, names, options, overlap)
        values["y"] = values["y"] + np.float32(1e-3)
        return values

    monkeypatch.setattr(verification, "_compute", perturbed)
    calls = _spy(monkeypatch)
    report = debug(load(cand), options)
    assert calls == [True]
    assert not report.tap_check.passed and not report
    failed = [t.name for t in report.tap_check.tensors if not t.passed]
    assert failed == ["y"]


def test_the_candidates_own_failure_is_named_first(tmp_path):
    """A candidate that cannot run: its own error (as the usual path gives it), not a
    note about the reference's random feeds."""
    broken = _graph(
        [helper.make_node("Reshape", ["x", "bad"], ["y"], name="reshape")],
        name="broken",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([4, 4], np.int64), "bad")],
    )
    good = _graph(
        [helper.make_node("Relu", ["x"], ["y"], name="reshape")],
        name="good",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
    )
    cand = write(broken, tmp_path / "cand.onnx")
    ref = write(good, tmp_path / "ref.onnx")
    folded = run_cli("debug", cand, "--ref", ref)
    with onnx_nodes_only():
        usual = run_cli("debug", cand, "--ref", ref)
    assert folded.status == usual.status == 2
    assert "cand.onnx" in folded.stderr and "Reshape" in folded.stderr
    assert folded.stderr == usual.stderr
    assert "Traceback" not in folded.stderr


def test_large_weights_run_the_plain_model_first(tmp_path, monkeypatch):
    # Above ALONGSIDE_WEIGHTS the plain run does not overlap the merged model's build.
    monkeypatch.setattr(orchestration, "ALONGSIDE_WEIGHTS", -1)
    calls = _spy(monkeypatch)
    cand, options, _ = _paths(tmp_path, _model(1.01), _model(1.0))
    folded = debug(load(cand), options)
    with onnx_nodes_only():
        usual = debug(load(cand), options)
    assert calls[0] is True
    assert _normalise(folded.to_dict()) == _normalise(usual.to_dict())


def test_float16_models_are_declined(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    m = _model(1.0)
    half = _graph(
        [
            helper.make_node("Cast", ["x"], ["h"], name="cast", to=TensorProto.FLOAT16),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Cast", ["r"], ["y"], name="back", to=TensorProto.FLOAT),
        ],
        name="half",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
    )
    cand, options, _ = _paths(tmp_path, half, m)
    report = debug(load(cand), dataclasses.replace(options, name_map={}))
    assert calls == [False]  # declined: the usual path measured it
    assert report.mode == "statistics" and report.tap_check.passed


def test_a_started_plain_run_serves_only_its_own_reference():
    """verification.reference_started hands verify a thread's values only when verify's
    reference is that thread's model (else they would be another model's outputs)."""
    from surgeon.model import Model
    from surgeon.runner import RunOptions
    from surgeon.verification import Overlap, reference_started, verify

    def one(op: str) -> Model:
        return Model(
            _graph(
                [helper.make_node(op, ["x"], ["y"], name="n")],
                name=op,
                inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
            )
        )

    relu, neg = one("Relu"), one("Neg")
    feeds = {"x": np.arange(-3, 3, dtype=np.float32).reshape(2, 3)}
    started = Overlap(relu, feeds, ["y"], RunOptions())
    with reference_started(started):
        other = verify(one("Neg"), neg, feeds=feeds)  # neg runs itself
        own = verify(one("Relu"), relu, feeds=feeds)  # the thread's values
    assert other.passed and own.passed
    assert started.result()["y"].tolist() == [[0, 0, 0], [0, 1, 2]]


def test_the_measuring_runs_take_the_arena_only_with_the_kernels_and_small_weights(
    tmp_path, monkeypatch
):
    """The statistics run and the merged --ref run use onnxruntime's arena where the
    kernels measure and the weights are at most fastops.ARENA_WEIGHTS (ONNX nodes make
    float64 copies for it to grow to; large lent weights are copied into it)."""
    import surgeon.runner as runner

    seen: list[tuple[int, bool]] = []
    real = runner.Session.__init__

    def spy(self, model, **kwargs):
        real(self, model, **kwargs)
        if any(o.domain == fastops.DOMAIN for o in model.proto.opset_import) or any(
            n.op_type == "ReduceMin" for n in model.proto.graph.node
        ):
            seen.append((len(model.proto.graph.node), self.options.memory_arena))

    monkeypatch.setattr(runner.Session, "__init__", spy)
    cand, options, _ = _paths(tmp_path, _model(1.01), _model(1.0))
    debug(load(cand), options)  # folded: the merged run
    debug(load(cand), dataclasses.replace(options, reference=None))  # the statistics run
    assert [arena for nodes, arena in seen if nodes > 3] == [True, True]
    seen.clear()
    monkeypatch.setattr(fastops, "ARENA_WEIGHTS", 0)
    debug(load(cand), options)
    debug(load(cand), dataclasses.replace(options, reference=None))
    assert [arena for nodes, arena in seen if nodes > 3] == [False, False]
    seen.clear()
    with onnx_nodes_only():  # the ONNX nodes' float64 copies: no arena
        monkeypatch.setattr(fastops, "ARENA_WEIGHTS", 2**40)
        debug(load(cand), options)
        debug(load(cand), dataclasses.replace(options, reference=None))
    assert seen and not any(arena for _, arena in seen)


def test_the_plain_run_takes_the_arena_by_the_same_rule(tmp_path, monkeypatch):
    """The tap check's plain run (started in a thread before the library's check) takes
    the arena with the library built and small weights; not with larger weights, nor
    with the library switched off."""
    from surgeon import verification

    seen: list[bool] = []
    real = verification.Overlap.__init__

    def spy(self, reference, feeds, names, options):
        seen.append(options.memory_arena)
        real(self, reference, feeds, names, options)

    monkeypatch.setattr(verification.Overlap, "__init__", spy)
    cand, options, _ = _paths(tmp_path, _model(1.01), _model(1.0))
    for reference in (options.reference, None):  # folded --ref, and --tap alone
        debug(load(cand), dataclasses.replace(options, reference=reference))
    assert seen == [True, True]
    seen.clear()
    monkeypatch.setattr(fastops, "ARENA_WEIGHTS", 0)
    debug(load(cand), options)
    monkeypatch.setattr(fastops, "ARENA_WEIGHTS", 2**40)
    monkeypatch.setenv("SURGEON_FASTOPS", "0")
    debug(load(cand), options)
    assert seen == [False, False]
