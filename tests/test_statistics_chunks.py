"""Large tensors' float64 moments taken a chunk at a time (surgeon.statistics.in_graph
CHUNK): the same numbers numpy gives in float64 over the whole tensor, at and around the
chunk boundaries, far from zero, with NaN/Inf, and when the declared shape is wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from test_statistics import check

from surgeon.debugging import DebugOptions, debug
from surgeon.edits.tap import learn_types
from surgeon.model import Model
from surgeon.statistics import build_stats_model
from surgeon.statistics.in_graph import CHUNK, combine_chunks


def _chain(elem: int, declared, inner=None) -> Model:
    """x -> Identity -> a -> Identity -> y, x declared ``declared``; ``a`` declared
    ``inner`` when given (a value_info that may be wrong)."""
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="first"),
        helper.make_node("Identity", ["a"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", elem, declared)],
        [helper.make_tensor_value_info("y", elem, declared)],
    )
    if inner is not None:
        graph.value_info.append(helper.make_tensor_value_info("a", elem, inner))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model(proto)


def _stats(model: Model, x: np.ndarray):
    report = debug(model, DebugOptions(), feeds={"x": x})
    assert report.mode == "statistics" and report.tap_check.passed
    return {s.name: s for s in report.stats}


@pytest.mark.parametrize("size", [CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("offset", "spread"), [(0.0, 1.0), (7.5, 0.07), (1000.0, 0.01)])
def test_chunked_moments_equal_numpy(size, dtype, offset, spread, measure_path):
    rng = np.random.default_rng(size)
    x = (offset + rng.standard_normal(size) * spread).astype(dtype)
    x[::97] = 0  # zeros counted on the whole tensor
    model = _chain(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [size])
    found = _stats(model, x)
    check(found["a"], x)
    v = x.astype(np.float64)
    assert found["a"].mean == pytest.approx(float(np.mean(v)), rel=1e-13)
    assert found["a"].std == pytest.approx(float(np.std(v)), rel=1e-9)


def test_large_static_tensors_are_chunked_without_a_whole_float64_copy(onnx_nodes):
    size = 2 * CHUNK + 5
    model = _chain(TensorProto.FLOAT, [size])
    types = learn_types(model, ["a"])
    stats_model, outs = build_stats_model(model, ["a", "y"], types)
    assert len(outs["a"].chunks) == 3 and outs["a"].chunk_size == CHUNK
    casts = [
        n
        for n in stats_model.proto.graph.node
        if n.op_type == "Cast" and n.input[0] == "a"  # a whole-tensor copy would read `a`
    ]
    assert not casts
    # Small or dynamic tensors keep the one-piece nodes.
    small = _chain(TensorProto.FLOAT, [CHUNK])
    _, outs = build_stats_model(small, ["a"], learn_types(small, ["a"]))
    assert not outs["a"].chunks
    dynamic = _chain(TensorProto.FLOAT, ["n"])
    _, outs = build_stats_model(dynamic, ["a"], learn_types(dynamic, ["a"]))
    assert not outs["a"].chunks


def test_nan_and_inf_in_one_chunk_are_counted_by_the_second_pass(onnx_nodes):
    size = 2 * CHUNK + 3
    x = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    x[CHUNK + 10] = np.nan
    x[5] = np.inf
    found = _stats(_chain(TensorProto.FLOAT, [size]), x)
    s = found["a"]
    assert (s.nan, s.inf) == (1, 1)
    check(s, x)


def test_a_wrong_declared_shape_is_measured_again_whole(onnx_nodes):
    # The chunks are laid out for the declared 3 x CHUNK elements; the run gives fewer.
    # The tensor is measured again, whole, rather than from chunks that do not fit.
    declared = 3 * CHUNK
    model = _chain(TensorProto.FLOAT, ["n"], inner=[declared])
    types = learn_types(model, ["a"])
    _, outs = build_stats_model(model, ["a"], types)
    if not outs["a"].chunks:
        pytest.skip("onnxruntime did not take the declared shape of `a`")
    x = (5.0 + np.random.default_rng(1).standard_normal(CHUNK + 17)).astype(np.float32)
    found = _stats(model, x)
    check(found["a"], x)
    assert "needs-counts" not in found["a"].flags


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 50),
    st.floats(-1e4, 1e4),
    st.floats(1e-3, 1e3),  # offset / spread <= 1e7: numpy's own reference keeps 8 digits
    st.integers(0, 2**32 - 1),
)
def test_combine_chunks_equals_numpy(chunks, chunk, offset, spread, seed):
    rng = np.random.default_rng(seed)
    last = int(rng.integers(1, chunk + 1))
    size = chunk * (chunks - 1) + last
    v = offset + rng.standard_normal(size) * spread
    parts = [v[i : i + chunk] for i in range(0, size, chunk)]
    means = [float(np.mean(p)) for p in parts]
    squared = [float(np.sum((p - np.mean(p)) ** 2)) for p in parts]
    mean, total = combine_chunks(means, squared, size, chunk)
    assert mean == pytest.approx(float(np.mean(v)), rel=1e-12, abs=1e-9 * spread)
    want = float(np.sum((v - np.mean(v)) ** 2))
    assert total == pytest.approx(want, rel=1e-7, abs=1e-9 * spread**2 * size)


def test_combine_chunks_gives_nan_for_non_finite_parts():
    assert all(math.isnan(v) for v in combine_chunks([1.0, math.inf], [0.0, 0.0], 4, 2))
    assert all(math.isnan(v) for v in combine_chunks([math.nan], [0.0], 1, 1))


def test_dynamic_tensors_are_chunked_at_the_feeds_sizes(monkeypatch, onnx_nodes):
    # A dynamic export (the common case): the sizes come from shape inference at the
    # feeds' shapes, then are checked against the run.
    import surgeon.statistics.in_graph as in_graph

    made = []
    original = in_graph._chunked_stats_nodes
    monkeypatch.setattr(
        in_graph, "_chunked_stats_nodes", lambda *a, **k: made.append(a[1]) or original(*a, **k)
    )
    size = 2 * CHUNK + 5
    x = (3.0 + np.random.default_rng(7).standard_normal(size)).astype(np.float32)
    model = _chain(TensorProto.FLOAT, ["n"])
    found = _stats(model, x)
    assert "a" in made
    check(found["a"], x)
    assert in_graph.run_sizes(model, {"x": x}, learn_types(model, ["a"])) == {"a": size}
    # Static types need no plan.
    static = _chain(TensorProto.FLOAT, [size])
    assert in_graph.run_sizes(static, {"x": x}, learn_types(static, ["a"])) == {}
