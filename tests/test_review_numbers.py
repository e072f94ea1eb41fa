"""Adversarial review of issue 11 ("numbers you can trust"): NaN/Inf that the verdict
used to explain away, and bit-exact comparison of every element size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import write
from onnx import TensorProto, helper, numpy_helper

from surgeon.compare import EXACT, compare_arrays
from surgeon.debugging import DebugOptions, debug
from surgeon.loading import load

MODES = pytest.mark.parametrize("keep_values", [False, True], ids=["statistics", "values"])
vi = helper.make_tensor_value_info


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return load(write(proto, tmp_path / name))


def _const(name, value):
    array = np.array(value, np.float32)
    return helper.make_node(
        "Constant", [], [name], name=name, value=numpy_helper.from_array(array, name)
    )


@MODES
def test_a_nan_weight_that_spoils_the_outputs_fails(cli, tmp_path, keep_values):
    # A NaN in a Conv weight (a diverged checkpoint) made every output NaN, and debug
    # said "no NaN/Inf is born inside the model", exit 0.
    w = np.ones((2, 1, 1, 1), np.float32)
    w[0, 0, 0, 0] = np.nan
    model = _save(
        tmp_path,
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        [vi("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [vi("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(w, "W")],
    )
    report = debug(model, DebugOptions(keep_values=keep_values))
    assert not report
    kinds = {x.tensor: x.kind for x in report.nonfinite}
    assert kinds == {"c": "weights", "y": "inherited"}
    assert report.born[0].constants == ["W"] and report.born[0].outputs == ["y"]
    assert report.first_anomaly.name == "c"
    assert "NaN of constant(s) `W` enters the data at `c`" in report.verdict()
    result = cli("debug", model.path)
    assert result.status == 1 and "NaN from a constant" in result.stdout


@MODES
def test_a_nan_constant_removed_before_the_outputs_is_deliberate(tmp_path, keep_values):
    # masked_fill(mask, nan) then nan_to_num: the NaN never reaches an output.
    model = _save(
        tmp_path,
        [
            _const("nan", np.nan),
            _const("zero", 0.0),
            helper.make_node("Greater", ["x", "zero"], ["mask"], name="gt"),
            helper.make_node("Where", ["mask", "x", "nan"], ["s"], name="fill"),
            helper.make_node("IsNaN", ["s"], ["isnan"], name="isnan"),
            helper.make_node("Where", ["isnan", "zero", "s"], ["y"], name="clean"),
        ],
        [vi("x", TensorProto.FLOAT, [2, 4])],
        [vi("y", TensorProto.FLOAT, [2, 4])],
    )
    feeds = {"x": np.array([[1, -1, 2, -2], [-3, 3, 0.5, -0.5]], np.float32)}
    report = debug(model, DebugOptions(keep_values=keep_values), feeds=feeds)
    assert report, report.verdict()
    kinds = {x.tensor: x.kind for x in report.nonfinite}
    assert kinds == {"nan": "constant", "s": "inherited"}


@MODES
def test_nan_born_from_a_deliberate_inf_fails(tmp_path, keep_values):
    # mask * -inf with a 0 in the mask is 0 * -inf = NaN: the -inf is deliberate, the
    # NaN is not (it used to be "inherited" from the constant, exit 0).
    model = _save(
        tmp_path,
        [
            _const("ninf", -np.inf),
            helper.make_node("Mul", ["m", "ninf"], ["bias"], name="mul"),
            helper.make_node("Add", ["x", "bias"], ["s"], name="add"),
            helper.make_node("Softmax", ["s"], ["y"], name="softmax"),
        ],
        [vi("x", TensorProto.FLOAT, [2, 4]), vi("m", TensorProto.FLOAT, [2, 4])],
        [vi("y", TensorProto.FLOAT, [2, 4])],
    )
    feeds = {
        "x": np.arange(8, dtype=np.float32).reshape(2, 4),
        "m": np.array([[0, 0, 1, 1], [1, 0, 0, 0]], np.float32),
    }
    report = debug(model, DebugOptions(keep_values=keep_values), feeds=feeds)
    assert not report
    assert [(x.tensor, x.kind) for x in report.born] == [("bias", "born")]
    assert "first NaN at `bias`" in report.verdict()
    assert "from inputs that hold Inf but no NaN" in report.verdict()
    assert report.born[0].from_inf


@MODES
def test_where_mask_with_minus_inf_then_softmax_passes(tmp_path, keep_values):
    # The healthy pattern: the -inf is placed by Where and absorbed by Softmax.
    model = _save(
        tmp_path,
        [
            _const("ninf", -np.inf),
            _const("zero", 0.0),
            helper.make_node("Greater", ["x", "zero"], ["mask"], name="gt"),
            helper.make_node("Where", ["mask", "x", "ninf"], ["s"], name="where"),
            helper.make_node("Softmax", ["s"], ["y"], name="softmax"),
        ],
        [vi("x", TensorProto.FLOAT, [2, 4])],
        [vi("y", TensorProto.FLOAT, [2, 4])],
    )
    feeds = {"x": np.array([[1, -1, 2, -2], [-3, 3, 0.5, -0.5]], np.float32)}
    report = debug(model, DebugOptions(keep_values=keep_values), feeds=feeds)
    assert report, report.verdict()
    assert {x.tensor: x.kind for x in report.nonfinite} == {"ninf": "constant", "s": "inherited"}


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float32, np.float64])
def test_exact_compares_the_bits_of_every_element_size(dtype):
    # complex128 (16 bytes) was compared by value under --exact: -0.0 matched 0.0.
    zero = np.zeros(2, dtype)
    negative = -zero
    assert compare_arrays(zero, negative, EXACT).mismatches == 2
    assert compare_arrays(zero, zero.copy(), EXACT).passed
    scalar = np.array(1.5, dtype)
    assert compare_arrays(scalar, scalar.copy(), EXACT).passed
