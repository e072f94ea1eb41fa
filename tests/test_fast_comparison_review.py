"""Review of the in-graph fast comparison change (the float32 mismatch count, the merged
debug --ref model borrowing both models' weights, and a dot product from sums of squares
that this review showed wrong and was taken back).

Unit level: add_fast_comparison's numbers against compare_arrays (and the severity
excess against surgeon.precision.severity) on edge pairs, lopsided norms included. End
to end: debug --ref compared inside onnxruntime against the values path (keep_values=True
fetches every tensor and compares with compare_arrays), on models whose weights the
merged model lends to onnxruntime in every awkward way (external data in another folder,
the same file on both sides, IR 3 initializers-as-inputs, initializers that are graph
inputs/outputs, outer-scope weights read by an If body, float16, name collisions, unused
weights, reference weights paired with candidate node outputs).

The review found three bugs, all fixed since: an unused weight lent (debug --ref
failed), the cosine from sums of squares, and (older) a declared rank the run does not
follow (debug --ref failed); their tests now pass with the others.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.compare import Tolerance, compare_arrays
from surgeon.compare.in_graph import (
    add_comparison,
    add_fast_comparison,
    diff_from_outputs,
    needs_general,
    severity_from_outputs,
)
from surgeon.debugging import debug
from surgeon.debugging.results import DebugOptions
from surgeon.loading import load
from surgeon.precision.severity import _excess_and_born

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


# ---------------------------------------------------------------------------------------
# unit level: add_fast_comparison against compare_arrays


def _compare(a, b, tolerance, build=add_fast_comparison, *, severity=False, **extra):
    """(TensorDiff or None when the fast nodes defer, severity numbers or None)."""
    import onnxruntime as ort

    ta, tb = _TYPES[a.dtype], _TYPES[b.dtype]
    graph = helper.make_graph(
        [],
        "g",
        [
            helper.make_tensor_value_info("a", ta, None),
            helper.make_tensor_value_info("b", tb, None),
        ],
        [],
    )
    outs = build(graph, "a", ta, "b", tb, tolerance, "cmp/", severity=severity, **extra)
    for o in outs.names():
        graph.output.append(helper.make_empty_tensor_value_info(o))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    got = dict(zip(outs.names(), session.run(outs.names(), {"a": a, "b": b}), strict=True))
    if build is add_fast_comparison and needs_general(outs, got):
        return None, None
    diff = diff_from_outputs(outs, got, tolerance, name="t", reference="t")
    return diff, (severity_from_outputs(outs, got) if severity else None)


def _want(a, b, tolerance):
    if a.dtype != b.dtype:
        with np.errstate(over="ignore"):
            a = a.astype(b.dtype)  # the layer comparison casts the candidate
    return compare_arrays(a, b, tolerance, name="t", reference="t")


def _assert_same(got, want, cosine_tolerance=1e-12):
    g, w = got.to_dict(), want.to_dict()
    gc, wc = g.pop("cosine"), w.pop("cosine")
    assert g == w
    assert math.isclose(gc, wc, rel_tol=0, abs_tol=cosine_tolerance), (gc, wc)


def _edge_pairs(dtype_a, dtype_b):
    """Finite pairs of equal shapes: zero sides, extremes, subnormals, mixed magnitudes."""
    rng = np.random.default_rng(5)
    info = np.finfo(dtype_b)
    big = np.float64(np.finfo(np.float16).max if np.float16 in (dtype_a, dtype_b) else info.max)
    tiny = np.float64(np.finfo(dtype_b).smallest_subnormal)
    base = rng.standard_normal((3, 7))
    pairs = [
        (np.zeros((3, 7)), np.zeros((3, 7))),
        (np.zeros((3, 7)), base),  # candidate all zero
        (base, np.zeros((3, 7))),  # reference all zero
        (np.full((3, 7), big), np.full((3, 7), -big)),  # opposite extremes
        (np.full((3, 7), big), np.full((3, 7), big)),
        (np.full((3, 7), tiny * 3), np.full((3, 7), tiny)),  # subnormals only
        (np.where(base > 0, big / 2, tiny), np.where(base > 0, big / 2, 2 * tiny)),
        (base, base + rng.standard_normal((3, 7)) * 1e-3),
        (base, -base),
    ]
    return [(a.astype(dtype_a), b.astype(dtype_b)) for a, b in pairs]


@pytest.mark.parametrize(
    "dtypes",
    [
        (np.float32, np.float32),
        (np.float16, np.float16),
        (np.float16, np.float32),
        (np.float32, np.float16),
    ],
    ids=["f32-f32", "f16-f16", "f16-f32", "f32-f16"],
)
@pytest.mark.parametrize("planned", [False, True], ids=["no-plan", "size-and-rank"])
def test_fast_nodes_on_edge_pairs_equal_compare_arrays_and_severity(dtypes, planned):
    """Zero sides, float max, subnormals: every number equals compare_arrays's (cosine to
    1e-12), and the severity excess equals surgeon.precision.severity's on the candidate's
    own values (the raw path for a float32 candidate against a float16 reference)."""
    tolerance = Tolerance(atol=1e-5, rtol=1e-3)
    for a, b in _edge_pairs(*dtypes):
        extra = {"size": a.size, "rank": a.ndim} if planned else {}
        got, sev = _compare(a, b, tolerance, severity=True, **extra)
        cast = a.astype(b.dtype) if a.dtype != b.dtype else a
        if not (np.isfinite(cast.astype(np.float64)).all() and np.isfinite(a).all()):
            assert got is None  # deferred to the general nodes
            continue
        assert got is not None
        _assert_same(got, _want(a, b, tolerance))
        excess, born = _excess_and_born(a, b, tolerance)
        assert sev == (excess, born)


def test_float32_count_with_a_planned_size_that_did_not_hold_below_2_24():
    """A planned size (10) far from the run's (300k, still below 2**24): the float32 count
    is exact and the pair is not sent to the general nodes."""
    rng = np.random.default_rng(2)
    b = rng.standard_normal(300_000).astype(np.float32)
    a = b.copy()
    a[::3] += np.float32(1.0)
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    got, _ = _compare(a, b, tolerance, size=10, rank=1)
    assert got is not None and got.mismatches == 100_000
    _assert_same(got, _want(a, b, tolerance))


def test_cosine_within_1e_12_for_similar_norms_at_a_million_elements():
    """Near twins, opposite signs, independent tensors of equal size: 1e-12 holds."""
    rng = np.random.default_rng(4)
    b = rng.standard_normal(1_000_000).astype(np.float32)
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    for a in (
        b + rng.standard_normal(b.size).astype(np.float32) * np.float32(1e-3),
        -b,
        rng.standard_normal(b.size).astype(np.float32),
        (b * np.float32(2)).astype(np.float32),
    ):
        got, _ = _compare(a, b, tolerance, size=a.size, rank=1)
        _assert_same(got, _want(a, b, tolerance))


def test_cosine_error_of_lopsided_pair_at_a_million_elements_within_documented_bound():
    rng = np.random.default_rng(1)
    b = rng.standard_normal(1_000_000).astype(np.float32)
    a = (b * np.float32(1000) + rng.standard_normal(b.size).astype(np.float32) * 100).astype(
        np.float32
    )
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    got, _ = _compare(a, b, tolerance, size=a.size, rank=1)
    want = _want(a, b, tolerance)
    ratio = float(np.linalg.norm(a.astype(np.float64)) / np.linalg.norm(b.astype(np.float64)))
    _assert_same(got, want, cosine_tolerance=1e-12 + 4e-16 * (ratio + 1 / ratio))


def test_general_nodes_keep_the_cosine_of_a_scaled_copy():
    """(The general nodes, and ecfb03d's fast nodes, take the dot product directly.)"""
    b = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a = (b * np.float32(2.0**-70)).astype(np.float32)
    got, _ = _compare(a, b, Tolerance(atol=1e-5, rtol=1e-3), add_comparison)
    assert got.cosine == pytest.approx(1.0, abs=1e-12)


def test_fast_nodes_keep_the_cosine_of_a_scaled_copy():
    b = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a = (b * np.float32(2.0**-70)).astype(np.float32)
    tolerance = Tolerance(atol=1e-5, rtol=1e-3)
    got, _ = _compare(a, b, tolerance, size=a.size, rank=1)
    assert _want(a, b, tolerance).cosine == pytest.approx(1.0, abs=1e-12)
    assert got.cosine == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------
# end to end: debug --ref inside onnxruntime against the values path

_W = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
_W2 = (_W + np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32) * 1e-3).astype(
    np.float32
)
_SKIP = {"mode", "isolated_seconds", "taps", "seconds"}


def _vi(name, elem=TensorProto.FLOAT, shape=(4, 16)):
    return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)


def _model(nodes, inputs, outputs, inits, *, ir=8, opset=13, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits, value_info=list(value_info))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def _mlp(w, *, elem=TensorProto.FLOAT, name="W", extra_inits=(), ir=8, opset=13, inputs=None):
    """X -> MatMul(X, W) -> Relu -> Y."""
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    return _model(
        [
            helper.make_node("MatMul", ["X", name], ["H"], name="mm"),
            helper.make_node("Relu", ["H"], ["Y"], name="relu"),
        ],
        inputs if inputs is not None else [_vi("X", elem)],
        [_vi("Y", elem)],
        [numpy_helper.from_array(w.astype(dtype), name), *extra_inits],
        ir=ir,
        opset=opset,
    )


def _normalise(x):
    if isinstance(x, dict):
        return {k: _normalise(v) for k, v in x.items() if k not in _SKIP}
    if isinstance(x, list):
        return [_normalise(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def _cosines(x, path=""):
    """Every cosine in a report (path -> value), and the report without them."""
    found = {}

    def strip(v, p):
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                if k == "cosine" and isinstance(item, float):
                    found[f"{p}/{k}"] = item
                else:
                    out[k] = strip(item, f"{p}/{k}")
            return out
        if isinstance(v, list):
            return [strip(item, f"{p}/{i}") for i, item in enumerate(v)]
        return v

    return strip(x, path), found


def _debug_both(cand, ref, tolerance=Tolerance(atol=1e-5, rtol=1e-3), taps=("all",)):
    options = DebugOptions(reference=str(ref), tolerance=tolerance, taps=tuple(taps))
    model = load(str(cand))
    fast = debug(model, options)
    slow = debug(model, dataclasses.replace(options, keep_values=True))
    assert fast.mode == "statistics" and slow.mode == "values"
    return fast, slow


def _assert_fast_equals_values(cand, ref, tolerance=Tolerance(atol=1e-5, rtol=1e-3), taps=("all",)):
    fast, slow = _debug_both(cand, ref, tolerance, taps)
    f, fc = _cosines(_normalise(fast.to_dict()))
    s, sc = _cosines(_normalise(slow.to_dict()))
    assert f == s
    assert fc.keys() == sc.keys()
    for k in fc:
        assert math.isclose(fc[k], sc[k], rel_tol=0, abs_tol=1e-12), (k, fc[k], sc[k])
    assert fast.layers, "nothing compared"
    return fast


def test_reference_with_external_data_in_another_folder(tmp_path):
    (tmp_path / "refdir").mkdir()
    onnx.save(_mlp(_W2), tmp_path / "cand.onnx")
    onnx.save(
        _mlp(_W),
        tmp_path / "refdir" / "ref.onnx",
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "refdir" / "ref.onnx")


def test_both_with_external_data_in_one_folder_and_candidate_in_another(tmp_path):
    (tmp_path / "c").mkdir()
    onnx.save(_mlp(_W2), tmp_path / "c" / "cand.onnx", save_as_external_data=True,
              location="wc.bin", size_threshold=0)  # fmt: skip
    onnx.save(_mlp(_W), tmp_path / "ref.onnx", save_as_external_data=True, location="wr.bin",
              size_threshold=0)  # fmt: skip
    onnx.save(_mlp(_W), tmp_path / "cand_here.onnx", save_as_external_data=True,
              location="wh.bin", size_threshold=0)  # fmt: skip
    _assert_fast_equals_values(tmp_path / "c" / "cand.onnx", tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand_here.onnx", tmp_path / "ref.onnx")


def test_same_file_as_candidate_and_reference(tmp_path):
    onnx.save(_mlp(_W), tmp_path / "m.onnx")
    fast = _assert_fast_equals_values(tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert all(layer.diff.max_abs == 0 and layer.diff.cosine == 1.0 for layer in fast.layers)
    # the very same Model object as its own reference (Python API)
    model = load(str(tmp_path / "m.onnx"))
    report = debug(model, DebugOptions(reference=model))
    assert report.mode == "statistics" and report.passed
    assert all(layer.diff.max_abs == 0 and layer.diff.cosine == 1.0 for layer in report.layers)


def test_same_initializer_name_different_values_on_both_sides(tmp_path):
    """Both models name their weight W (the candidate's lent as W, the reference's as
    the renamed W): each side reads its own."""
    onnx.save(_mlp(_W2 * 3), tmp_path / "cand.onnx")
    onnx.save(_mlp(_W), tmp_path / "ref.onnx")
    fast = _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")
    h = next(layer.diff for layer in fast.layers if layer.diff.name == "H")
    assert h.mismatches > 0


def test_initializers_listed_as_inputs_on_both_sides(tmp_path):
    """(IR 4: an IR 3 model never reaches the merge, its statistics model is refused by
    onnxruntime for initializers not listed as inputs, as at ecfb03d.)"""
    inputs = [_vi("X"), _vi("W", shape=(16, 16))]
    onnx.save(_mlp(_W2, ir=4, opset=11, inputs=inputs), tmp_path / "cand.onnx")
    onnx.save(_mlp(_W, ir=4, opset=11, inputs=inputs), tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")


def test_weights_that_are_graph_inputs_or_outputs_of_either_model(tmp_path):
    """W is a graph output of one model and an overridable input of the other."""
    as_output = _mlp(_W2)
    as_output.graph.output.append(_vi("W", shape=(16, 16)))
    as_input = _mlp(_W, inputs=[_vi("X"), _vi("W", shape=(16, 16))])
    onnx.save(as_output, tmp_path / "out.onnx")
    onnx.save(as_input, tmp_path / "in.onnx")
    _assert_fast_equals_values(tmp_path / "out.onnx", tmp_path / "in.onnx")
    _assert_fast_equals_values(tmp_path / "in.onnx", tmp_path / "out.onnx")


def test_outer_scope_weight_read_by_an_if_body(tmp_path):
    """The candidate's lent W is read only inside an If branch (outer scope)."""
    then = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["t"], name="tm")],
                             "then", [], [_vi("t")])  # fmt: skip
    other = helper.make_graph([helper.make_node("Add", ["X", "X"], ["e"], name="ea")],
                              "else", [], [_vi("e")])  # fmt: skip
    cand = _model(
        [
            helper.make_node("ReduceSum", ["X"], ["s"], name="rs", keepdims=0),
            helper.make_node("Greater", ["s", "z"], ["cond"], name="gt"),
            helper.make_node("If", ["cond"], ["H"], name="if", then_branch=then, else_branch=other),
            helper.make_node("Relu", ["H"], ["Y"], name="relu"),
        ],
        [_vi("X")],
        [_vi("Y")],
        [
            numpy_helper.from_array(_W2, "W"),
            numpy_helper.from_array(np.array(-1e9, np.float32), "z"),
        ],
    )
    onnx.save(cand, tmp_path / "cand.onnx")
    onnx.save(_mlp(_W), tmp_path / "ref.onnx")
    # (only main-graph taps: a tap inside the body makes debug take the values path)
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx", taps=("H", "Y"))


def test_float16_candidate_and_float16_reference(tmp_path):
    onnx.save(_mlp(_W, elem=TensorProto.FLOAT16), tmp_path / "h.onnx")
    onnx.save(_mlp(_W), tmp_path / "f.onnx")
    loose = Tolerance(atol=1e-2, rtol=1e-2)
    _assert_fast_equals_values(tmp_path / "h.onnx", tmp_path / "f.onnx", loose)
    _assert_fast_equals_values(tmp_path / "f.onnx", tmp_path / "h.onnx", loose)
    _assert_fast_equals_values(tmp_path / "h.onnx", tmp_path / "h.onnx", loose)


def test_candidate_names_that_collide_with_the_reference_prefix(tmp_path):
    """Candidate tensors named like the merged model's renamed reference names."""

    def two(w, names):
        return _model(
            [
                helper.make_node("MatMul", ["X", names[0]], ["H"], name="mm"),
                helper.make_node("MatMul", ["X", names[1]], ["G"], name="mm2"),
                helper.make_node("Add", ["H", "G"], ["Y"], name="add"),
            ],
            [_vi("X")],
            [_vi("Y")],
            [numpy_helper.from_array(w, names[0]), numpy_helper.from_array(w * 2, names[1])],
        )

    onnx.save(two(_W2, ["surgeon.ref/W", "_surgeon.ref/W"]), tmp_path / "cand.onnx")
    onnx.save(two(_W, ["W", "surgeon.ref/W"]), tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")


@pytest.mark.parametrize("kind", ["float", "int64"])
def test_reference_weight_paired_with_a_candidate_node_output(tmp_path, kind):
    """The reference's lent weight is itself a compared (and, for int64, fetched) value:
    the candidate computes a tensor of that name (a Cast)."""
    if kind == "float":
        ref = _mlp(_W)
        cand = _model(
            [
                helper.make_node("Cast", ["W16"], ["W"], name="cast", to=TensorProto.FLOAT),
                helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"),
                helper.make_node("Relu", ["H"], ["Y"], name="relu"),
            ],
            [_vi("X")],
            [_vi("Y")],
            [numpy_helper.from_array(_W.astype(np.float16), "W16")],
        )
    else:
        idx = np.random.default_rng(3).integers(0, 16, 200).astype(np.int64)
        y = [_vi("Y", shape=(200, 4))]
        x = [_vi("X", shape=(16, 4))]
        ref = _model([helper.make_node("Gather", ["X", "I"], ["Y"], name="g", axis=0)], x, y,
                     [numpy_helper.from_array(idx, "I")])  # fmt: skip
        cand = _model(
            [
                helper.make_node("Cast", ["I32"], ["I"], name="cast", to=TensorProto.INT64),
                helper.make_node("Gather", ["X", "I"], ["Y"], name="g", axis=0),
            ],
            x,
            y,
            [numpy_helper.from_array(idx.astype(np.int32), "I32")],
        )
    onnx.save(cand, tmp_path / "cand.onnx")
    onnx.save(ref, tmp_path / "ref.onnx")
    fast = _assert_fast_equals_values(
        tmp_path / "cand.onnx", tmp_path / "ref.onnx", Tolerance(atol=1e-2, rtol=1e-2)
    )
    assert any(layer.diff.name in ("W", "I") for layer in fast.layers)


def _scaled(k: float) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"),
            helper.make_node("Mul", ["H", "k"], ["Y"], name="scale"),
        ],
        [_vi("X")],
        [_vi("Y")],
        [numpy_helper.from_array(_W, "W"), numpy_helper.from_array(np.array(k, np.float32), "k")],
    )


def test_debug_cosine_of_a_dead_scale_matches_the_values_path(tmp_path):
    onnx.save(_scaled(1e-20), tmp_path / "cand.onnx")
    onnx.save(_scaled(1.0), tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")


def _stale_rank(w) -> onnx.ModelProto:
    """F = Reshape(H, [prod(shape(H))]) runs at [64] but is declared [4, 16]."""
    return _model(
        [
            helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"),
            helper.make_node("Shape", ["H"], ["sh"], name="shape"),
            helper.make_node("ReduceProd", ["sh"], ["n"], name="prod", keepdims=1),
            helper.make_node("Reshape", ["H", "n"], ["F"], name="flatten"),
            helper.make_node("Relu", ["F"], ["Y"], name="relu"),
        ],
        [_vi("X")],
        [_vi("Y", shape=None)],
        [numpy_helper.from_array(w, "W")],
        value_info=[_vi("F", shape=(4, 16))],
    )


def test_debug_with_a_declared_shape_of_another_rank_than_the_run(tmp_path):
    """A pair declared at rank 2 that runs at rank 1: the fast nodes' numbers cannot be
    joined, the plan and the declared shapes both fail, and the comparison is made with
    the shapes left open (the general nodes) instead of failing (it did, older than the
    reviewed change)."""
    onnx.save(_stale_rank(_W2), tmp_path / "cand.onnx")
    onnx.save(_stale_rank(_W), tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")


def _with_unused_weight(w) -> onnx.ModelProto:
    """_mlp with a 2.4 kB initializer V that no node reads (exporters leave such)."""
    unused = numpy_helper.from_array(np.arange(600, dtype=np.float32), "V")
    return _mlp(w, extra_inits=[unused])


def test_reference_with_an_unused_initializer(tmp_path):
    onnx.save(_mlp(_W2), tmp_path / "cand.onnx")
    onnx.save(_with_unused_weight(_W), tmp_path / "ref.onnx")
    _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")


def test_candidate_with_an_unused_initializer_keeps_the_statistics_run(tmp_path):
    """An unused weight is not lent (onnxruntime would drop it, then refuse its array):
    the statistics model builds and the merge runs. (At ecfb03d the statistics model was
    refused and the tapped run fell back to numpy on fetched values.)"""
    onnx.save(_with_unused_weight(_W2), tmp_path / "cand.onnx")
    onnx.save(_mlp(_W), tmp_path / "ref.onnx")
    options = DebugOptions(reference=str(tmp_path / "ref.onnx"))
    report = debug(load(str(tmp_path / "cand.onnx")), options)
    assert report.mode == "statistics"
    assert not any("Failed to find existing initializer" in n for n in report.notes)
    assert report.layers and not report.passed


def _stale_size(w) -> onnx.ModelProto:
    """F = Reshape(H, shape(H)) runs at [4, 16] but is declared [2, 16] (same rank)."""
    return _model(
        [
            helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"),
            helper.make_node("Shape", ["H"], ["sh"], name="shape"),
            helper.make_node("Reshape", ["H", "sh"], ["F"], name="same"),
            helper.make_node("Relu", ["F"], ["Y"], name="relu"),
        ],
        [_vi("X")],
        [_vi("Y", shape=None)],
        [numpy_helper.from_array(w, "W")],
        value_info=[_vi("F", shape=(2, 16))],
    )


def test_debug_with_a_declared_size_other_than_the_run(tmp_path):
    """A planned size (32) that did not hold (64), same rank: the float32 count holds."""
    onnx.save(_stale_size(_W2), tmp_path / "cand.onnx")
    onnx.save(_stale_size(_W), tmp_path / "ref.onnx")
    fast = _assert_fast_equals_values(tmp_path / "cand.onnx", tmp_path / "ref.onnx")
    f = next(layer.diff for layer in fast.layers if layer.diff.name == "F")
    assert f.size == 64 and f.mismatches > 0
