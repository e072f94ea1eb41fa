"""debug --ref with a float16 candidate against its float32 reference, inside one
onnxruntime run: surgeon's kernel ``Stored`` as the float16 rounding guard, ComparePair's
``counts`` mode for the overflow counts, and the reference's nodes waiting for their
comparisons (a Reshape view on the kernel's shape output) so the reference cannot run
ahead of a candidate whose float16 nodes onnxruntime wraps in Casts. Each against an
independent reference: numpy, the ONNX-node path, the values path."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_debug_in_graph import _both, _normalise, _without
from test_fastops import _model
from test_precision_float16 import float_model, to_float16
from test_ref_speed_isolated import _fp16_options, spy  # noqa: F401 - a fixture

import surgeon.debugging.in_graph_compare as in_graph_compare
from surgeon import fastops
from surgeon.compare import Tolerance
from surgeon.compare.in_graph import add_fused_overflow_count, overflow_from_outputs
from surgeon.debugging import debug
from surgeon.loading import load
from surgeon.runner import RunOptions, run

pytestmark = pytest.mark.skipif(
    not fastops.available(), reason="surgeon's kernel library is not built here"
)

HALF, FLOAT, DOUBLE = TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE


def _stored(x: np.ndarray) -> np.ndarray:
    node = helper.make_node(fastops.STORED, ["x"], ["y"], domain=fastops.DOMAIN)
    model = _model([node], [helper.make_tensor_value_info("x", HALF, None)], ["y"])
    return run(model, {"x": x}, options=RunOptions())["y"]


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3, 5), (1,) * 20])
def test_stored_copies_a_float16_tensor_bit_for_bit(shape):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**16, size=shape, dtype=np.uint16)
    x = bits.view(np.float16)  # every kind of value: NaN payloads, Inf, subnormals
    got = _stored(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    assert np.array_equal(got.view(np.uint16), bits)


def _counts(a: np.ndarray, e: np.ndarray, a_type: int, e_type: int) -> np.ndarray:
    nodes, inputs = [], []
    for name, elem in (("a", a_type), ("e", e_type)):
        if elem == TensorProto.BFLOAT16:  # fed as float32, cast in the graph
            nodes.append(helper.make_node("Cast", [name], [f"{name}16"], to=elem))
            inputs.append(helper.make_tensor_value_info(name, FLOAT, None))
        else:
            inputs.append(helper.make_tensor_value_info(name, elem, None))
    args = ["a16" if a_type == TensorProto.BFLOAT16 else "a"]
    args.append("e16" if e_type == TensorProto.BFLOAT16 else "e")
    tol = helper.make_tensor("tol", DOUBLE, [2], [0.0, 0.0])
    nodes.append(
        helper.make_node(
            fastops.COMPARE, [*args, "tol"], ["n", "s", "t"], domain=fastops.DOMAIN, counts=1
        )
    )
    model = _model(nodes, inputs, ["n"], [tol])
    return run(model, {"a": a, "e": e}, options=RunOptions())["n"]


def _hostile(dtype, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 1e3).astype(np.float64)
    x[rng.integers(n, size=n // 7)] = np.nan
    x[rng.integers(n, size=n // 11)] = np.inf
    x[rng.integers(n, size=n // 13)] = -np.inf
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@pytest.mark.parametrize(
    "types",
    [(HALF, FLOAT), (FLOAT, FLOAT), (HALF, HALF), (DOUBLE, FLOAT), (TensorProto.BFLOAT16, FLOAT)],
    ids=str,
)
@pytest.mark.parametrize("size", [0, 1, 7, 129, 70_001])
def test_counts_mode_gives_numpys_nan_and_inf_counts(types, size):
    numpy_type = {HALF: np.float16, FLOAT: np.float32, DOUBLE: np.float64}
    a_type, e_type = types
    a = _hostile(numpy_type.get(a_type, np.float32), size, 1)
    e = _hostile(numpy_type.get(e_type, np.float32), size + 3, 2)  # other sizes too
    got = _counts(a, e, a_type, e_type)
    if a_type == TensorProto.BFLOAT16:  # the values the kernel reads
        a = a.astype(ml_dtypes.bfloat16).astype(np.float32)
    want = [np.isnan(a).sum(), np.isnan(e).sum(), np.isinf(a).sum(), np.isinf(e).sum()]
    assert got[:4].tolist() == [float(w) for w in want]
    assert np.isnan(got[4:]).all()  # the counts alone: no other number is made


def test_fused_overflow_count_gives_numpys_count():
    wide = np.array([1.0, 7e4, -7e4, np.inf, np.nan, 65504.0, 65519.0, 65520.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["n"], to=HALF)],
        "overflow",
        [helper.make_tensor_value_info("w", FLOAT, [8])],
        [],
    )
    count = add_fused_overflow_count(graph, "w", "n", "o/")
    model = _model(list(graph.node), list(graph.input), [count], graph.initializer)
    got = run(model, {"w": wide}, options=RunOptions())
    with np.errstate(over="ignore"):
        narrowed = wide.astype(np.float16)
    want = np.count_nonzero(np.isfinite(wide) & ~np.isfinite(narrowed))
    assert overflow_from_outputs(count, True, got) == want == 3


@pytest.fixture
def merged_protos(monkeypatch):
    """The merged models debug --ref builds (their protos, as onnxruntime gets them)."""
    protos = []
    original = in_graph_compare.Session

    def session(model, *args, **kwargs):
        protos.append(model.proto)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(in_graph_compare, "Session", session)
    return protos


def _gated_reads(proto):
    """(reference node inputs read through a gate, those read directly) of activations
    made by nodes (tensors that depend on a graph input; constants are never gated)."""
    gates = {n.output[0] for n in proto.graph.node if "/gate/" in n.name}
    activations = {i.name for i in proto.graph.input} | gates
    for node in proto.graph.node:
        if any(x in activations for x in node.input):
            activations.update(node.output)
    inputs = {i.name for i in proto.graph.input}
    through, direct = 0, 0
    for node in proto.graph.node:
        if not node.name.startswith("surgeon.ref/"):
            continue
        for x in node.input:
            if x in gates:
                through += 1
            elif x in activations and x not in inputs:
                direct += 1
    return through, direct


def test_a_float32_reference_waits_for_its_comparisons(tmp_path, merged_protos, spy):  # noqa: F811
    reference = float_model(1.0)
    cand, options = _fp16_options(tmp_path, reference, to_float16(reference), Tolerance(1e-2))
    fast, slow = _both(cand, options)
    assert spy and spy[0][0] >= 5  # the units ran inside the merged run
    through, direct = _gated_reads(merged_protos[0])
    assert through > 0 and direct == 0
    # The Stored guard, not the Transpose pair, feeds the units their float16 inputs.
    ops = {(n.domain, n.op_type) for n in merged_protos[0].graph.node}
    assert (fastops.DOMAIN, fastops.STORED) in ops and ("", "Transpose") not in ops
    # the values path's report (`y`: onnxruntime drops the float16 rounding of a Cast's
    # input unless fetched; see test_debug_in_graph.test_float16_against_float32)
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))


def test_a_float16_reference_is_not_gated(tmp_path, merged_protos):
    # between two float16 nodes a Reshape would round what the next one reads unrounded
    reference = to_float16(float_model(1.0))
    cand, options = _fp16_options(tmp_path, reference, reference, Tolerance(1e-3, 1e-3))
    debug(load(cand), options)
    through, direct = _gated_reads(merged_protos[0])
    assert through == 0 and direct > 0


def test_no_gate_at_another_optimisation_level(tmp_path, merged_protos):
    reference = float_model(1.0)
    cand, options = _fp16_options(tmp_path, reference, reference, Tolerance(1e-3, 1e-3))
    debug(load(cand), dataclasses.replace(options, optimization="basic"))
    assert _gated_reads(merged_protos[0])[0] == 0
    merged_protos.clear()
    debug(load(cand), options)
    assert _gated_reads(merged_protos[0])[0] > 0


def _matmul_models():
    """A float32 reference whose MatMul weight comes from a Constant node (paired and
    compared like any tensor), and its float16 twin."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 24)).astype(np.float32) * 0.1

    def model(dtype: int, numpy_type) -> onnx.ModelProto:
        nodes = [
            helper.make_node(
                "Constant",
                [],
                ["w"],
                value=helper.make_tensor(
                    "w", dtype, w.shape, w.astype(numpy_type).ravel().tolist()
                ),
            ),
            helper.make_node("Cast", ["x"], ["xc"], to=dtype),
            helper.make_node("Relu", ["xc"], ["h"], name="relu"),
            helper.make_node("MatMul", ["h", "w"], ["m"], name="matmul"),
            helper.make_node("Cast", ["m"], ["y"], to=FLOAT),
        ]
        graph = helper.make_graph(
            nodes,
            "mm",
            [helper.make_tensor_value_info("x", FLOAT, [1, 256])],
            [helper.make_tensor_value_info("y", FLOAT, [1, 24])],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto

    return model(FLOAT, np.float32), model(HALF, np.float16)


def test_a_constant_is_never_gated(tmp_path, merged_protos):
    # Behind a gate the reference's MatMul weight would no longer be a constant:
    # onnxruntime would not prepack it and would sum in another order (PP-OCR cls's
    # last MatMul moved by 3e-7; found on the real model). The report equals the
    # values path's, where the reference runs on its own.
    reference, candidate = _matmul_models()
    tolerance = Tolerance(1e-3, 1e-3)
    cand, options = _fp16_options(tmp_path, reference, candidate, tolerance, shape=(1, 256))
    fast, slow = _both(cand, options)
    proto = merged_protos[0]
    gated = {n.input[0] for n in proto.graph.node if "/gate/" in n.name}
    assert "surgeon.ref/w" not in gated and "surgeon.ref/h" in gated
    # `m` included (it differed with the weight gated); `y`: see the test above
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))
