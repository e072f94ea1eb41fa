"""debug --ref MODEL with the isolated units inside the merged onnxruntime run
(surgeon.debugging.in_graph_compare.plan_isolation): the report equals the values
path's (keep_values forces it) on float16 overflows, float32 against float16, and the
cases that keep the values path (zero atol, a merged run onnxruntime refuses); the
severity and overflow nodes give numpy's numbers on the same arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import write
from onnx import TensorProto, helper
from test_debug_in_graph import _both, _normalise, _without
from test_precision_float16 import float_model, random_orders, to_float16

import surgeon.debugging.in_graph_compare as in_graph_compare
from surgeon.compare import Tolerance, as_reference_dtype, compare_arrays
from surgeon.compare.in_graph import (
    SharedNodes,
    add_comparison,
    add_fast_comparison,
    add_overflow_count,
    diff_from_outputs,
    needs_general,
    severity_from_outputs,
)
from surgeon.debugging.results import DebugOptions
from surgeon.errors import RuntimeFailure
from surgeon.model import Model
from surgeon.precision.severity import _excess_and_born
from surgeon.runner import RunOptions, run


@pytest.fixture
def spy(monkeypatch):
    """The merged runs' results (how many units ran inside, what overflowed)."""
    seen = []
    original = in_graph_compare.compare_in_graph

    def compare(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append((len(kwargs.get("units", ())), result))
        return result

    monkeypatch.setattr(in_graph_compare, "compare_in_graph", compare)
    return seen


def _fp16_options(tmp_path, reference, candidate, tolerance, shape=(4, 16)):
    cand = write(candidate, tmp_path / "cand.onnx")
    ref = write(reference, tmp_path / "ref.onnx")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    options = DebugOptions(reference=str(ref), tolerance=tolerance)
    options = dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
    )
    return cand, options


@pytest.mark.parametrize("order", range(2))
def test_float16_overflow_inside_equals_values_path(tmp_path, spy, order, measure_path):
    """The planted overflow: `sq` is Inf in float16, the nodes after it inherit (their
    input overflowed), `square` is the root cause; every unit ran inside the merged run."""
    reference = float_model(1e4)
    candidate = random_orders(to_float16(reference), 2, seed=5)[order]
    cand, options = _fp16_options(tmp_path, reference, candidate, Tolerance(1e-2, 1e-2))
    fast, slow = _both(cand, options)
    units, result = spy[0]
    assert units >= 10 and len(result.isolated) >= 10
    # NaN/Inf: the general nodes run again (surgeon's kernel compares them at once)
    assert "sq" in result.overflowed and result.runs == (2 if measure_path == "nodes" else 1)
    assert fast.root_cause.node == "square"
    tiers = {u.node: u.severity.tier for u in fast.precision.ranking}
    assert tiers["square"] == "non-finite" and tiers["variance"] == "inherited"
    # (`y`: onnxruntime drops the float16 rounding of a Cast's input unless fetched; see
    # test_debug_in_graph.test_float16_against_float32)
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))


def test_float32_candidate_against_float16_reference(tmp_path, spy):
    """The candidate wider than the reference: its comparison casts it to float16, the
    severity reads its own float32 values (as numpy does)."""
    reference = to_float16(float_model(1.0))
    cand, options = _fp16_options(tmp_path, reference, float_model(1.0), Tolerance(1e-5, 1e-5))
    fast, slow = _both(cand, options)
    assert spy[0][0] >= 5
    assert any(u.severity.excess > 0 for u in fast.precision.ranking)
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())


def test_zero_atol_keeps_the_values_path(tmp_path, spy):
    reference = float_model(1.0)
    cand, options = _fp16_options(tmp_path, reference, to_float16(reference), Tolerance(0, 1e-3))
    fast, slow = _both(cand, options)
    assert spy[0][0] == 0 and spy[0][1].reference_values  # fetched for the values path
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))


def test_a_refused_merged_run_runs_again_without_units(tmp_path, monkeypatch):
    original = in_graph_compare.compare_in_graph
    calls = []

    def refusing(*args, **kwargs):
        calls.append(len(kwargs.get("units", ())))
        if kwargs.get("units"):
            raise RuntimeFailure("onnxruntime could not run the merged model (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(in_graph_compare, "compare_in_graph", refusing)
    reference = float_model(1e4)
    cand, options = _fp16_options(tmp_path, reference, to_float16(reference), Tolerance(1e-2))
    fast, slow = _both(cand, options)
    assert calls[0] > 0 and calls[1] == 0
    assert fast.root_cause.node == "square"
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))


# -- the nodes against numpy ------------------------------------------------------------

_ELEM = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT}


def _run_comparison(actual: np.ndarray, expected: np.ndarray, tolerance, fast, rank=None):
    graph = helper.make_graph(
        [],
        "cmp",
        [
            helper.make_tensor_value_info("a", _ELEM[actual.dtype], list(actual.shape)),
            helper.make_tensor_value_info("b", _ELEM[expected.dtype], list(expected.shape)),
        ],
        [],
    )
    extra = {"rank": rank, "shared": SharedNodes()} if fast else {}
    build = add_fast_comparison if fast else add_comparison
    out = build(
        graph,
        "a",
        _ELEM[actual.dtype],
        "b",
        _ELEM[expected.dtype],
        tolerance,
        "c/",
        severity=True,
        **extra,
    )
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in out.names())
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    got = run(Model(proto), {"a": actual, "b": expected}, options=RunOptions())
    return out, got


def _arrays(rng, kind: str):
    b = rng.standard_normal((7, 300)).astype(np.float32) * 3
    b[:, ::13] = 0
    a = b + rng.standard_normal(b.shape).astype(np.float32) * 1e-3
    a[:, ::7] = b[:, ::7]
    if kind == "nonfinite":
        a[0, 3], a[1, 4], b[2, 5], a[3, 6], b[3, 6] = np.nan, np.inf, -np.inf, np.nan, np.nan
        b[4, 7] = np.nan
    if kind == "float16":
        return a.astype(np.float16), b
    if kind == "wider":
        return a, b.astype(np.float16)
    if kind == "overflow":
        return (a * 1e4).astype(np.float16), b * 1e4
    return a, b


@pytest.mark.parametrize("kind", ["finite", "nonfinite", "float16", "wider", "overflow"])
@pytest.mark.parametrize("tolerance", [Tolerance(1e-4, 1e-4), Tolerance(1e-2, 0.0)], ids=str)
def test_severity_nodes_give_numpys_numbers(kind, tolerance):
    with np.errstate(over="ignore"):
        actual, expected = _arrays(np.random.default_rng(3), kind)
    want = _excess_and_born(actual, expected, tolerance)
    want_diff = compare_arrays(as_reference_dtype(actual, expected)[0], expected, tolerance)
    # the fast nodes flattened, and in the tensors' own rank (float32 pairs); general
    for fast, rank in ((True, None), (True, actual.ndim), (False, None)):
        out, got = _run_comparison(actual, expected, tolerance, fast, rank)
        if fast and needs_general(out, got):
            assert kind in ("nonfinite", "overflow")  # the caller compares them again
            continue
        assert severity_from_outputs(out, got) == want, (kind, fast, rank)
        diff = diff_from_outputs(out, got, tolerance, name="", reference="")
        assert (diff.mismatches, diff.max_abs, diff.max_rel) == (
            want_diff.mismatches,
            want_diff.max_abs,
            want_diff.max_rel,
        )


def test_overflow_count_gives_numpys_count():
    wide = np.array([1.0, 7e4, -7e4, np.inf, np.nan, 65504.0, 65519.0, 65520.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["n"], to=TensorProto.FLOAT16)],
        "overflow",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [8])],
        [],
    )
    count = add_overflow_count(graph, "w", "n", "o/")
    graph.output.add().name = count
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    got = run(Model(proto), {"w": wide}, options=RunOptions())[count]
    with np.errstate(over="ignore"):
        narrowed = wide.astype(np.float16)
    assert got.tolist() == [np.count_nonzero(np.isfinite(wide) & ~np.isfinite(narrowed))]
    assert got.tolist() == [3.0]


def test_an_optimised_run_keeps_the_values_path(tmp_path, spy):
    """The isolated run disables optimisation: with --optimization basic the merged run
    does not, so no unit goes inside it (their values are fetched as before)."""
    reference = float_model(1e4)
    cand, options = _fp16_options(tmp_path, reference, to_float16(reference), Tolerance(1e-2))
    options = dataclasses.replace(options, optimization="basic")
    fast, slow = _both(cand, options)
    assert spy[0][0] == 0 and spy[0][1].reference_values
    assert fast.root_cause.node == "square"
    assert _normalise(_without(fast.to_dict(), "y")) == _normalise(_without(slow.to_dict(), "y"))


def test_names_that_look_like_the_isolated_prefix(tmp_path, spy):
    """Tensors named like the isolated units' prefix neither collide nor mix up."""
    from test_debug_in_graph import _chain

    def hostile(scale):
        m = _chain(scale)
        names = {"m": "surgeon.iso/0/m", "r": "surgeon.iso/in/0", "y": "surgeon.iso/1/0/relu"}
        for node in m.graph.node:
            node.input[:] = [names.get(x, x) for x in node.input]
            node.output[:] = [names.get(x, x) for x in node.output]
        for o in m.graph.output:
            o.name = names.get(o.name, o.name)
        return m

    cand = write(hostile(1.001), tmp_path / "c.onnx")
    ref = write(hostile(1.0), tmp_path / "r.onnx")
    fast, slow = _both(cand, DebugOptions(reference=str(ref)))
    assert spy[0][0] >= 2
    assert {"surgeon.iso/0/m", "surgeon.iso/in/0"} <= {layer.diff.name for layer in fast.layers}
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())
