"""debug --ref MODEL compared inside onnxruntime (surgeon.debugging.in_graph_compare):
the report equals the values path's (keep_values forces it) on float16, QDQ, NaN,
integer and renamed-tensor references; only the cosine's last bits (onnxruntime's
summation order) and the run mode differ."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
from conftest import write
from onnx import helper, numpy_helper
from test_precision_float16 import float_model, to_float16
from test_precision_qdq import float_model as qdq_float_model
from test_precision_qdq import quantize

from surgeon.compare import Tolerance
from surgeon.debugging import debug
from surgeon.debugging.in_graph_compare import merge_refusal
from surgeon.debugging.results import DebugOptions
from surgeon.loading import load

# keys that differ by construction: timings, the run mode, and the tap statistics
# (statistics mode's in-graph reductions against numpy's, tested elsewhere)
_SKIP = {"mode", "isolated_seconds", "taps", "seconds"}


def _normalise(x):
    if isinstance(x, dict):
        return {
            k: (round(v, 12) if k == "cosine" and isinstance(v, float) else _normalise(v))
            for k, v in x.items()
            if k not in _SKIP
        }
    if isinstance(x, list):
        return [_normalise(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def _both(model_path, options: DebugOptions):
    model = load(model_path)
    fast = debug(model, options)
    slow = debug(model, dataclasses.replace(options, keep_values=True))
    assert fast.mode == "statistics" and slow.mode == "values"
    return fast, slow


def _assert_same(fast, slow):
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())


def _without(report, tensor: str):
    """``report`` without the rows of ``tensor`` (comparison and root-cause rows, the
    ranking's cumulative error)."""
    if isinstance(report, list):
        return [
            _without(r, tensor)
            for r in report
            if not (isinstance(r, dict) and r.get("name") == tensor)
        ]
    if isinstance(report, dict):
        out = {k: _without(v, tensor) for k, v in report.items()}
        if out.get("tensor") == tensor and "cumulative" in out:
            out["cumulative"] = None
        return out
    return report


def test_float16_against_float32(tmp_path):
    """Equal to the values path, except the float32 output `y` that a Cast makes from a
    float16 tensor: onnxruntime drops that float16 rounding unless the float16 tensor is
    fetched (as the values path fetches it), so `y` is compared as a plain run gives it
    (the independent reference here)."""
    from surgeon.compare import compare_arrays
    from surgeon.runner import run

    reference = float_model(1.0)
    cand = write(to_float16(reference), tmp_path / "f16.onnx")
    ref = write(reference, tmp_path / "ref.onnx")
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    plain_y = run(load(cand), {"x": x})["y"]
    ref_y = run(load(ref), {"x": x})["y"]
    for tolerance in (Tolerance(atol=1e-3, rtol=1e-3), Tolerance(atol=1e-6, rtol=1e-6)):
        options = DebugOptions(reference=str(ref), tolerance=tolerance)
        options = dataclasses.replace(
            options,
            feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
        )
        fast, slow = _both(cand, options)
        assert len(fast.layers) > 10
        y = next(layer.diff for layer in fast.layers if layer.diff.name == "y")
        want = compare_arrays(plain_y, ref_y, tolerance, name="y").to_dict()
        got = y.to_dict()
        assert math.isclose(got.pop("cosine"), want.pop("cosine"), rel_tol=1e-12)
        assert got == want
        assert _normalise(_without(fast.to_dict(), "y")) == _normalise(
            _without(slow.to_dict(), "y")
        )


def test_qdq_against_float(tmp_path):
    reference = qdq_float_model(200.0)
    cand = write(quantize(reference, tmp_path), tmp_path / "int8.onnx")
    ref = write(reference, tmp_path / "ref.onnx")
    fast, slow = _both(
        cand, DebugOptions(reference=str(ref), tolerance=Tolerance(atol=5e-2, rtol=5e-2))
    )
    assert fast.root_cause is not None and fast.root_cause.node == "w2_DequantizeLinear"
    _assert_same(fast, slow)


def _chain(scale: float, nan_at: int | None = None) -> onnx.ModelProto:
    """x -> Mul -> Sqrt (NaN where negative) -> ArgMax (int64) and a Shape (int64)."""
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "s"], ["m"], name="mul"),
            helper.make_node("Sqrt", ["m"], ["r"], name="sqrt"),
            helper.make_node("ArgMax", ["r"], ["am"], name="argmax", axis=1),
            helper.make_node("Shape", ["r"], ["sh"], name="shape"),
            helper.make_node("Relu", ["m"], ["y"], name="relu"),
        ],
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 5])],
        [
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5]),
            helper.make_tensor_value_info("am", onnx.TensorProto.INT64, None),
            helper.make_tensor_value_info("sh", onnx.TensorProto.INT64, None),
        ],
        [numpy_helper.from_array(np.array(scale, np.float32), "s")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("exact", [False, True])
def test_nan_integers_and_exact(tmp_path, exact):
    cand = write(_chain(1.001), tmp_path / "c.onnx")
    ref = write(_chain(1.0), tmp_path / "r.onnx")
    tolerance = Tolerance(exact=True) if exact else Tolerance(atol=1e-4, rtol=1e-4)
    fast, slow = _both(cand, DebugOptions(reference=str(ref), tolerance=tolerance))
    names = {layer.diff.name for layer in fast.layers}
    assert {"m", "r", "am", "sh", "y"} <= names  # integers and exact: compared on values
    assert any(layer.diff.nan for layer in fast.layers)
    _assert_same(fast, slow)


def test_renamed_tensors_and_inputs(tmp_path):
    reference = _chain(1.0)
    renamed = _chain(1.0)
    for node in renamed.graph.node:
        node.input[:] = ["inp" if x == "x" else x for x in node.input]
        node.output[:] = ["m2" if x == "m" else x for x in node.output]
        node.input[:] = ["m2" if x == "m" else x for x in node.input]
    renamed.graph.input[0].name = "inp"
    cand = write(renamed, tmp_path / "c.onnx")
    ref = write(reference, tmp_path / "r.onnx")
    options = DebugOptions(reference=str(ref), name_map={"m": "m2", "x": "inp"})
    fast, slow = _both(cand, options)
    assert "m2" in {layer.diff.name for layer in fast.layers}
    assert all(not layer.diverged for layer in fast.layers)
    _assert_same(fast, slow)


def test_merge_refusals(tmp_path):
    model = load(write(_chain(1.0), tmp_path / "a.onnx"))
    other = _chain(1.0)
    other.opset_import[0].version = 16
    assert "opset" in merge_refusal(model, load(write(other, tmp_path / "b.onnx")))
    assert merge_refusal(model, model) is None


def test_names_that_look_like_the_merge_prefixes(tmp_path):
    """Tensors named like the merged model's own prefixes neither collide nor mix up."""

    def hostile(scale):
        m = _chain(scale)
        names = {"m": "surgeon.ref/m", "r": "surgeon.cmp/0/3", "y": "cmp0/1"}
        for node in m.graph.node:
            node.input[:] = [names.get(x, x) for x in node.input]
            node.output[:] = [names.get(x, x) for x in node.output]
        for o in m.graph.output:
            o.name = names.get(o.name, o.name)
        return m

    cand = write(hostile(1.001), tmp_path / "c.onnx")
    ref = write(hostile(1.0), tmp_path / "r.onnx")
    fast, slow = _both(cand, DebugOptions(reference=str(ref)))
    assert {"surgeon.ref/m", "surgeon.cmp/0/3"} <= {layer.diff.name for layer in fast.layers}
    _assert_same(fast, slow)
