"""Each built-in rewrite rule against an independent reference (numpy, onnx.reference, a
plain onnxruntime run of the original), at two sizes, with hypothesis where inputs vary:
random einsum equations from the supported grammar, random grids with out-of-range
coordinates, random scores with ties and NaN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import surgeon

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _ops(model) -> set[str]:
    return {n.op_type for n in model.proto.graph.node}


def _rewritten(proto, rule, **kwargs):
    edited = surgeon.rewrite(surgeon.Model(proto), [rule], **kwargs)
    assert edited.passed, edited.report.summary()
    # valid by onnx's own checker (shape inference included) whenever the original is
    # (test models written in short text leave outputs untyped, which it refuses)
    try:
        original = _typed(proto, proto)
        onnx.checker.check_model(original, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return edited
    onnx.checker.check_model(_typed(edited.model.proto, original), full_check=True)
    return edited


def _typed(proto: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its graph outputs typed as shape inference types them in
    ``original``, where the test's text left them untyped (``=> (y)``): the checker wants
    every output typed, and a rewrite keeps the outputs as they were."""
    inferred = onnx.shape_inference.infer_shapes(original).graph
    known = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    typed = onnx.ModelProto()
    typed.CopyFrom(proto)
    for out in typed.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            found = known[out.name].type
            if found.tensor_type.HasField("shape"):
                out.type.CopyFrom(found)
    return typed


# ------------------------------------------------------------------------------ topk
def _topk_reference(x: np.ndarray, k: int, axis: int, largest: int):
    """onnxruntime's order: better first, NaN above every number, ties by lower index."""
    moved = np.moveaxis(x, axis, -1)
    nan = np.isnan(moved) if moved.dtype.kind == "f" else np.zeros(moved.shape, bool)
    order = np.empty(moved.shape, np.int64)
    for index in np.ndindex(moved.shape[:-1]):
        row, row_nan = moved[index], nan[index]
        positions = np.arange(row.shape[0])
        if largest:
            keys = sorted(
                positions, key=lambda i: (not row_nan[i], -row[i] if not row_nan[i] else 0, i)
            )
        else:
            keys = sorted(positions, key=lambda i: (row_nan[i], row[i] if not row_nan[i] else 0, i))
        order[index] = keys
    top = order[..., :k]
    values = np.take_along_axis(moved, top, axis=-1)
    return np.moveaxis(values, -1, axis), np.moveaxis(top, -1, axis)


def _topk_model(rank: int, axis: int, largest: int, k: int, dynamic: bool, dtype="float"):
    dims = ", ".join(f"d{i}" if dynamic else "DIM" for i in range(rank))
    return parse(
        f"""<ir_version: 8, opset_import: ["" : 17]>
agraph ({dtype}[{dims}] x) => (v, i) {{
    k = Constant <value = int64[1] {{{k}}}> ()
    v, i = TopK <axis = {axis}, largest = {largest}, sorted = 1> (x, k)
}}""".replace("DIM", "6")
    )


@FAST
@given(
    st.integers(1, 3).flatmap(
        lambda rank: st.tuples(
            st.just(rank),
            st.integers(-rank, rank - 1),
            st.integers(0, 1),
            st.lists(st.integers(2, 6), min_size=rank, max_size=rank),
            st.integers(0, 2**31 - 1),
        )
    )
)
def test_topk_equals_onnxruntime_and_numpy_with_ties_and_nan(case):
    rank, axis, largest, dims, seed = case
    length = dims[axis]
    k = min(3, length)
    edited = surgeon.rewrite(
        surgeon.Model(_topk_model(rank, axis, largest, k, dynamic=True)), ["topk"], verify=False
    )
    assert "TopK" not in _ops(edited.model)
    original = surgeon.Model(_topk_model(rank, axis, largest, k, dynamic=True))
    rng = np.random.default_rng(seed)
    for shape in (dims, [d + 1 for d in dims]):  # two sizes
        x = rng.integers(0, 3, shape).astype(np.float32)  # many ties
        x[rng.random(shape) < 0.1] = np.nan
        x[rng.random(shape) < 0.05] = -0.0
        got = surgeon.run(edited.model, {"x": x})
        want = surgeon.run(original, {"x": x})
        ref_v, ref_i = _topk_reference(x, k, axis, largest)
        np.testing.assert_array_equal(got["i"], want["i"])
        np.testing.assert_array_equal(got["i"], ref_i)
        np.testing.assert_array_equal(got["v"], ref_v)  # NaN equals NaN here
        assert got["v"].tobytes() == want["v"].tobytes()


def test_topk_verification_is_bit_exact_at_two_sizes_and_two_seeds():
    dynamic = _rewritten(_topk_model(2, -1, 1, 4, dynamic=True), "topk")
    assert dynamic.report.tolerance.exact and dynamic.details["bit_identical"]
    assert any("second size" in n for n in dynamic.report.notes)
    static = _rewritten(_topk_model(2, 0, 0, 2, dynamic=False), "topk")
    assert any("second seed" in n for n in static.report.notes)
    assert len(static.report.tensors) == 4  # v, i at seed 0 and seed 1


def test_topk_of_integers_and_a_dynamic_k():
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
agraph (int64[N, L] x, int64[1] k) => (v, int64 i) {
    v, i = TopK <axis = 1> (x, k)
}"""
    )
    edited = surgeon.rewrite(
        surgeon.Model(proto),
        ["topk"],
        feed_options=surgeon.FeedOptions(shapes={"k": (1,)}, npz=None),
        verify=False,
    )
    x = np.array([[3, 1, 3, 2, 3], [0, 0, 5, 5, 1]], np.int64)
    for k in (1, 5):
        got = surgeon.run(edited.model, {"x": x, "k": np.array([k], np.int64)})
        ref_v, ref_i = _topk_reference(x, k, 1, 1)
        np.testing.assert_array_equal(got["i"], ref_i)
        np.testing.assert_array_equal(got["v"], ref_v)


def test_topk_sorted_0_is_refused():
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 5] x) => (v, int64 i) {
    k = Constant <value = int64[1] {2}> ()
    v, i = TopK <sorted = 0> (x, k)
}"""
    )
    with pytest.raises(surgeon.UsageError, match="sorted=0"):
        surgeon.rewrite(surgeon.Model(proto), ["topk"])


# ------------------------------------------------------------------------ gridsample
def _gridsample_model(mode, padding, corners, dynamic=True, opset=16, dtype="float"):
    x = "[N, C, H, W]" if dynamic else "[2, 3, 5, 6]"
    g = "[N, Ho, Wo, 2]" if dynamic else "[2, 4, 3, 2]"
    return parse(
        f"""<ir_version: 8, opset_import: ["" : {opset}]>
agraph ({dtype}{x} x, {dtype}{g} grid) => (y) {{
    y = GridSample <mode = "{mode}", padding_mode = "{padding}", align_corners = {corners}> (x, grid)
}}"""
    )


MODES = [
    (mode, padding, corners)
    for mode in ("bilinear", "nearest")
    for padding in ("zeros", "border", "reflection")
    for corners in (0, 1)
]


@pytest.mark.parametrize(("mode", "padding", "corners"), MODES)
def test_gridsample_equals_the_reference_evaluator_at_two_sizes(mode, padding, corners):
    proto = _gridsample_model(mode, padding, corners)
    edited = _rewritten(proto, "gridsample")
    assert "GridSample" not in _ops(edited.model)
    assert any("second size" in n for n in edited.report.notes)
    # onnx's evaluator knows GridSample as opset 20 spells it (bilinear became linear)
    spelled = "linear" if mode == "bilinear" else mode
    reference = ReferenceEvaluator(_gridsample_model(spelled, padding, corners, opset=20))
    rng = np.random.default_rng(7)
    for n, c, h, w, ho, wo in ((1, 2, 4, 5, 3, 3), (2, 3, 7, 3, 2, 5)):
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        grid = rng.uniform(-1.6, 1.6, (n, ho, wo, 2)).astype(np.float32)  # out of range too
        grid[0, 0, 0] = [-1, 1]  # the corners exactly
        got = surgeon.run(edited.model, {"x": x, "grid": grid})["y"]
        (want,) = reference.run(None, {"x": x, "grid": grid})
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        plain = surgeon.run(surgeon.Model(proto), {"x": x, "grid": grid})["y"]
        np.testing.assert_allclose(got, plain, atol=1e-5, rtol=1e-5)


@FAST
@given(
    st.sampled_from(MODES),
    st.tuples(*[st.integers(1, 5)] * 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1.0, 2.5, 40.0]),
)
def test_gridsample_random_grids_match_onnxruntime(mode, dims, seed, spread):
    n, c, h, w, ho, wo = dims
    proto = _gridsample_model(*mode)
    edited = surgeon.rewrite(surgeon.Model(proto), ["gridsample"], verify=False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    grid = rng.uniform(-spread, spread, (n, ho, wo, 2)).astype(np.float32)
    # coordinates on pixel centres and half-way between them (Round's ties)
    steps = rng.integers(-2 * max(h, w), 2 * max(h, w), (n, ho, wo, 2))
    on_grid = rng.random((n, ho, wo, 1)) < 0.3
    grid = np.where(on_grid, (steps / (2 * max(w, 1))).astype(np.float32), grid)
    got = surgeon.run(edited.model, {"x": x, "grid": grid})["y"]
    want = surgeon.run(surgeon.Model(proto), {"x": x, "grid": grid})["y"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_gridsample_float16_and_opset_20_linear():
    edited = _rewritten(_gridsample_model("bilinear", "zeros", 0, dtype="float16"), "gridsample")
    assert edited.model.proto.graph.output[0].type.tensor_type.elem_type in (0, TensorProto.FLOAT16)
    proto = _gridsample_model("linear", "border", 1, opset=20)
    edited = _rewritten(proto, "gridsample")
    assert "GridSample" not in _ops(edited.model)


# ---------------------------------------------------------------------------- einsum
def _einsum_model(equation: str, terms: list[str], dynamic: bool, sizes: dict):
    inputs = [
        helper.make_tensor_value_info(
            f"x{i}", TensorProto.FLOAT, [f"d_{c}" if dynamic else sizes[c] for c in term]
        )
        for i, term in enumerate(terms)
    ]
    node = helper.make_node(
        "Einsum", [f"x{i}" for i in range(len(terms))], ["y"], equation=equation, name="es"
    )
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@st.composite
def equations(draw):
    letters = "abcde"
    count = draw(st.integers(1, 3))
    terms = [
        "".join(draw(st.permutations(letters))[: draw(st.integers(0, 3))]) for _ in range(count)
    ]
    used = sorted(set("".join(terms)))
    if draw(st.booleans()):
        out = "".join(draw(st.permutations(used))[: draw(st.integers(0, len(used)))])
        equation = ",".join(terms) + "->" + out
    else:
        equation = ",".join(terms)
    sizes = {c: draw(st.integers(1, 4)) for c in letters}
    return equation, terms, sizes


@FAST
@given(equations())
def test_random_einsum_equations_equal_numpy_at_two_sizes(case):
    equation, terms, sizes = case
    edited = surgeon.rewrite(
        surgeon.Model(_einsum_model(equation, terms, True, sizes)), ["einsum"], verify=False
    )
    assert "Einsum" not in _ops(edited.model)
    rng = np.random.default_rng(0)
    for grow in (0, 1):  # two sizes
        feeds = {
            f"x{i}": rng.standard_normal([sizes[c] + grow for c in t]).astype(np.float32)
            for i, t in enumerate(terms)
        }
        got = surgeon.run(edited.model, feeds)["y"]
        want = np.einsum(equation, *feeds.values())
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "equation",
    ["bij,bjk->bik", "bhqd,bhkd->bhqk", "i,j->ij", "ij->ji", "ij->", "abc,cd,de->abe", "ij,jk"],
)
def test_common_einsum_equations_verify_at_two_sizes(equation):
    terms = equation.split("->")[0].split(",")
    sizes = {c: 3 + i for i, c in enumerate("abcdehijkqd")}
    edited = _rewritten(_einsum_model(equation, terms, True, sizes), "einsum")
    assert any("second size" in n for n in edited.report.notes), edited.report.notes
    static = _rewritten(_einsum_model(equation, terms, False, sizes), "einsum")
    # static dims become constants: no Shape op is left to read them at run time
    assert "Shape" not in _ops(static.model)


@pytest.mark.parametrize(
    ("equation", "count", "why"),
    [
        ("...ij,...jk->...ik", 2, "ellipsis"),
        ("ii->i", 1, "repeats i"),
        ("ij->k", 1, "in no operand"),
    ],
)
def test_unsupported_einsum_equations_are_refused(equation, count, why):
    from surgeon.rewrites.einsum import parse_equation

    with pytest.raises(ValueError, match=why):
        parse_equation(equation, count)


# ------------------------------------------------------------------------- layernorm
def _layernorm_reference(x, scale, bias, axis, epsilon):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + epsilon) * scale + bias


@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layernorm_decompose_equals_numpy_at_two_sizes(axis):
    proto = parse(
        f"""<ir_version: 9, opset_import: ["" : 18]>
agraph (float[N, T, 8] x, float[8] w, float[8] b) => (y) {{
    y = LayerNormalization <axis = {axis}, epsilon = 0.001> (x, w, b)
}}"""
    )
    edited = _rewritten(proto, "layernorm-decompose")
    assert "LayerNormalization" not in _ops(edited.model)
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    for shape in ((1, 3, 8), (4, 5, 8)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = surgeon.run(edited.model, {"x": x, "w": w, "b": b})["y"]
        want = _layernorm_reference(x, w, b, axis, 1e-3)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_layernorm_decompose_float16_keeps_mean_and_inv_std_dev():
    proto = parse(
        """<ir_version: 9, opset_import: ["" : 17]>
agraph (float16[N, 8] x, float16[8] w) => (y, m, s) {
    y, m, s = LayerNormalization (x, w)
}"""
    )
    edited = _rewritten(proto, "layernorm-decompose", tolerance=surgeon.Tolerance(atol=1e-3))
    assert len(edited.report.tensors) == 6  # three outputs at two sizes


def _exported_layernorm(
    opset: int, axes_input: bool = False, scaled: bool = True
) -> onnx.ModelProto:
    """The pattern torch exporters emit below opset 17 (ReduceMean's axes an input from 18)."""
    reduce1 = "ReduceMean <keepdims = 1> (x, ax)" if axes_input else "ReduceMean <axes = [-1]> (x)"
    reduce2 = "ReduceMean <keepdims = 1> (p, ax)" if axes_input else "ReduceMean <axes = [-1]> (p)"
    tail = "\n    y = Mul (n, w)\n    z = Add (y, b)" if scaled else "\n    z = Identity (n)"
    return parse(
        f"""<ir_version: 9, opset_import: ["" : {opset}]>
agraph (float[N, T, 8] x) => (z)
  <float[8] w = {{1, 2, 3, 4, 5, 6, 7, 8}}, float[8] b = {{0, 1, 0, 1, 0, 1, 0, 1}},
   int64[1] ax = {{-1}}> {{
    m = {reduce1}
    d = Sub (x, m)
    two = Constant <value = float {{2.0}}> ()
    p = Pow (d, two)
    v = {reduce2}
    e = Constant <value = float {{1e-5}}> ()
    ve = Add (v, e)
    s = Sqrt (ve)
    n = Div (d, s){tail}
}}"""
    )


@pytest.mark.parametrize(("opset", "axes_input"), [(17, False), (18, True)])
def test_layernorm_fuse_equals_the_original_and_numpy(opset, axes_input):
    proto = _exported_layernorm(opset, axes_input)
    edited = _rewritten(proto, "layernorm-fuse")
    ops = _ops(edited.model)
    assert "LayerNormalization" in ops and not ops & {"Pow", "Sqrt", "Div", "ReduceMean"}
    w = np.arange(1, 9, dtype=np.float32)
    b = np.array([0, 1] * 4, np.float32)
    rng = np.random.default_rng(5)
    for shape in ((1, 2, 8), (3, 7, 8)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = surgeon.run(edited.model, {"x": x})["z"]
        np.testing.assert_allclose(got, _layernorm_reference(x, w, b, -1, 1e-5), atol=1e-5)
        np.testing.assert_allclose(got, ReferenceEvaluator(proto).run(None, {"x": x})[0], atol=1e-5)


def test_layernorm_fuse_without_scale_and_the_round_trip():
    edited = _rewritten(_exported_layernorm(17, scaled=False), "layernorm-fuse")
    assert "LayerNormalization" in _ops(edited.model)
    back = _rewritten(edited.model.proto, "layernorm-decompose")
    assert "LayerNormalization" not in _ops(back.model)


def test_layernorm_fuse_refuses_below_opset_17():
    with pytest.raises(surgeon.UsageError, match="opset is 13"):
        surgeon.rewrite(surgeon.Model(_exported_layernorm(13)), ["layernorm-fuse"])


def test_layernorm_fuse_leaves_a_pattern_whose_tensor_a_branch_reads():
    proto = _exported_layernorm(17)
    # an If body reads `s` (the Sqrt's output): fusing would remove it from under the If
    then = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["s"], ["t"])],
        "then",
        [],
        [onnx.helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    cond = onnx.helper.make_node(
        "Constant", [], ["c"], value=onnx.helper.make_tensor("v", TensorProto.BOOL, [], [True])
    )
    branch = onnx.helper.make_node("If", ["c"], ["o"], then_branch=then, else_branch=then)
    proto.graph.node.extend([cond, branch])
    proto.graph.output.append(onnx.helper.make_tensor_value_info("o", TensorProto.FLOAT, None))
    with pytest.raises(surgeon.UsageError, match="matches no node"):
        surgeon.rewrite(surgeon.Model(proto), ["layernorm-fuse"])
