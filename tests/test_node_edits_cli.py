"""`surgeon edit` on the command line: every operation flag against a plain onnxruntime
run of the original (or numpy) at two sizes, names that hold `.`, `=`, `:` and control
characters, --plan, --json, and every error path (exit 2, or 1 for a failed check; nothing
written either way)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli

import surgeon
from surgeon.commands.edit import OPERATION_FLAGS
from surgeon.edits.node_edits_cli import FLAGS, parse_attributes

SIZES = (3, 16)


def _save(tmp_path, width: int, body: str, inits: str = "", names=None, out="y"):
    proto = parse(
        f"""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, {width}] x) => (float[N, {width}] {out}) {inits} {{
{body}
}}"""
    )
    for node in proto.graph.node:
        node.name = (names or {}).get(node.output[0], f"n_{node.output[0]}")
    path = tmp_path / f"m{width}.onnx"
    onnx.save(proto, path)
    return path


def _flat(text: str) -> str:
    """Console text with rich's line wrapping undone."""
    return " ".join(text.split())


def _x(width: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(width).standard_normal((batch, width)).astype(np.float32)


def _run(path, x, output="y"):
    return surgeon.run(surgeon.load(path), {"x": x})[output]


BODY = "a = Identity (x)\n b = LeakyRelu <alpha = 0.1> (a)\n y = Mul (b, w)"


def _w(width: int) -> str:
    return f"<float[{width}] w = {{{', '.join(str(float(i)) for i in range(1, width + 1))}}}>"


def test_the_parser_and_the_library_spell_the_specs_alike():
    assert {f: form for f, (form, _) in OPERATION_FLAGS.items()} == {
        f: form for f, (_, form) in FLAGS.items()
    }


@pytest.mark.parametrize("width", SIZES)
def test_every_flag_in_one_run_in_order(tmp_path, width):
    model = _save(tmp_path, width, BODY, _w(width))
    new_w = np.linspace(1, 2, width, dtype=np.float32)
    np.save(tmp_path / "w.npy", new_w)
    out = tmp_path / "out.onnx"
    res = run_cli(
        "edit",
        model,
        "--bypass", "n_a",
        "--set-attribute", "n_b.alpha=0.5",
        "--initializer", f"w={tmp_path / 'w.npy'}",
        "--insert-after", "b:Clip",
        "--op-type", "n_y=Add",
        "-o", out,
    )  # fmt: skip
    assert res.status == 0, res.stderr
    assert "PASS: 5 operation(s) applied" in res.stdout and f"wrote {out}" in res.stdout
    for batch in (1, 3):  # two input sizes too
        x = _x(width, batch)
        expected = np.where(x > 0, x, 0.5 * x) + new_w
        np.testing.assert_allclose(_run(out, x), expected, rtol=1e-6)


@pytest.mark.parametrize("width", SIZES)
def test_bypass_with_expect_same_against_the_original_run(tmp_path, width):
    model = _save(tmp_path, width, BODY, _w(width))
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, "--bypass", "n_a", "--expect-same", "--exact", "-o", out)
    assert res.status == 0, res.stderr
    x = _x(width)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))
    assert [n.op_type for n in onnx.load(out).graph.node] == ["LeakyRelu", "Mul"]


@pytest.mark.parametrize("width", SIZES)
def test_delete_and_remove_attribute(tmp_path, width):
    body = "r = Relu (x)\n s = Shape (r)\n t = Reshape (r, s)\n y = LeakyRelu <alpha = 0.3> (t)"
    model = _save(tmp_path, width, body)
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, "--delete", "n_t", "--remove-attribute", "n_y.alpha", "-o", out)
    assert res.status == 0, res.stderr
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Relu", "LeakyRelu"]
    x = _x(width)
    np.testing.assert_allclose(_run(out, x), np.maximum(x, 0), rtol=1e-6)  # alpha back to 0.01


def test_json_document(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4))
    res = run_cli("edit", model, "--set-attribute", "n_b.alpha=0.2", "--json")
    assert res.status == 0, res.stderr
    doc = res.json
    assert doc["schema"] == "surgeon.edit/1" and doc["edit"] == "edit" and not doc["written"]
    assert doc["details"]["operations"][0]["after"] == "0.2"
    assert doc["verification"]["outputs_same"] is False
    assert [c["passed"] for c in doc["verification"]["checks"]] == [True, True, True]
    assert doc["params"]["operations"][0] == {
        "op": "set-attribute",
        "node": "n_b",
        "attribute": "alpha",
        "value": "0.2",
    }


# ------------------------------------------------------------------ hostile names
HOSTILE = {"a": "act.v=1:x", "b": "b.alpha=9", "y": "y:Relu=\x1b[31mred"}


def test_names_holding_dots_equals_and_colons(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4), names=HOSTILE)
    out = tmp_path / "out.onnx"
    res = run_cli(
        "edit",
        model,
        "--set-attribute", "b.alpha=9.alpha=0.5",
        "--remove-attribute", "b.alpha=9.alpha",
        "--set-attribute", "b.alpha=9.alpha=0.25",
        "--op-type", "y:Relu=\x1b[31mred=Add",
        "--bypass", "act.v=1:x",
        "-o", out,
    )  # fmt: skip
    assert res.status == 0, res.stderr
    assert "\x1b" not in res.stdout and "\\x1b[31mred" in res.stdout  # shown escaped
    x = _x(4)
    np.testing.assert_allclose(
        _run(out, x), np.where(x > 0, x, 0.25 * x) + np.arange(1, 5), rtol=1e-6
    )


def test_tensor_names_with_colons_in_insert_after(tmp_path):
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (float[N, 4] y) {
    t = Relu (x)
    y = Neg (t)
}"""
    )
    onnx.utils  # noqa: B018 - keep the import of onnx obviously used
    proto.graph.node[0].output[0] = "t:Sigmoid:1"
    proto.graph.node[1].input[0] = "t:Sigmoid:1"
    model = tmp_path / "m.onnx"
    onnx.save(proto, model)
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, "--insert-after", "t:Sigmoid:1:Softmax:axis=0", "-o", out)
    assert res.status == 0, res.stderr
    x = _x(4)
    r = np.maximum(x, 0)
    np.testing.assert_allclose(
        _run(out, x), -np.exp(r) / np.exp(r).sum(axis=0, keepdims=True), rtol=1e-5
    )


def test_a_spec_that_reads_two_ways_is_refused(tmp_path):
    # custom-op nodes `p` and `p.k=v` (no schema: any value fits): `p.k=v.k=1` reads as
    # p.k = "v.k=1" or as (p.k=v).k = 1
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
agraph (float[N, 4] x) => (float[N, 4] y) {
    a = com.example.Op (x)
    y = com.example.Op (a)
}"""
    )
    proto.graph.node[0].name, proto.graph.node[1].name = "p", "p.k=v"
    model = tmp_path / "m.onnx"
    onnx.save(proto, model)
    res = run_cli("edit", model, "--set-attribute", "p.k=v.k=1")
    assert res.status == 2 and "can be read 2 ways" in res.stderr and "--plan" in res.stderr
    assert "node `p.k=v`, attribute `k`, value `1`" in _flat(res.stderr)


def test_plan_with_every_operation_and_an_npy_beside_it(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4))
    (tmp_path / "plans").mkdir()
    np.save(tmp_path / "plans" / "w.npy", np.full(4, 2, np.float32))
    plan = tmp_path / "plans" / "edits.json"
    plan.write_text(
        json.dumps(
            [
                {"op": "initializer", "name": "w", "npy": "w.npy"},
                {"op": "remove-attribute", "node": "n_b", "attribute": "alpha"},
                {"op": "op-type", "node": "n_b", "op_type": "Relu"},
                {"op": "insert-after", "tensor": "a", "op_type": "Add", "extra_inputs": ["x"]},
                {"op": "bypass", "node": "n_y"},
            ]
        )
    )
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, "--plan", plan, "-o", out, "--json")
    assert res.status == 0, res.stderr
    x = _x(4)
    np.testing.assert_allclose(_run(out, x), np.maximum(2 * x, 0), rtol=1e-6)


def test_attributes_split_at_commas_outside_brackets():
    assert parse_attributes("perm=[0,2,1],mode=a=b") == {"perm": "[0,2,1]", "mode": "a=b"}


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no operation given"),
        (["--bypass", "n_aa"], "no node `n_aa`"),
        (["--set-attribute", "n_b.alpah=1"], "did you mean `alpha`"),
        (["--set-attribute", "n_b.alpha=abc"], "`abc` is not a number"),
        (["--set-attribute", "n_b"], "expected NODE.ATTR=VALUE"),
        (["--remove-attribute", "n_b.beta"], "it has no attribute `beta`"),
        (["--initializer", "ww=w.npy"], "did you mean `w`"),
        (["--initializer", "w=missing.npy"], "no .npy file"),
        (["--insert-after", "b:Sigmoud"], "did you mean `Sigmoid`"),
        (["--insert-after", "bb:Relu"], "no tensor `bb`"),
        (["--op-type", "n_b=Rleu"], "did you mean `Relu`"),
        (["--bypass", "n_aa", "--delete", "n_yy"], "2 of 2 operations cannot be applied"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, argv, message):
    model = _save(tmp_path, 4, BODY, _w(4))
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, *argv, "-o", out)
    assert res.status == 2, (res.stdout, res.stderr)
    assert message in _flat(res.stderr)
    assert "Traceback" not in res.stderr and not out.exists()


def _npy(tmp_path, kind: str):
    path = tmp_path / f"{kind}.npy"
    if kind == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "npz":
        np.savez(tmp_path / "npz.npz", w=np.ones(4))
        (tmp_path / "npz.npz").rename(path)
    elif kind == "text":
        np.save(path, np.array(["a", "b"]))
    else:
        path.write_bytes(b"\x93NUMPY garbage")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("pickle", "pickled data is never loaded"),
        ("npz", "an .npz archive"),
        ("text", "takes numbers"),
        ("broken", "cannot read"),
    ],
)
def test_npy_files_that_are_not_plain_arrays(tmp_path, kind, message):
    model = _save(tmp_path, 4, BODY, _w(4))
    res = run_cli("edit", model, "--initializer", f"w={_npy(tmp_path, kind)}")
    assert res.status == 2 and message in _flat(res.stderr), res.stderr
    assert "initializer `w`" in res.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not JSON"),
        ('{"op": "bypass"}', "must be a JSON list"),
        ('[{"op": "bypas", "node": "n_a"}]', "did you mean `bypass`"),
        ('[{"op": "bypass", "nodes": "n_a"}]', "unknown key `nodes`"),
        ('[{"op": "set-attribute", "node": "n_b"}]', "missing key `attribute`"),
        ('[{"op": "bypass", "node": 3}]', "`node` must be a str"),
        ("[]", "holds no operation"),
    ],
)
def test_bad_plans_exit_2(tmp_path, content, message):
    model = _save(tmp_path, 4, BODY, _w(4))
    plan = tmp_path / "p.json"
    plan.write_text(content)
    res = run_cli("edit", model, "--plan", plan)
    assert res.status == 2 and message in _flat(res.stderr), res.stderr


def test_a_failed_check_exits_1_and_writes_nothing(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4))
    out = tmp_path / "out.onnx"
    res = run_cli("edit", model, "--op-type", "n_b=com.example::Foo", "-o", out)
    assert res.status == 1, res.stderr
    assert "FAIL" in res.stdout and "does not run in onnxruntime" in res.stdout
    assert "not written" in res.stdout and not out.exists()


def test_expect_same_exits_1_when_outputs_move(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4))
    out = tmp_path / "out.onnx"
    wide = ("--shape", "x:16x4")  # enough values that some are negative
    res = run_cli(
        "edit", model, "--set-attribute", "n_b.alpha=0.9", "--expect-same", "-o", out, *wide
    )
    assert res.status == 1 and "expected to stay the same" in res.stdout
    assert not out.exists()
    res = run_cli("edit", model, "--set-attribute", "n_b.alpha=0.9", "-o", out, *wide)
    assert res.status == 0 and "outputs changed (information)" in _flat(res.stdout)
    assert out.exists()


def test_the_input_is_never_overwritten_without_inplace(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4))
    before = model.read_bytes()
    res = run_cli("edit", model, "--bypass", "n_a", "-o", model)
    assert res.status == 2 and model.read_bytes() == before
    res = run_cli("edit", model, "--bypass", "n_a", "-o", model, "--inplace")
    assert res.status == 0 and len(onnx.load(model).graph.node) == 2


def test_control_characters_in_names_are_escaped_in_errors(tmp_path):
    model = _save(tmp_path, 4, BODY, _w(4), names={"b": "evil\x1b]0;title\x07"})
    res = run_cli("edit", model, "--bypass", "evil\x1b]0;titl\x07")
    assert res.status == 2
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "\\x1b]0;titl\\x07" in res.stderr and "did you mean" in res.stderr


def test_a_node_an_earlier_operation_creates_can_be_edited_next(tmp_path):
    model = _save(tmp_path, 4, "r = Relu (x)\n y = Neg (r)")
    out = tmp_path / "out.onnx"
    res = run_cli(
        "edit",
        model,
        "--insert-after", "r:LeakyRelu",
        "--set-attribute", "LeakyRelu_after_r.alpha=0.3",
        "--insert-after", "r__LeakyRelu:Neg",
        "-o", out,
    )  # fmt: skip
    assert res.status == 0, res.stderr
    x = _x(4)
    np.testing.assert_allclose(_run(out, x), np.maximum(x, 0), rtol=1e-6)  # -(-relu)
    res = run_cli("edit", model, "--insert-after", "r:Relu", "--bypass", "Relu_after_rr")
    assert res.status == 2 and "no node `Relu_after_rr`" in res.stderr
