"""`surgeon rewrite` and `surgeon.rewrite`: the command, its error paths (exit 2 with the
message), user rules loaded from a file, and `surgeon nms --no-topk`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT, parse, run_cli, write

import surgeon
from surgeon.commands import _common

GRIDSAMPLE = """<ir_version: 8, opset_import: ["" : 16]>
agraph (float[N, 3, 8, 8] x, float[N, 4, 4, 2] grid) => (y) {
    y = GridSample <mode = "MODE", padding_mode = "PADDING"> (x, grid)
}"""

EINSUM = """<ir_version: 8, opset_import: ["" : 13]>
agraph (float[B, 4, 5] a, float[B, 5, 6] b) => (y) {
    y = Einsum <equation = "EQUATION"> (a, b)
}"""


def _named(proto: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    for node, name in zip(proto.graph.node, names, strict=False):
        node.name = name
    return proto


@pytest.fixture
def gridsample(tmp_path):
    text = GRIDSAMPLE.replace("MODE", "bilinear").replace("PADDING", "zeros")
    return write(_named(parse(text), "sampler"), tmp_path / "gs.onnx")


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_list_names_every_rule_and_its_exactness():
    res = run_cli("rewrite", "--list")
    assert res.status == 0, res.stderr
    for name in ("gridsample", "einsum", "layernorm-decompose", "layernorm-fuse", "topk"):
        assert name in res.stdout
    doc = json.loads(run_cli("rewrite", "--list", "--json").stdout)
    assert doc["schema"] == "surgeon.rewrite-rules/1"
    assert {r["name"]: r["exact"] for r in doc["rules"]}["topk"] is True


def test_rewrite_writes_a_model_without_the_op_and_verifies_it(gridsample, tmp_path):
    out = tmp_path / "out.onnx"
    res = run_cli("rewrite", gridsample, "--rule", "gridsample", "-o", out)
    assert res.status == 0, res.stderr
    assert "PASS: 1 node(s) rewritten" in res.stdout and "sampler" in res.stdout
    assert "second size" in res.stdout
    assert "GridSample" not in _ops(out) and "GatherElements" in _ops(out)
    # the written model gives what the original gives, run apart from the command
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
        "grid": rng.uniform(-1.3, 1.3, (2, 4, 4, 2)).astype(np.float32),
    }
    got = surgeon.run(surgeon.load(out), feeds)["y"]
    want = surgeon.run(surgeon.load(gridsample), feeds)["y"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert surgeon.load(out).provenance[-1]["edit"] == "rewrite"


def test_rewrite_json_document(gridsample):
    res = run_cli("rewrite", gridsample, "--rule", "gridsample", "--json")
    assert res.status == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "surgeon.edit/1" and doc["edit"] == "rewrite"
    (done,) = doc["details"]["rewritten"]
    assert done["node"] == "sampler" and done["op"] == "GridSample"
    assert done["what"] == "bilinear, zeros, align_corners=0"
    assert doc["details"]["op_types"]["GridSample"] == {"before": 1, "after": 0}
    assert doc["verification"]["passed"] and not doc["written"]


def test_several_rules_in_order_and_node_selection(tmp_path):
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4, 5] a, float[2, 5, 6] b) => (y, int64 i, z) {
    p = Einsum <equation = "bij,bjk->bik"> (a, b)
    q = Einsum <equation = "bij->bji"> (a)
    k = Constant <value = int64[1] {3}> ()
    y, i = TopK (p, k)
    z = Identity (q)
}"""
    )
    path = write(_named(proto, "mm", "tr", "k", "top"), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    res = run_cli(
        "rewrite", path, "--rule", "einsum", "--rule", "topk", "--node", "mm", "--node", "top",
        "-o", out, "--json",
    )  # fmt: skip
    assert res.status == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(r["rule"], r["node"]) for r in doc["details"]["rewritten"]] == [
        ("einsum", "mm"),
        ("topk", "top"),
    ]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Einsum") == 1 and "TopK" not in ops  # `tr` was not selected
    assert any("second seed" in n for n in doc["verification"]["notes"])


# ------------------------------------------------------------------ error paths
def test_unknown_rule_suggests_the_close_one(gridsample):
    res = run_cli("rewrite", gridsample, "--rule", "gridsampel")
    assert res.status == 2
    assert "no rewrite rule `gridsampel`; did you mean `gridsample`?" in res.stderr


def test_unknown_node_suggests_the_close_one(gridsample):
    res = run_cli("rewrite", gridsample, "--rule", "gridsample", "--node", "samplr")
    assert res.status == 2
    assert "no node `samplr`" in res.stderr and "did you mean `sampler`?" in res.stderr


def test_a_node_the_rule_does_not_rewrite_is_refused(tmp_path):
    proto = _named(parse(EINSUM.replace("EQUATION", "bij,bjk->bik")), "mm")
    proto.graph.node.append(onnx.helper.make_node("Relu", ["y"], ["r"], name="act"))
    proto.graph.output[0].name = "r"
    path = write(proto, tmp_path / "m.onnx")
    res = run_cli("rewrite", path, "--rule", "einsum", "--node", "act")
    assert res.status == 2
    assert "node `act` is not rewritten by einsum" in res.stderr


def test_unsupported_modes_are_refused_naming_node_and_attribute(tmp_path):
    text = GRIDSAMPLE.replace("MODE", "bicubic").replace("PADDING", "mirror")
    path = write(_named(parse(text), "sampler"), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    res = run_cli("rewrite", path, "--rule", "gridsample", "-o", out)
    assert res.status == 2
    assert "node `sampler`: attribute mode=bicubic is not implemented" in res.stderr
    assert "attribute padding_mode=mirror is not implemented" in res.stderr
    assert not out.exists()


def test_an_ellipsis_equation_is_refused(tmp_path):
    proto = parse(EINSUM.replace("EQUATION", "...ij,...jk->...ik"))
    res = run_cli("rewrite", write(proto, tmp_path / "m.onnx"), "--rule", "einsum")
    assert res.status == 2 and "ellipsis" in res.stderr and "attribute equation" in res.stderr


def test_a_rule_that_matches_nothing_is_an_error(gridsample):
    res = run_cli("rewrite", gridsample, "--rule", "topk")
    assert res.status == 2 and "topk matches no node of gs.onnx" in res.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rewrite"], "no model given"),
        (["rewrite", "{m}"], "no --rule given"),
        (["rewrite", "--list", "{m}"], "--list takes no model"),
        (["rewrite", "{m}", "--rule", "gridsample", "--inplace"], "no -o was given"),
    ],
)
def test_usage_errors(gridsample, argv, message):
    res = run_cli(*[str(gridsample) if a == "{m}" else a for a in argv])
    assert res.status == 2 and message in res.stderr


def test_the_shared_options_are_there():
    from surgeon.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {s for a in sub.choices["rewrite"]._actions for s in a.option_strings}
    assert {"--feeds", "--shape", "--seed", "--max-feed-size", "--optimization"} <= flags
    assert {"--atol", "--rtol", "--exact", "-o", "--inplace", "--external-data"} <= flags
    atol = next(a for a in sub.choices["rewrite"]._actions if "--atol" in a.option_strings)
    assert atol.default == _common.DEFAULT_ATOL


# ------------------------------------------------------------------ user rules
USER_RULE = '''"""A user's rule: Relu -> Max(x, 0)."""
import numpy as np

from surgeon.rewrites.graph import Match


class ReluToMax:
    name = "relu-to-max"
    summary = "Relu -> Max(x, 0)"
    exact = True

    def matches(self, graph):
        return [
            Match(graph.key(n), (graph.key(n),), "")
            for n in graph.nodes
            if n.op_type == "Relu"
        ]

    def apply(self, graph, match):
        node = graph.node(match.node)
        zero = graph.scalar(0, np.float32, "zero")
        graph.op("Max", [node.input[0], zero], outputs=[node.output[0]])


class Wrong(ReluToMax):
    name = "wrong"

    def apply(self, graph, match):
        node = graph.node(match.node)
        graph.op("Neg", [node.input[0]], outputs=[node.output[0]])


class Forgetful(ReluToMax):
    name = "forgetful"

    def apply(self, graph, match):
        graph.op("Neg", [graph.node(match.node).input[0]])
'''

RELU = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (y) {
    h = Relu (x)
    y = Neg (h)
}"""


@pytest.fixture
def user_rule(tmp_path):
    path = tmp_path / "my_rule.py"
    path.write_text(USER_RULE)
    return path


def test_a_user_rule_from_a_file(user_rule, tmp_path):
    model = write(parse(RELU), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    res = run_cli("rewrite", model, "--rule", f"{user_rule}:ReluToMax", "-o", out, "--exact")
    assert res.status == 0, res.stderr
    assert "Relu" not in _ops(out) and "Max" in _ops(out)
    edited = surgeon.rewrite(surgeon.load(model), [f"{user_rule}:ReluToMax"])
    assert edited.report.tolerance.exact  # an exact rule is checked bit for bit


def test_the_readme_rule_runs(tmp_path):
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### `surgeon rewrite")[1]
    block = section.split("```python")[1].split("```")[0]
    rule = tmp_path / "readme_rule.py"
    rule.write_text(block)
    edited = surgeon.rewrite(surgeon.Model(parse(RELU)), [f"{rule}:ReluToMax"])
    assert edited and edited.details["bit_identical"]
    assert "Relu" not in {n.op_type for n in edited.model.proto.graph.node}


def test_a_user_rule_that_changes_values_fails_verification(user_rule, tmp_path):
    model = write(parse(RELU), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    res = run_cli("rewrite", model, "--rule", f"{user_rule}:Wrong", "-o", out)
    assert res.status == 1 and "FAIL" in res.stdout
    assert not out.exists()


def test_user_rule_errors(user_rule, tmp_path):
    model = write(parse(RELU), tmp_path / "m.onnx")
    res = run_cli("rewrite", model, "--rule", f"{user_rule}:ReluToMx")
    message = " ".join(res.stderr.split())  # a long path wraps the line
    assert res.status == 2 and "has no `ReluToMx`; did you mean `ReluToMax`?" in message
    res = run_cli("rewrite", model, "--rule", f"{tmp_path}/missing.py:R")
    assert res.status == 2 and "does not exist" in res.stderr
    res = run_cli("rewrite", model, "--rule", f"{user_rule}:Forgetful")
    assert res.status == 2 and "did not produce `h`" in " ".join(res.stderr.split())
    with pytest.raises(surgeon.SurgeonError, match="lacks"):
        surgeon.rewrite(surgeon.Model(parse(RELU)), [object()])


def test_the_api_takes_rule_objects_and_never_changes_its_input():
    from surgeon.rewrites.topk import TopKRule

    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 6] x) => (v, int64 i) {
    k = Constant <value = int64[1] {2}> ()
    v, i = TopK (x, k)
}"""
    )
    model = surgeon.Model(proto)
    before = model.proto.SerializeToString()
    edited = surgeon.rewrite(model, [TopKRule()])
    assert edited and edited.edit == "rewrite" and edited.params["rules"] == ["topk"]
    assert model.proto.SerializeToString() == before


# ------------------------------------------------------------------ nms --no-topk
@pytest.mark.parametrize("layout", ["yolov8", "detr"])
def test_nms_without_topk_equals_the_topk_graph_with_ties(tmp_path, layout):
    plain, free = tmp_path / "nms.onnx", tmp_path / "nms_free.onnx"
    common = ["nms", "--layout", layout, "--classes", "3", "--max-det", "5"]
    assert run_cli(*common, "-o", plain).status == 0
    res = run_cli(*common, "--no-topk", "-o", free, "--json")
    assert res.status == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["params"]["no_topk"] is True and "bit-identical" in doc["params"]["no_topk_check"]
    assert "TopK" in _ops(plain) and "TopK" not in _ops(free)
    text = run_cli(*common, "--no-topk", "-o", tmp_path / "again.onnx")
    assert text.status == 0 and "--no-topk: TopK rewritten; PASS" in text.stdout
    a, b = surgeon.load(plain), surgeon.load(free)
    rng = np.random.default_rng(2)
    for boxes in (6, 11):  # two sizes, scores with ties
        dims = {d: boxes for i in a.inputs for d in i.shape if isinstance(d, str) and d != "batch"}
        feeds = surgeon.make_feeds(a, surgeon.FeedOptions(seed=boxes, dims=dims))
        for name, value in feeds.items():
            if value.dtype == np.float32:
                feeds[name] = np.round(rng.uniform(0, 1, value.shape), 1).astype(np.float32)
        got, want = surgeon.run(b, feeds), surgeon.run(a, feeds)
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name


def test_merge_nms_without_topk_verifies_and_leaves_no_topk(tmp_path):
    detector = ROOT / "sample_models" / "tiny_yolo.onnx"
    out = tmp_path / "merged.onnx"
    res = run_cli("merge", detector, "--nms", "yolov8", "--classes", "3", "--no-topk", "-o", out)
    assert res.status == 0, res.stderr
    assert "--no-topk: TopK rewritten; PASS" in res.stdout
    assert "TopK" not in _ops(out) and "NonMaxSuppression" in _ops(out)
    with_topk = tmp_path / "with_topk.onnx"
    assert (
        run_cli("merge", detector, "--nms", "yolov8", "--classes", "3", "-o", with_topk).status == 0
    )
    a, b = surgeon.load(with_topk), surgeon.load(out)
    for batch in (1, 2):  # two sizes: the merged models agree bit for bit
        feeds = surgeon.make_feeds(a, surgeon.FeedOptions(seed=batch, dims={"batch": batch}))
        got, want = surgeon.run(b, feeds), surgeon.run(a, feeds)
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name
    # Without --nms the option has nothing to apply to.
    res = run_cli("merge", detector, with_topk, "--no-topk", "-o", tmp_path / "x.onnx")
    assert res.status == 2 and "--no-topk only applies with --nms" in res.stderr


def test_hostile_names_and_attributes_are_escaped(tmp_path):
    text = GRIDSAMPLE.replace("MODE", "bi\x1b[2Jcubic").replace("PADDING", "zeros")
    path = write(_named(parse(text), "evil\x1b]0;pwned\x07"), tmp_path / "m.onnx")
    res = run_cli("rewrite", path, "--rule", "gridsample")
    assert res.status == 2
    assert "\x1b" not in res.stderr and "\\x1b" in res.stderr
    text = GRIDSAMPLE.replace("MODE", "nearest").replace("PADDING", "zeros")
    path = write(_named(parse(text), "evil\x1b]0;pwned\x07"), tmp_path / "ok.onnx")
    res = run_cli("rewrite", path, "--rule", "gridsample")
    assert res.status == 0, res.stderr
    assert "\x1b" not in res.stdout and "\\x1b" in res.stdout
