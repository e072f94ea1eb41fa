"""Models that are unusual but real: every command must take them in its stride.

Real exports have nodes without names, unused initializers, no shape information,
initializers listed as graph inputs (old exporters), weights in Constant nodes, declared
shapes that are simply wrong, quantized integer ops, ``ai.onnx.ml`` operators and If/Loop
bodies that read outer-scope tensors. Each such model here loads, inspects, taps,
extracts, diffs against itself and renames, and the values surgeon produces are checked
against onnx's ReferenceEvaluator (an independent implementation). Declared shapes that
disagree with a run are reported by ``surgeon.shapecheck.declared_vs_actual``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, run_cli, write
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import surgeon
from surgeon.compare import EXACT
from surgeon.shapecheck import ShapeMismatch, declared_names, declared_vs_actual

CONV_W = ", ".join(f"{v:.3f}" for v in np.linspace(-1, 1, 54))


def _no_shapes() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])],
        "no_shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],  # unknown rank
        [onnx.ValueInfoProto(name="y")],  # no type at all
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _initializer_as_input() -> onnx.ModelProto:
    """IR 3 style: every initializer is also a graph input."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        "old_exporter",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[w],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 3
    return m


def _wrong_declared_shapes() -> onnx.ModelProto:
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[N, 3] x) => (float[1, 5] y, float[N, 3, 1] z) {
        a = Relu(x)
        y = Neg(a)
        z = Identity(a)
    }""")
    m.graph.value_info.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 7]))
    return m


# name -> (model builder, input shape, extract inputs, extract outputs, output to rename)
UNUSUAL = {
    "unnamed_nodes": (
        lambda: parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 3] x) => (y) {
            a = Relu(x)
            b = Neg(a)
            y = Add(a, b)
        }"""),
        (2, 3),
        "a",
        "b",
        "y",
    ),
    "unused_initializer": (
        lambda: parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 3] x) => (y)
            <float[3] w = {1.0, 2.0, 3.0}, float[4] unused = {9.0, 9.0, 9.0, 9.0}> {
            a = Mul(x, w)
            y = Relu(a)
        }"""),
        (2, 3),
        "x",
        "a",
        "y",
    ),
    "no_shapes": (_no_shapes, (2, 3), "a", "y", "y"),
    "initializer_as_input": (_initializer_as_input, (2, 3), "x", "a", "y"),
    "constant_weights": (
        lambda: parse(f"""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[1, 2, 5, 5] x) => (y) {{
            w = Constant <value = float[3, 2, 3, 3] w_value {{{CONV_W}}}> ()
            b = Constant <value = float[3] b_value {{0.1, 0.2, 0.3}}> ()
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = Relu(c)
        }}"""),
        (1, 2, 5, 5),
        "x",
        "c",
        "y",
    ),
    "wrong_declared_shapes": (_wrong_declared_shapes, (2, 3), "a", "y,z", "z"),
    "quantized": (
        lambda: parse("""<ir_version: 9, opset_import: ["" : 21]>
        agraph (float[2, 4] x) => (y)
            <float xs = {0.05}, uint8 xz = {128}, uint8[4, 3] wq = {1,2,3,4,5,6,7,8,9,10,11,12},
             float ws = {0.1}, uint8 wz = {3}, float ys = {0.02}, uint8 yz = {100}> {
            xq = QuantizeLinear(x, xs, xz)
            yq = QLinearMatMul(xq, xs, xz, wq, ws, wz, ys, yz)
            y = DequantizeLinear(yq, ys, yz)
        }"""),
        (2, 4),
        "xq",
        "yq",
        "y",
    ),
    "ml_ops": (
        lambda: parse("""<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
        agraph (float[2, 3] x) => (y) {
            s = ai.onnx.ml.Scaler <offset = [0.5, 0.0, -0.5], scale = [2.0, 1.0, 0.5]> (x)
            y = ai.onnx.ml.Normalizer <norm = "L2"> (s)
        }"""),
        (2, 3),
        "s",
        "y",
        "y",
    ),
    "outer_scope": (
        lambda: parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[3] x) => (y, float[3] z) {
            a = Relu(x)
            trip = Constant <value = int64 {4}> ()
            cond = Constant <value = bool {1}> ()
            s = ReduceSum(x)
            zero = Constant <value = float {0.0}> ()
            pos = Greater(s, zero)
            z = If (pos) <
                then_branch = g1 () => (float[3] t) { t = Add(a, x) },
                else_branch = g2 () => (float[3] e) { e = Sub(a, x) }>
            y = Loop (trip, cond, x) <body = body (int64 i, bool c, float[3] acc)
                => (bool c_out, float[3] acc_out) {
                    c_out = Identity(c)
                    acc_out = Add(acc, a)
                }>
        }"""),
        (3,),
        "a,x,pos",
        "z",
        "y",
    ),
}


def _feeds(shape) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal(shape).astype(np.float32)}


def _reference(proto: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    """Every main-graph tensor from onnx's ReferenceEvaluator (independent of onnxruntime)."""
    values = ReferenceEvaluator(proto).run(None, feeds, intermediate=True)
    return {**feeds, **{k: np.asarray(v) for k, v in values.items()}}


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.dtype.kind in "iub":
        # Quantized rounding of two implementations may differ by one step.
        assert np.abs(actual.astype(np.int64) - expected.astype(np.int64)).max(initial=0) <= 1
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _plain_run(path, feeds) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values, strict=True))


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_model_goes_through_every_command(tmp_path, name):
    build, shape, cut_in, cut_out, renamed = UNUSUAL[name]
    proto = build()
    model = write(proto, tmp_path / f"{name}.onnx")
    feeds = _feeds(shape)
    np.savez(tmp_path / "feeds.npz", **feeds)
    expected = _reference(proto, feeds)

    result = run_cli("inspect", model)
    assert result.status == 0, result.stderr

    # tap everything; the tapped values equal the reference evaluator's
    result = run_cli(
        "debug", model, "--feeds", tmp_path / "feeds.npz", "--save", tmp_path / "taps.npz"
    )
    assert result.status == 0, result.stdout + result.stderr
    with np.load(tmp_path / "taps.npz") as taps:
        compared = [k for k in taps.files if k in expected]
        assert compared
        for k in compared:
            _close(taps[k], expected[k])

    # extract, then run the cut-out part on the reference's values
    sub_path = tmp_path / "sub.onnx"
    result = run_cli(
        "extract", model, "--inputs", cut_in, "--outputs", cut_out, "--feeds",
        tmp_path / "feeds.npz", "-o", sub_path,
    )  # fmt: skip
    assert result.status == 0, result.stdout + result.stderr
    sub = surgeon.load(sub_path)
    assert set(sub.input_names) == set(cut_in.split(","))
    got = _plain_run(sub_path, expected)
    for out in cut_out.split(","):
        _close(got[out], expected[out])

    result = run_cli("diff", model, model, "--feeds", tmp_path / "feeds.npz", "--exact")
    assert result.status == 0, result.stdout + result.stderr

    result = run_cli(
        "rename", model, "--map", f"{renamed}=renamed", "--feeds", tmp_path / "feeds.npz",
        "-o", tmp_path / "renamed.onnx",
    )  # fmt: skip
    assert result.status == 0, result.stdout + result.stderr
    _close(_plain_run(tmp_path / "renamed.onnx", feeds)["renamed"], expected[renamed])


def test_initializer_listed_as_input_is_not_an_input_to_feed(tmp_path):
    model = write(_initializer_as_input(), tmp_path / "old.onnx")
    assert surgeon.load(model).input_names == ["x"]
    info = run_cli("inspect", model, "--json").json
    assert info["initializers_as_inputs"] == ["w"]
    assert [i["name"] for i in info["inputs"]] == ["x"]
    debug = run_cli("debug", model, "--json").json
    assert list(debug["feeds"]) == ["x"]


def test_unused_initializer_survives_save_and_is_dropped_by_extract(tmp_path):
    build = UNUSUAL["unused_initializer"][0]
    model = surgeon.load(write(build(), tmp_path / "m.onnx"))
    again = surgeon.load(surgeon.save(model, tmp_path / "copy.onnx"))
    assert [t.name for t in again.proto.graph.initializer] == ["w", "unused"]
    sub = surgeon.extract(model, ["x"], ["y"])
    assert sub.passed
    assert [t.name for t in sub.model.proto.graph.initializer] == ["w"]


def test_weights_in_constant_nodes_and_subgraphs_go_to_external_data(tmp_path):
    """save(external_data=True) moves every large tensor (Constant values, subgraph
    initializers, typed float_data) to the side file, and leaves the input untouched."""
    weights = np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [30, 20], weights.T.ravel().tolist())
    assert not typed.raw_data  # held in float_data, as some exporters write it
    const = helper.make_node(
        "Constant", [], ["c"], value=numpy_helper.from_array(weights * 2, "c_value")
    )
    branch_w = numpy_helper.from_array(weights[:, :20] + 1, "branch_w")
    branch_w_bytes = 20 * 20 * 4
    then_g = helper.make_graph(
        [helper.make_node("Add", ["m", "branch_w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [20, 20])],
        initializer=[branch_w],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["m"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [20, 20])],
    )
    nodes = [
        const,
        helper.make_node("Add", ["x", "c"], ["xc"]),
        helper.make_node("MatMul", ["xc", "typed"], ["m"]),
        helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["p"]),
        helper.make_node("If", ["p"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes,
        "weights_everywhere",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20, 30])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20, 20])],
        initializer=[typed, numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = surgeon.load(write(proto, tmp_path / "m.onnx"))
    assert model.weight_bytes() == 2 * weights.nbytes + branch_w_bytes + 4
    before = model.proto.SerializeToString()

    out = surgeon.save(model, tmp_path / "ext.onnx", external_data=True)
    assert model.proto.SerializeToString() == before  # the input is not touched
    stored = onnx.load(str(out), load_external_data=False)
    external = [
        t.name
        for t in surgeon.model.iter_tensors(stored)
        if t.data_location == TensorProto.EXTERNAL
    ]
    assert sorted(external) == ["branch_w", "c_value", "typed"]
    assert (tmp_path / "ext.onnx.data").stat().st_size >= 2 * weights.nbytes + branch_w_bytes
    again = surgeon.load(out)
    assert surgeon.verify(again, model, tolerance=EXACT)
    # Values equal the in-memory originals, typed fields included.
    tensors = {t.name: numpy_helper.to_array(t) for t in surgeon.model.iter_tensors(again.proto)}
    assert np.array_equal(tensors["typed"], weights.T)
    assert np.array_equal(tensors["c_value"], weights * 2)
    x = np.ones((20, 30), np.float32)
    np.testing.assert_allclose(
        _plain_run(out, {"x": x})["y"],
        ReferenceEvaluator(proto).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-4,
    )


def test_outer_scope_reads_are_listed_and_cut_correctly(tmp_path):
    build = UNUSUAL["outer_scope"][0]
    model_path = write(build(), tmp_path / "m.onnx")
    debug = run_cli("debug", model_path, "--json").json
    # Body tensors are tapped under qualified names (tests/test_tap_bodies.py checks values).
    assert debug["not_tappable"] == []
    assert {t["name"] for t in debug["bodies"]["taps"]} == {
        "#6/then_branch/t",
        "#6/else_branch/e",
        "#7/body/c_out",
        "#7/body/acc_out",
    }
    # Cutting the Loop alone needs the tensor its body reads from the outer scope.
    result = run_cli("extract", model_path, "--inputs", "x", "--outputs", "y", "--json")
    assert result.status == 0, result.stdout + result.stderr
    result = run_cli("extract", model_path, "--inputs", "a", "--outputs", "y")
    assert result.status == 2
    assert "`x`" in result.stdout + result.stderr


def test_ml_ops_are_counted_with_their_domain(tmp_path):
    model = write(UNUSUAL["ml_ops"][0](), tmp_path / "m.onnx")
    info = run_cli("inspect", model, "--json").json
    assert set(info["op_types"]) == {"ai.onnx.ml::Scaler", "ai.onnx.ml::Normalizer"}
    assert info["custom_domains"] in ({}, [])  # ai.onnx.ml is a standard domain


def test_no_shapes_taps_are_typed_from_onnxruntime(tmp_path):
    model = surgeon.load(write(_no_shapes(), tmp_path / "m.onnx"))
    from surgeon.edits.tap import tap

    edited = tap(model, ["all"], feeds=_feeds((2, 3)))
    assert edited.passed
    outputs = {o.name: o for o in edited.model.proto.graph.output}
    assert outputs["a"].type.tensor_type.elem_type == TensorProto.FLOAT


# ---------------------------------------------------------------------- shapecheck
def test_declared_vs_actual_reports_each_wrong_declaration(tmp_path):
    model = surgeon.load(write(_wrong_declared_shapes(), tmp_path / "m.onnx"))
    feeds = _feeds((2, 3))
    assert declared_names(model) == ["x", "a", "y", "z"]
    values = {**feeds, **surgeon.run(model, feeds, outputs=declared_names(model))}
    found = {m.name: m for m in declared_vs_actual(model, values)}
    assert set(found) == {"a", "y", "z"}
    assert (found["a"].where, found["a"].kind) == ("value_info", "dim")
    assert found["a"].declared_shape == ("N", 7) and found["a"].actual_shape == (2, 3)
    assert (found["y"].where, found["y"].kind) == ("output", "dim")
    assert "declared [1, 5] but is [2, 3]" in found["y"].message
    assert (found["z"].where, found["z"].kind) == ("output", "rank")
    assert found["z"].to_dict()["declared_shape"] == ["N", 3, 1]


def test_declared_vs_actual_checks_symbols_and_dtypes():
    model = surgeon.Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 3] x) => (float[N, 3] y, int64[?] n) {
            y = Relu(x)
            n = Shape(x)
        }""")
    )
    values = {
        "x": np.zeros((2, 3), np.float32),
        "y": np.zeros((5, 3), np.float32),  # N is 2 in x but 5 here
        "n": np.array([2, 3], np.int32),  # declared int64
    }
    found = declared_vs_actual(model, values)
    assert [(m.name, m.kind) for m in found] == [("y", "symbol"), ("n", "dtype")]
    assert "`N` is 5 here but 2 in `x`" in found[0].message
    assert isinstance(found[0], ShapeMismatch)


def test_declared_vs_actual_is_quiet_on_a_truthful_model():
    model = surgeon.load(SAMPLES / "tiny_yolo.onnx")
    feeds = surgeon.make_feeds(model)
    values = {**feeds, **surgeon.run(model, feeds, outputs=declared_names(model))}
    assert declared_vs_actual(model, values) == []


def test_declared_vs_actual_skips_what_it_cannot_judge():
    model = surgeon.Model(_no_shapes())
    values = {"x": np.zeros((2, 3), np.float32), "y": [np.zeros(2)], "missing": np.zeros(1)}
    assert declared_vs_actual(model, values) == []


# ---------------------------------------------------------------------- low precision
LOW_PRECISION = {
    # ml_dtypes name -> ONNX type in text syntax
    "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8e4m3fn",
    "float8_e5m2": "float8e5m2",
    "int4": "int4",
    "uint4": "uint4",
}


@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_low_precision_tensors_pass_through_the_runner_bit_for_bit(tmp_path, name):
    """numpy cannot hand bfloat16, float8 or int4 arrays to onnxruntime's Python API; the
    runner passes them as raw (packed) bytes, both ways."""
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, name))
    onnx_type = LOW_PRECISION[name]
    if name.endswith("int4"):  # onnxruntime has no int4 Identity: a quantize round trip
        body = f"""<float s = {{0.5}}, {onnx_type} z = {{0}}> {{
            f = DequantizeLinear(x, s, z)
            y = QuantizeLinear(f, s, z) }}"""
    else:
        body = "{ y = Identity(x) }"
    model = surgeon.Model(
        parse(f"""<ir_version: 10, opset_import: ["" : 21]>
        agraph ({onnx_type}[5] x) => ({onnx_type}[5] y) {body}""")
    )
    values = [1, -2, 3, 0, 1] if not name.startswith("u") else [1, 2, 3, 0, 1]
    x = np.array(values, np.float32).astype(dtype)
    # optimization off: onnxruntime would fold the int4 round trip into an Identity it
    # has no int4 kernel for
    y = surgeon.run(model, {"x": x}, options=surgeon.RunOptions(optimization="disabled"))["y"]
    assert y.dtype == dtype and y.tobytes() == x.tobytes()
    # and as a tap of a longer graph, with the tap check bit-identical
    assert surgeon.edits.tap.tap(model, ["all"], feeds={"x": x}).passed


def test_bfloat16_activations_tap_extract_and_diff(tmp_path):
    import ml_dtypes

    path = write(
        parse("""<ir_version: 10, opset_import: ["" : 21]>
        agraph (float[2, 3] x) => (float[3, 2] y, bfloat16[2, 3] h) {
            h = Cast <to = 16> (x)
            t = Transpose(h)
            y = Cast <to = 1> (t)
        }"""),
        tmp_path / "mixed.onnx",
    )
    x = np.array([[1.1, -2.2, 3.3], [0.5, 1e-3, -7.0]], np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    feeds = ["--feeds", tmp_path / "feeds.npz"]
    result = run_cli("debug", path, *feeds, "--save", tmp_path / "taps.npz", "--json")
    assert result.status == 0, result.stdout + result.stderr
    assert {t["name"]: t["dtype"] for t in result.json["taps"]}["t"] == "bfloat16"
    expected_h = x.astype(ml_dtypes.bfloat16)
    with np.load(tmp_path / "taps.npz") as taps:  # numpy stores bfloat16 as raw void
        assert taps["t"].tobytes() == expected_h.T.copy().tobytes()
    sub = tmp_path / "sub.onnx"
    result = run_cli(
        "extract", path, "--inputs", "h", "--outputs", "t", "--feeds", feeds[1], "-o", sub
    )
    assert result.status == 0, result.stdout + result.stderr
    got = surgeon.run(surgeon.load(sub), {"h": expected_h})["t"]
    assert got.dtype == expected_h.dtype and np.array_equal(got, expected_h.T)
    assert run_cli("diff", path, path, "--exact", *feeds).status == 0


def test_bfloat16_inputs_random_and_from_npz(tmp_path):
    import ml_dtypes

    path = write(
        parse("""<ir_version: 10, opset_import: ["" : 21]>
        agraph (bfloat16[2, 3] x) => (float[2, 3] y) {
            f = Cast <to = 1> (x)
            y = Relu(f)
        }"""),
        tmp_path / "bf_in.onnx",
    )
    result = run_cli("debug", path, "--json")
    assert result.status == 0, result.stdout + result.stderr
    assert result.json["feeds"]["x"]["dtype"] == "bfloat16"
    x = np.array([[1, -2, 3], [4, 5, -6]], np.float32).astype(ml_dtypes.bfloat16)
    np.savez(tmp_path / "in.npz", x=x)  # stored as raw void, read back as bfloat16
    result = run_cli("debug", path, "--feeds", tmp_path / "in.npz", "--save", tmp_path / "o.npz")
    assert result.status == 0, result.stdout + result.stderr
    with np.load(tmp_path / "o.npz") as out:
        assert np.array_equal(out["y"], np.maximum(x.astype(np.float32), 0))


# ---------------------------------------------------------------------- non-tensor values
def _sequence_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("SequenceConstruct", ["x", "w"], ["s"]),
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("SequenceAt", ["s", "one"], ["z"]),
        ],
        "sequences",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.array(1, np.int64), "one")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_sequence_outputs_go_through_every_command(tmp_path):
    path = write(_sequence_model(), tmp_path / "seq.onnx")
    runs = [
        ["inspect", path],
        ["debug", path],
        ["debug", path, "--save", tmp_path / "taps.npz", "--html", tmp_path / "r.html"],
        ["debug", path, "--ref", path],
        ["diff", path, path, "--exact", "--json"],
        ["extract", path, "--inputs", "s", "--outputs", "z", "-o", tmp_path / "sub.onnx"],
        ["rename", path, "--map", "s=seq", "-o", tmp_path / "renamed.onnx"],
        ["reshape-io", path, "--dims", "x:N", "-o", tmp_path / "dyn.onnx"],
        ["check-dynamic", path],
    ]
    for argv in runs:
        if argv[0] not in surgeon.cli.COMMANDS:
            continue
        result = run_cli(*argv)
        assert result.status == 0, (argv, result.stdout + result.stderr)
    diff = run_cli("diff", path, path, "--exact", "--json").json
    assert {t["name"]: t["dtype"] for t in diff["tensors"]}["s"] == "sequence"
    sub = surgeon.load(tmp_path / "sub.onnx")
    assert sub.proto.graph.input[0].type.HasField("sequence_type")
    w = np.array([1.0, -2.0, 3.0], np.float32)
    got = surgeon.run(sub, {"s": [np.zeros(2, np.float32), w]})["z"]
    assert np.array_equal(got, w)
    with np.load(tmp_path / "taps.npz") as taps:  # tensors only: a sequence has no .npz form
        assert set(taps.files) == {"x", "w", "y", "z"}  # taps and the inputs that made them


def test_compare_arrays_handles_sequences_optionals_and_maps():
    from surgeon.compare import EXACT as exact
    from surgeon.compare import compare_arrays

    a = [np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)]
    same = compare_arrays(a, [x.copy() for x in a], exact, name="s")
    assert same.passed and same.size == 3 and same.dtype == "sequence"
    off = compare_arrays(a, [a[0], np.array([3.5], np.float32)], exact, name="s")
    assert off.status == "mismatch" and off.mismatches == 1 and "element 1" in off.message
    assert compare_arrays(a, a[:1], exact).status == "shape"
    assert compare_arrays(None, None, exact).passed
    assert compare_arrays(None, a, exact).status == "dtype"
    assert compare_arrays({"a": np.float32(1)}, {"a": np.float32(1)}, exact).passed
    assert compare_arrays({"a": 1.0}, {"b": 1.0}, exact).status == "shape"


def test_large_models_reach_onnxruntime_through_a_temporary_file(monkeypatch):
    """Above runner.FILE_THRESHOLD the model goes to onnxruntime as a file with external
    data (cheaper in memory than serialised bytes): same values, nothing left behind."""
    import glob
    import tempfile

    from surgeon import runner

    model = surgeon.load(SAMPLES / "tiny_yolo.onnx")
    feeds = surgeon.make_feeds(model)
    wanted = ["backbone/act0_out", "output0"]
    from_bytes = surgeon.run(model, feeds, outputs=wanted)
    before = set(glob.glob(f"{tempfile.gettempdir()}/surgeon-run-*"))
    monkeypatch.setattr(runner, "FILE_THRESHOLD", 0)
    from_file = surgeon.run(model, feeds, outputs=wanted)
    for name in wanted:
        assert from_file[name].tobytes() == from_bytes[name].tobytes()
    assert set(glob.glob(f"{tempfile.gettempdir()}/surgeon-run-*")) == before
    assert model.output_names == ["output0"]  # the extra output was taken back off
