"""`rename`: every reference follows the new names; values are checked under the new names
with onnx.reference.ReferenceEvaluator, independently of surgeon's verifier."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from surgeon.edits.rename import parse_regex, rename
from surgeon.errors import NameNotFoundError, UsageError
from surgeon.loading import load
from surgeon.recipes import rename_for_deployment


def without_provenance(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    return copy


def test_round_trip_gives_back_the_same_model(samples):
    model = load(samples / "tiny_yolo.onnx")
    forward = {"images": "pixels", "output0": "preds", "head/conv_out": "head_raw"}
    there = rename(model, forward)
    assert there.passed and there.report.worst_abs() == 0  # equal values, not only within tolerance
    assert there.model.input_names == ["pixels"] and there.model.output_names == ["preds"]
    back = rename(there.model, {v: k for k, v in forward.items()})
    assert back.passed
    assert without_provenance(back.model.proto) == without_provenance(model.proto)
    assert [r["edit"] for r in back.model.provenance] == ["rename", "rename"]


def test_same_values_under_the_new_names(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = rename(model, {"images": "pixels", "output0": "preds", "head/conv_out": "head_raw"})
    # the renamed intermediate tensor is one of the verified pairs
    assert {(t.name, t.reference) for t in edited.report.tensors} == {
        ("preds", "output0"),
        ("head_raw", "head/conv_out"),
    }
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    (want,) = ReferenceEvaluator(model.proto).run(["output0"], {"images": x})
    (got,) = ReferenceEvaluator(edited.model.proto).run(["preds"], {"pixels": x})
    assert np.array_equal(got, want)
    proto = edited.model.proto
    assert not {"images", "output0", "head/conv_out"} & {
        x for n in proto.graph.node for x in list(n.input) + list(n.output)
    }
    assert model.input_names == ["images"]  # the input model is untouched


def test_outer_scope_reads_in_if_bodies_follow(samples):
    model = load(samples / "if_model.onnx")
    edited = rename(model, {"x": "inp", "w": "weights", "y": "out"})
    assert edited.passed
    onnx.checker.check_model(edited.model.proto, full_check=True)
    branches = {a.name: a.g for a in edited.model.proto.graph.node[2].attribute}
    assert list(branches["then_branch"].node[0].input) == ["inp", "weights"]
    assert list(branches["else_branch"].node[0].input) == ["inp", "one"]
    x = np.array([[1, 2, 3], [4, 5, -6]], np.float32)
    (want,) = ReferenceEvaluator(model.proto).run(None, {"x": x})
    (got,) = ReferenceEvaluator(edited.model.proto).run(None, {"inp": x})
    assert np.array_equal(got, want)


def test_prefix_regex_and_nodes(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = rename(model, prefix="det_", nodes=True)
    assert edited.model.input_names == ["det_images"] and edited.model.output_names == [
        "det_output0"
    ]
    assert all(n.name.startswith("det_") for n in edited.model.proto.graph.node)
    assert len(edited.details["nodes"]) == 20
    edited = rename(model, regex=r"^output(\d+)$=preds\1")
    assert edited.model.output_names == ["preds0"] and edited.model.input_names == ["images"]
    assert edited.details["tensors"] == [{"old": "output0", "new": "preds0", "role": "output"}]


def test_swap_is_not_a_collision(samples):
    model = load(samples / "two_conv.onnx")
    edited = rename(model, {"in": "out", "out": "in"})
    assert edited.passed
    assert edited.model.input_names == ["out"] and edited.model.output_names == ["in"]


def test_every_collision_is_listed(cli, samples, tmp_path):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(UsageError) as e:
        rename(model, {"images": "head/grid", "output0": "head/flat"})
    assert len(e.value.problems) == 2
    assert "initializer" in e.value.problems[0] and "intermediate tensor" in e.value.problems[1]
    with pytest.raises(UsageError, match="both become"):
        rename(model, {"images": "a", "output0": "a"})
    out = tmp_path / "r.onnx"
    res = cli(
        "rename",
        samples / "tiny_yolo.onnx",
        "--map",
        "images=output0",
        "--map",
        "output0=head/grid",
        "-o",
        out,
    )
    assert res.status == 2 and not out.exists()
    # `images` -> `output0` is fine: output0 is renamed away at the same time
    assert "1 name collision" in res.stderr and "`images`" not in res.stderr
    assert "`head/grid` is already taken by an initializer" in res.stderr


def test_node_name_collisions(samples):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(UsageError, match="a node is already called"):
        rename(model, regex="^backbone/act0$=backbone/act1", nodes=True)


def test_unknown_names_with_suggestions(cli, samples, tmp_path):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(NameNotFoundError, match="did you mean `images`"):
        rename(model, {"imagse": "x"})
    with pytest.raises(NameNotFoundError) as e:
        rename(model, {"imagse": "x", "outptu0": "y"})
    assert len(e.value.problems) == 2
    res = cli("rename", samples / "tiny_yolo.onnx", "--map", "imagse=x", "-o", tmp_path / "r.onnx")
    assert res.status == 2 and "did you mean `images`" in res.stderr


def test_usage_errors(cli, samples, tmp_path):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(UsageError, match="nothing to rename"):
        rename(model)
    with pytest.raises(UsageError, match="matches none"):
        rename(model, regex="zzz=y")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        parse_regex("(=x")
    with pytest.raises(UsageError, match="empty name"):
        rename(model, {"images": ""})
    assert parse_regex("(?=a)b=c")[0].pattern == "(?=a)b"  # split at the last '='
    res = cli("rename", samples / "tiny_yolo.onnx", "--map", "images", "-o", tmp_path / "r.onnx")
    assert res.status == 2 and "OLD=NEW" in res.stderr


def test_cli_json(cli, samples, tmp_path):
    out = tmp_path / "r.onnx"
    res = cli(
        "rename",
        samples / "tiny_yolo.onnx",
        "--map",
        "images=pixels",
        "--regex",
        "^output0$=preds",
        "-o",
        out,
        "--json",
    )
    assert res.status == 0, res.stderr
    doc = res.json
    assert doc["edit"] == "rename" and doc["written"] and doc["passed"]
    assert doc["details"]["tensors"] == [
        {"old": "images", "new": "pixels", "role": "input"},
        {"old": "output0", "new": "preds", "role": "output"},
    ]
    assert load(out).output_names == ["preds"]


def test_rename_for_deployment_recipe(samples):
    model = load(samples / "tiny_yolo.onnx")
    edited = rename_for_deployment.recipe([model], mapping="images=input,output0=preds")
    assert edited.passed and edited.model.input_names == ["input"]
    # exporter-style names are cleaned
    odd = rename(model, {"output0": "head/out:0"}).model
    cleaned = rename_for_deployment.recipe([odd], mapping="images=input")
    assert cleaned.passed and cleaned.model.output_names == ["head_out_0"]
    with pytest.raises(UsageError, match="OLD=NEW"):
        rename_for_deployment.recipe([model], mapping="images")
