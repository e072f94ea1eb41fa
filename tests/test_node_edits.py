"""edit_nodes (the API of `surgeon edit`): each operation against an independent reference
(numpy, or onnx.reference on a model written with the edit already made) at two sizes,
the checks that decide, and the diff that only informs unless expect_same."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx.reference import ReferenceEvaluator

import surgeon
from surgeon.edits.node_edits import NodeEditReport

SIZES = (3, 16)


def _model(width: int, body: str, inits: str = "", outputs: str | None = None) -> surgeon.Model:
    """A model on x: float[N, width], its nodes named after their first output."""
    outputs = outputs or f"float[N, {width}] y"
    proto = parse(
        f"""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, {width}] x) => ({outputs}) {inits} {{
{body}
}}"""
    )
    for node in proto.graph.node:
        node.name = f"n_{node.output[0]}"
    return surgeon.Model(proto)


def _feeds(width: int, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(width)
    return {"x": rng.standard_normal((batch, width)).astype(np.float32)}


def _run(model: surgeon.Model, feeds) -> np.ndarray:
    return surgeon.run(model, feeds)["y"]


def _reference(proto_text_model: surgeon.Model, feeds) -> np.ndarray:
    """The model run by onnx's reference evaluator (not onnxruntime)."""
    return ReferenceEvaluator(proto_text_model.proto).run(None, feeds)[0]


LEAKY = "a = Mul (x, x)\n b = LeakyRelu <alpha = 0.1> (x)\n y = Add (a, b)"


@pytest.mark.parametrize("width", SIZES)
def test_set_attribute_matches_the_model_written_with_that_value(width):
    model = _model(width, LEAKY)
    edited = surgeon.edit_nodes(model, [surgeon.SetAttribute("n_b", "alpha", 0.5)])
    assert edited.passed and isinstance(edited.report, NodeEditReport)
    assert not edited.report.outputs_same  # the values moved, on purpose: information
    expected = _model(width, LEAKY.replace("0.1", "0.5"))
    feeds = _feeds(width)
    np.testing.assert_allclose(_run(edited.model, feeds), _reference(expected, feeds), rtol=1e-6)
    x = feeds["x"]
    np.testing.assert_allclose(
        _run(edited.model, feeds), x * x + np.where(x > 0, x, 0.5 * x), rtol=1e-6
    )
    record = edited.details["operations"][0]
    assert (record["before"], record["after"], record["type"]) == ("0.1", "0.5", "float")


@pytest.mark.parametrize("width", SIZES)
def test_set_attribute_adds_a_list_attribute_the_schema_types(width):
    model = _model(width, "y = ReduceMean (x)", outputs="float[1, 1] y")
    # `axes` is absent (all axes): its type (ints) comes from the ReduceMean schema at
    # opset 17; given as text, as the command line gives it. All axes named: same values.
    edited = surgeon.edit_nodes(
        model, [surgeon.SetAttribute("n_y", "axes", "[0, 1]")], expect_same=True
    )
    assert edited.passed
    assert edited.model.proto.graph.node[0].attribute[0].ints == [0, 1]
    feeds = _feeds(width)
    np.testing.assert_allclose(_run(edited.model, feeds), [[feeds["x"].mean()]], rtol=1e-5)
    edited = surgeon.edit_nodes(model, [surgeon.SetAttribute("n_y", "axes", "1")])
    np.testing.assert_allclose(
        _run(edited.model, feeds), feeds["x"].mean(axis=1, keepdims=True), rtol=1e-5
    )


@pytest.mark.parametrize("width", SIZES)
def test_remove_attribute_falls_back_to_the_schema_default(width):
    model = _model(width, LEAKY)
    edited = surgeon.edit_nodes(model, [surgeon.RemoveAttribute("n_b", "alpha")])
    assert edited.passed
    feeds = _feeds(width)
    x = feeds["x"]
    np.testing.assert_allclose(
        _run(edited.model, feeds), x * x + np.where(x > 0, x, 0.01 * x), rtol=1e-6
    )
    expected = _model(width, LEAKY.replace(" <alpha = 0.1>", ""))
    np.testing.assert_allclose(_run(edited.model, feeds), _reference(expected, feeds), rtol=1e-6)


def _weighted(width: int) -> surgeon.Model:
    values = ", ".join(str(float(i)) for i in range(width))
    return _model(width, "y = Mul (x, w)", f"<float[{width}] w = {{{values}}}>")


@pytest.mark.parametrize("width", SIZES)
def test_replace_initializer_from_an_array_and_from_a_npy(width, tmp_path):
    model = _weighted(width)
    new = np.linspace(-1, 1, width, dtype=np.float32)
    feeds = _feeds(width)
    for value in (new, tmp_path / "w.npy", str(tmp_path / "w.npy")):
        np.save(tmp_path / "w.npy", new)
        edited = surgeon.edit_nodes(model, surgeon.ReplaceInitializer("w", value))
        assert edited.passed
        np.testing.assert_allclose(_run(edited.model, feeds), feeds["x"] * new, rtol=1e-6)
    # a new shape is allowed (it broadcasts the same) and reported
    edited = surgeon.edit_nodes(model, [surgeon.ReplaceInitializer("w", new.reshape(1, width))])
    assert edited.passed
    assert edited.details["operations"][0]["changed"] == ["shape"]


def test_replace_initializer_with_another_dtype_fails_the_checks_and_is_reported():
    model = _weighted(4)
    edited = surgeon.edit_nodes(model, [surgeon.ReplaceInitializer("w", np.ones(4, np.float16))])
    assert not edited.passed  # Mul(float, float16): shape inference and onnxruntime refuse
    checks = {c.name: c.passed for c in edited.report.checks}
    assert checks["shape inference"] is False and checks["onnxruntime"] is False
    assert edited.details["operations"][0]["changed"] == ["dtype"]
    assert "FAIL" in edited.report.summary()


@pytest.mark.parametrize("width", SIZES)
def test_bypass_an_identity_keeps_the_outputs_and_a_relu_gives_the_model_without_it(width):
    body = "a = Identity (x)\n r = Relu (a)\n y = Neg (r)"
    model = _model(width, body)
    edited = surgeon.edit_nodes(model, [surgeon.BypassNode("n_a")], expect_same=True)
    assert edited.passed and edited.report.outputs_same
    assert [n.op_type for n in edited.model.proto.graph.node] == ["Relu", "Neg"]
    edited = surgeon.edit_nodes(model, [surgeon.BypassNode("n_r")])
    feeds = _feeds(width)
    np.testing.assert_array_equal(_run(edited.model, feeds), -feeds["x"])
    expected = _model(width, "a = Identity (x)\n y = Neg (a)")
    np.testing.assert_array_equal(_run(edited.model, feeds), _reference(expected, feeds))


def test_bypass_of_the_node_writing_a_graph_output_keeps_the_output_name():
    model = _model(4, "r = Relu (x)\n y = Sigmoid (r)")
    edited = surgeon.edit_nodes(model, [surgeon.BypassNode("n_y")])
    assert edited.passed and edited.model.output_names == ["y"]
    assert [n.op_type for n in edited.model.proto.graph.node] == ["Relu", "Identity"]
    feeds = _feeds(4)
    np.testing.assert_array_equal(_run(edited.model, feeds), np.maximum(feeds["x"], 0))


def test_bypass_refuses_a_dtype_change_and_a_read_second_output():
    model = _model(4, "c = Cast <to = 7> (x)\n y = Cast <to = 1> (c)")
    with pytest.raises(surgeon.UsageError, match="float32 but its output `c` is int64"):
        surgeon.edit_nodes(model, [surgeon.BypassNode("n_c")])
    split = _model(
        4,
        "s = Constant <value = int64[2] {2, 2}> ()\n a, b = Split <axis = 1> (x, s)\n"
        " y = Concat <axis = 1> (b, a)",
    )
    with pytest.raises(surgeon.UsageError, match="only its first output"):
        surgeon.edit_nodes(split, [surgeon.BypassNode("n_a")])


@pytest.mark.parametrize("width", SIZES)
def test_delete_removes_what_only_fed_the_node(width):
    body = (
        "r = Relu (x)\n s = Shape (r)\n t = Reshape (r, s)\n y = Neg (t)\n"
        " unused = Sigmoid (x)"  # already dead before the edit: it must stay
    )
    model = _model(width, body, outputs=f"float[N, {width}] y")
    edited = surgeon.edit_nodes(model, [surgeon.DeleteNode("n_t")], expect_same=True)
    assert edited.passed
    ops = [n.op_type for n in edited.model.proto.graph.node]
    assert ops == ["Relu", "Neg", "Sigmoid"]
    record = edited.details["operations"][0]
    assert record["removed_nodes"] == ["n_s"]
    feeds = _feeds(width)
    np.testing.assert_array_equal(_run(edited.model, feeds), -np.maximum(feeds["x"], 0))


def test_delete_of_a_node_nothing_reads_removes_its_initializers():
    model = _model(
        4,
        "y = Relu (x)\n d = Mul (x, w)",
        "<float[4] w = {1.0, 2.0, 3.0, 4.0}>",
    )
    edited = surgeon.edit_nodes(model, [surgeon.DeleteNode("n_d")], expect_same=True, verify=True)
    assert edited.passed
    assert [t.name for t in edited.model.proto.graph.initializer] == []
    assert edited.details["operations"][0]["removed_initializers"] == ["w"]


@pytest.mark.parametrize("width", SIZES)
def test_insert_after_an_intermediate_tensor(width):
    model = _model(width, "r = Relu (x)\n y = Neg (r)")
    edited = surgeon.edit_nodes(
        model, [surgeon.InsertNode("r", "Softmax", {"axis": "-1"}, name="soft")]
    )
    assert edited.passed
    feeds = _feeds(width)
    r = np.maximum(feeds["x"], 0)
    soft = np.exp(r) / np.exp(r).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(_run(edited.model, feeds), -soft, rtol=1e-5)
    expected = _model(width, "r = Relu (x)\n s = Softmax <axis = -1> (r)\n y = Neg (s)")
    np.testing.assert_allclose(_run(edited.model, feeds), _reference(expected, feeds), rtol=1e-5)


@pytest.mark.parametrize("width", SIZES)
def test_insert_after_a_graph_output_keeps_its_name_and_redeclares_its_type(width):
    model = _model(width, "y = Relu (x)")
    edited = surgeon.edit_nodes(model, [surgeon.InsertNode("y", "Cast", {"to": 10})])
    assert edited.passed and edited.model.output_names == ["y"]
    assert edited.model.outputs[0].dtype == "float16"  # was float32: the declaration follows
    feeds = _feeds(width)
    out = _run(edited.model, feeds)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.maximum(feeds["x"], 0).astype(np.float16))
    assert edited.report.outputs["y"].status == "dtype"  # informational, not a failure


def test_insert_refuses_unknown_ops_attributes_and_missing_inputs():
    model = _model(4, "y = Relu (x)")
    with pytest.raises(surgeon.UsageError, match="did you mean `Sigmoid`"):
        surgeon.edit_nodes(model, [surgeon.InsertNode("y", "Sigmoud")])
    with pytest.raises(surgeon.UsageError, match="did you mean `axis`"):
        surgeon.edit_nodes(model, [surgeon.InsertNode("y", "Softmax", {"axes": 1})])
    with pytest.raises(surgeon.UsageError, match="takes 2..2 inputs"):
        surgeon.edit_nodes(model, [surgeon.InsertNode("y", "Add")])
    with pytest.raises(surgeon.NameNotFoundError, match="did you mean `y`"):
        surgeon.edit_nodes(model, [surgeon.InsertNode("yy", "Relu")])
    added = surgeon.edit_nodes(model, [surgeon.InsertNode("y", "Add", extra_inputs=["x"])])
    feeds = _feeds(4)
    np.testing.assert_array_equal(_run(added.model, feeds), np.maximum(feeds["x"], 0) + feeds["x"])


@pytest.mark.parametrize("width", SIZES)
def test_op_type_change_and_the_order_of_operations(width):
    model = _model(width, LEAKY)
    with pytest.raises(surgeon.UsageError, match="unknown to Relu"):
        surgeon.edit_nodes(model, [surgeon.ChangeOpType("n_b", "Relu")])
    edited = surgeon.edit_nodes(
        model, [surgeon.RemoveAttribute("n_b", "alpha"), surgeon.ChangeOpType("n_b", "Relu")]
    )
    assert edited.passed
    feeds = _feeds(width)
    x = feeds["x"]
    np.testing.assert_allclose(_run(edited.model, feeds), x * x + np.maximum(x, 0), rtol=1e-6)
    expected = _model(width, "a = Mul (x, x)\n b = Relu (x)\n y = Add (a, b)")
    np.testing.assert_allclose(_run(edited.model, feeds), _reference(expected, feeds), rtol=1e-6)


def test_a_value_that_breaks_the_model_fails_the_checks_not_the_request():
    model = _model(4, "y = Transpose <perm = [1, 0]> (x)", outputs="float[4, N] y")
    edited = surgeon.edit_nodes(model, [surgeon.SetAttribute("n_y", "perm", [0, 0])])
    assert not edited.passed
    failed = [c.name for c in edited.report.checks if c.passed is False]
    assert "shape inference" in failed and "onnxruntime" in failed
    assert edited.report.tensors == []  # nothing ran, nothing compared


def test_an_op_onnxruntime_does_not_have_fails_the_run_check():
    model = _model(4, "y = Relu (x)")
    edited = surgeon.edit_nodes(model, [surgeon.ChangeOpType("n_y", "Foo", "com.example")])
    assert not edited.passed
    run_check = next(c for c in edited.report.checks if c.name == "onnxruntime")
    assert run_check.passed is False and "does not run" in run_check.message
    assert any(o.domain == "com.example" for o in edited.model.proto.opset_import)


def test_expect_same_turns_the_diff_into_a_check():
    model = _model(4, LEAKY)
    ops = [surgeon.SetAttribute("n_b", "alpha", 0.5)]
    assert surgeon.edit_nodes(model, ops).passed
    strict = surgeon.edit_nodes(model, ops, expect_same=True)
    assert not strict.passed and "expected to stay the same" in strict.report.summary()
    document = strict.report.to_dict()
    assert document["outputs_same"] is False and document["expect_same"] is True
    assert [c["name"] for c in document["checks"]] == [
        "onnx.checker",
        "shape inference",
        "onnxruntime",
    ]


def test_the_input_is_untouched_and_provenance_is_recorded():
    model = _model(4, LEAKY)
    before = model.proto.SerializeToString()
    edited = surgeon.edit_nodes(
        model, [surgeon.SetAttribute("n_b", "alpha", 0.5), surgeon.BypassNode("n_a")]
    )
    assert model.proto.SerializeToString() == before
    record = edited.model.provenance[-1]
    assert record["edit"] == "edit"
    assert [o["op"] for o in record["params"]["operations"]] == ["set-attribute", "bypass"]


def test_every_problem_is_reported_at_once():
    model = _model(4, LEAKY)
    with pytest.raises(surgeon.SurgeonError) as caught:
        surgeon.edit_nodes(
            model,
            [
                surgeon.SetAttribute("n_bb", "alpha", 0.5),
                surgeon.SetAttribute("n_b", "alpha", "abc"),
                surgeon.RemoveAttribute("n_a", "alpha"),
            ],
        )
    text = str(caught.value)
    assert "3 of 3 operations" in text
    assert "no node `n_bb`" in text and "`abc` is not a number" in text
    assert "it has no attribute `alpha`" in text


@pytest.mark.parametrize(
    "operations, match",
    [
        ([], "no operation"),
        (["bypass n_a"], "not one of"),
        (5, "must be a list"),
        ([surgeon.SetAttribute("n_b", "alpha", object())], "not a number"),
        ([surgeon.ReplaceInitializer("nope", np.ones(2))], "no initializer"),
        ([surgeon.ReplaceInitializer("w", np.array(["a"]))], "not numbers"),
        (
            [surgeon.RemoveAttribute("n_b", "alpha"), surgeon.RemoveAttribute("n_b", "alpha")],
            "has no attribute `alpha`",
        ),
    ],
)
def test_bad_requests_are_surgeon_errors(operations, match):
    model = _weighted(4)
    model.proto.graph.node.extend([onnx.helper.make_node("LeakyRelu", ["x"], ["b"], name="n_b")])
    model.proto.graph.node[-1].attribute.extend([onnx.helper.make_attribute("alpha", 0.2)])
    with pytest.raises(surgeon.SurgeonError, match=match):
        surgeon.edit_nodes(model, operations)


def test_a_removed_required_attribute_is_refused():
    model = _model(4, "c = Cast <to = 1> (x)\n y = Relu (c)")
    with pytest.raises(surgeon.UsageError, match="required"):
        surgeon.edit_nodes(model, [surgeon.RemoveAttribute("n_c", "to")])


IF_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x, bool c) => (float[N, 4] y) {
    r = Relu (x)
    a = Identity (r)
    y = If (c) <
        then_branch = g1 () => (float[N, 4] t) { t = Neg (a) },
        else_branch = g2 () => (float[N, 4] e) { e = Abs (a) }
    >
}"""


@pytest.mark.parametrize("batch", (1, 5))
def test_reads_from_inside_if_bodies_are_rewired(batch):
    proto = parse(IF_MODEL)
    for node in proto.graph.node:
        node.name = f"n_{node.output[0]}"
    model = surgeon.Model(proto)
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        bypassed = surgeon.edit_nodes(model, [surgeon.BypassNode("n_a")], feeds=feeds)
        assert bypassed.passed and bypassed.report.outputs_same
        body = bypassed.model.proto.graph.node[-1].attribute[0].g.node[0]
        assert list(body.input) == ["r"]
        inserted = surgeon.edit_nodes(model, [surgeon.InsertNode("a", "Sigmoid")], feeds=feeds)
        assert inserted.passed
        s = 1 / (1 + np.exp(-np.maximum(x, 0)))
        expected = -s if cond else np.abs(s)
        np.testing.assert_allclose(surgeon.run(inserted.model, feeds)["y"], expected, rtol=1e-6)


def test_a_recipe_run_records_the_edit_and_saves_it(tmp_path):
    from conftest import run_cli

    model = _model(4, LEAKY)
    surgeon.save(model, tmp_path / "m.onnx")
    recipe = tmp_path / "tweak.py"
    recipe.write_text(
        '"""Sets the LeakyRelu slope."""\nimport surgeon\n\n\n'
        "def recipe(models):\n"
        '    return surgeon.edit_nodes(models[0], [surgeon.SetAttribute("n_b", "alpha", 0.3)])\n'
    )
    out = tmp_path / "out.onnx"
    res = run_cli("run", recipe, tmp_path / "m.onnx", "-o", out, "--json")
    assert res.status == 0, res.stderr
    assert res.json["steps"][0]["edit"] == "edit" and res.json["steps"][0]["passed"]
    attr = onnx.load(out).graph.node[1].attribute[0]
    assert attr.name == "alpha" and attr.f == pytest.approx(0.3)


def test_verify_false_skips_every_check():
    edited = surgeon.edit_nodes(
        _model(4, LEAKY), [surgeon.SetAttribute("n_b", "alpha", 0.3)], verify=False
    )
    assert edited.report is None and edited.passed


def test_a_node_name_two_nodes_share_is_refused_with_their_tensors():
    model = _model(4, "a = Relu (x)\n y = Neg (a)")
    for node in model.proto.graph.node:
        node.name = "same"
    with pytest.raises(surgeon.NameNotFoundError, match="2 nodes are called `same`") as caught:
        surgeon.edit_nodes(model, [surgeon.BypassNode("same")])
    assert caught.value.suggestions == ["a", "y"]
    # by the tensor it writes (onnxruntime refuses the original's duplicate names: no check)
    edited = surgeon.edit_nodes(model, [surgeon.BypassNode("a")], verify=False)
    feeds = _feeds(4)
    np.testing.assert_array_equal(_run(edited.model, feeds), -feeds["x"])


def test_an_initializer_also_listed_as_an_input_is_redeclared_with_it():
    model = _weighted(4)
    graph = model.proto.graph
    graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4]))
    edited = surgeon.edit_nodes(
        model, [surgeon.ReplaceInitializer("w", np.ones((1, 4), np.float32))]
    )
    assert edited.passed
    declared = next(v for v in edited.model.proto.graph.input if v.name == "w")
    assert [d.dim_value for d in declared.type.tensor_type.shape.dim] == [1, 4]
