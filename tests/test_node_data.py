"""`surgeon debug --node-data`: per-node results as Model Explorer node data.

The format facts (from the Model Explorer sources, node_data_builder.py, and its ONNX
adapter, model_explorer_onnx) are written below as a schema fixture, and every document
the tests produce is validated against it. Node ids for unnamed nodes are checked
against onnx-ir's NameFixPass (what the adapter runs) where onnx-ir is installed.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx import TensorProto, helper

from surgeon.debugging import DebugOptions, debug
from surgeon.loading import load
from surgeon.report.node_data import (
    adapter_node_ids,
    node_data_documents,
    write_node_data,
)

# --- the format, as found in Model Explorer's node_data_builder.py ---------------------
# ModelNodeData: {graph id: GraphNodeData}. GraphNodeData: results (required), and
# optional thresholds / gradient and display switches. NodeDataResult: value (a number),
# optional bgColor / textColor. ThresholdItem: value, bgColor, optional textColor.
# GradientItem: stop in [0, 1], optional bgColor / textColor.
NODE_DATA_SCHEMA = {
    "graph": {
        "required": {"results"},
        "optional": {
            "thresholds",
            "gradient",
            "hideInAggregatedStatsTable",
            "hideInChildrenStatsTable",
            "hideAggregatedStats",
            "showExpandedSummaryOnGroupNode",
            "showLabelCountColumnsInChildrenStatsTable",
        },
    },
    "result": {"required": {"value"}, "optional": {"bgColor", "textColor"}},
    "threshold": {"required": {"value", "bgColor"}, "optional": {"textColor"}},
    "gradient": {"required": {"stop"}, "optional": {"bgColor", "textColor"}},
}


def _keys_ok(record: dict, kind: str) -> None:
    spec = NODE_DATA_SCHEMA[kind]
    assert isinstance(record, dict), (kind, record)
    assert spec["required"] <= set(record), (kind, record)
    assert set(record) <= spec["required"] | spec["optional"], (kind, record)


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_node_data(doc: dict) -> None:
    """Fail unless ``doc`` is a ModelNodeData per the schema fixture, with finite
    values (JSON has no NaN/Inf)."""
    assert isinstance(doc, dict) and doc
    for graph_id, graph in doc.items():
        assert isinstance(graph_id, str) and graph_id
        _keys_ok(graph, "graph")
        assert isinstance(graph["results"], dict)
        for node_id, result in graph["results"].items():
            assert isinstance(node_id, str) and node_id
            _keys_ok(result, "result")
            assert _finite_number(result["value"]), (node_id, result)
        bounds = []
        for item in graph.get("thresholds", []):
            _keys_ok(item, "threshold")
            assert _finite_number(item["value"]) and isinstance(item["bgColor"], str)
            bounds.append(item["value"])
        assert bounds == sorted(bounds)
        if bounds:  # a value above the last threshold would be drawn uncoloured
            assert all(r["value"] <= bounds[-1] for r in graph["results"].values())
        for item in graph.get("gradient", []):
            _keys_ok(item, "gradient")
            assert 0 <= item["stop"] <= 1


# --- models -------------------------------------------------------------------------


def _chain(names: list[str], graph_name: str = "chain", scale: float = 1.0) -> onnx.ModelProto:
    """x -> Relu -> Mul(scale) -> Neg -> Sigmoid -> y; ``names`` names the nodes ("" =
    unnamed)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [], [scale])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name=names[0]),
        helper.make_node("Mul", ["a", "w"], ["b"], name=names[1]),
        helper.make_node("Neg", ["b"], ["c"], name=names[2]),
        helper.make_node("Sigmoid", ["c"], ["y"], name=names[3]),
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _read(path) -> dict:
    doc = json.loads(path.read_text())
    validate_node_data(doc)
    return doc


# --- node ids -----------------------------------------------------------------------


def _if_model() -> onnx.ModelProto:
    """Unnamed and duplicate names in the main graph, and an If whose branches hold
    clashing unnamed nodes (they move the adapter's shared name counter)."""
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])
    then = helper.make_graph(
        [helper.make_node("Neg", ["c"], ["t0"]), helper.make_node("Neg", ["t0"], ["t"])],
        "then",
        [],
        [out],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["t"], name="n")],
        "else",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"], name="n"),
        helper.make_node("Relu", ["b"], ["c"], name="n"),
        helper.make_node("Greater", ["c", "x"], ["cond"]),
        helper.make_node("If", ["cond"], ["y0"], then_branch=then, else_branch=other),
        helper.make_node("Relu", ["y0"], ["y1"], name="node"),
        helper.make_node("Relu", ["y1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_adapter_ids_fix_unnamed_and_duplicate_names():
    # worked by hand from the rules: "node" then "_1", "_2" per base name, one counter
    # for the whole model; the If's then-branch bumps "node" once
    ids = adapter_node_ids(_if_model())
    assert ids == ["node", "n", "n_1", "node_1", "node_2", "node_4", "node_5"]


def test_adapter_ids_agree_with_onnx_ir_name_fix_pass():
    ir = pytest.importorskip("onnx_ir")
    common = pytest.importorskip("onnx_ir.passes.common")
    for proto in (_if_model(), _chain(["", "mul", "", "mul"]), _chain(["a", "b", "c", "d"])):
        model = ir.serde.deserialize_model(proto)
        common.NameFixPass()(model)
        assert adapter_node_ids(proto) == [node.name for node in model.graph]


# --- documents from real debug runs -------------------------------------------------


def test_without_reference_magnitude_per_node(cli, tmp_path):
    path = write(_chain(["relu", "", "neg", ""], scale=3.0), tmp_path / "m.onnx")
    out = tmp_path / "nd.json"
    res = cli("debug", path, "--node-data", out)
    assert res.status == 0, res.stderr
    assert str(out) in res.stdout
    doc = _read(out)
    assert list(doc) == ["chain"]
    results = doc["chain"]["results"]
    assert set(results) == {"relu", "node", "neg", "node_1"}
    assert set(results) == set(adapter_node_ids(onnx.load(path)))
    # the same run through the API, keeping the values: max |x| per node output
    rep = debug(load(path), DebugOptions(keep_values=True))
    vals = rep.values
    expected = {
        "relu": np.abs(vals["a"]).max(),
        "node": np.abs(vals["b"]).max(),
        "neg": np.abs(vals["c"]).max(),
        "node_1": np.abs(vals["y"]).max(),
    }
    for node, value in expected.items():
        assert results[node]["value"] == pytest.approx(float(value), rel=1e-6)
        assert "bgColor" not in results[node]


def test_nan_born_node_is_marked_and_values_stay_finite(tmp_path):
    model = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (y) {
            r = Relu(x)
            n = Neg(r)
            one = Constant<value = float {1.0}>()
            m = Sub(n, one)
            y = Sqrt(m)
        }"""
    )
    model.graph.name = "g"
    report = debug(load(write(model, tmp_path / "m.onnx")))
    assert report.born and report.born[0].tensor == "y"
    doc = node_data_documents(report, load(tmp_path / "m.onnx"))["magnitude"]
    validate_node_data(doc)
    json.dumps(doc, allow_nan=False)
    results = doc["g"]["results"]
    ids = adapter_node_ids(model)
    sqrt = ids[-1]
    assert results[sqrt]["value"] == np.finfo(np.float64).max
    assert results[sqrt]["bgColor"] == "#8b0000"
    assert not any("bgColor" in r for k, r in results.items() if k != sqrt)


def test_with_reference_cumulative_error_and_root_cause(cli, tmp_path):
    ref = write(_chain(["relu", "mul", "neg", "sig"]), tmp_path / "ref.onnx")
    cand = write(_chain(["relu", "mul", "neg", "sig"], scale=1.5), tmp_path / "cand.onnx")
    out = tmp_path / "err.json"
    res = cli("debug", cand, "--ref", ref, "--node-data", out)
    assert res.status == 1, res.stderr
    doc = _read(out)
    results = doc["chain"]["results"]
    assert set(results) == {"relu", "mul", "neg", "sig"}
    assert results["relu"]["value"] == 0
    # independent reference: the fraction of elements outside atol=rtol=1e-4
    feeds = {"x": debug(load(cand), DebugOptions(keep_values=True)).feed_values["x"]}
    a = np.maximum(feeds["x"], 0)
    for node, (got, exp) in {
        "mul": (a * 1.5, a),
        "neg": (-a * 1.5, -a),
        "sig": (1 / (1 + np.exp(a * 1.5)), 1 / (1 + np.exp(a))),
    }.items():
        bad = np.abs(got - exp) > 1e-4 + 1e-4 * np.abs(exp)
        assert results[node]["value"] == pytest.approx(bad.mean(), abs=1 / bad.size)
    assert results["mul"]["bgColor"] == "#8b0000"
    assert [k for k, r in results.items() if "bgColor" in r] == ["mul"]
    # debug measured each node's own error too: only `mul` errs on the reference's inputs
    isolated = _read(tmp_path / "err.isolated.json")["chain"]["results"]
    assert isolated["mul"]["value"] == results["mul"]["value"] > 0
    assert isolated["mul"]["bgColor"] == "#8b0000"
    assert isolated["neg"]["value"] == isolated["sig"]["value"] == isolated["relu"]["value"] == 0


@pytest.mark.parametrize("as_dict", [True, False])
def test_isolated_errors_get_their_own_file(tmp_path, as_dict):
    ref = write(_chain(["relu", "mul", "neg", "sig"]), tmp_path / "ref.onnx")
    cand = load(write(_chain(["relu", "mul", "neg", "sig"], scale=1.5), tmp_path / "c.onnx"))
    report = debug(cand, DebugOptions(reference=str(ref)))
    for layer in report.layers:  # as the isolated-error engine reports them
        own = layer.diff.mismatches if layer.node == "mul" else 0
        fields = {"max_abs": 0.0, "max_rel": 0.0, "mismatches": own, "excess": 0.0}
        layer.isolated = fields if as_dict else SimpleNamespace(**fields)
    written = write_node_data(report, cand, tmp_path / "e.json")
    assert [p.name for p in written] == ["e.json", "e.isolated.json"]
    isolated = _read(tmp_path / "e.isolated.json")["chain"]["results"]
    assert isolated["mul"]["value"] > 0 and isolated["mul"]["bgColor"] == "#8b0000"
    assert isolated["neg"]["value"] == isolated["sig"]["value"] == isolated["relu"]["value"] == 0
    cumulative = _read(tmp_path / "e.json")["chain"]["results"]
    assert cumulative["neg"]["value"] > 0  # inherited, seen only in the cumulative file


def test_layers_without_a_comparable_value_are_left_out():
    layer = SimpleNamespace(diff=SimpleNamespace(name="a", status="missing", size=0))
    report = SimpleNamespace(reference="r", root_cause=None, layers=[layer])
    doc = node_data_documents(report, _chain(["p", "q", "r", "s"]))
    assert doc == {
        "cumulative": {
            "chain": {"results": {}, "thresholds": doc["cumulative"]["chain"]["thresholds"]}
        }
    }
    validate_node_data(doc["cumulative"])


# --- the CLI's file plan ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["-o", "{nd}"],
        ["--html", "{nd}"],
        ["--save", "{nd}"],
        ["--ref", "{ref}", "--html", "{iso}"],
    ],
    ids=["-o", "--html", "--save", "isolated-file"],
)
def test_node_data_clashes_with_other_outputs(cli, tmp_path, extra):
    ref = write(_chain(["relu", "mul", "neg", "sig"]), tmp_path / "ref.onnx")
    model = write(_chain(["relu", "mul", "neg", "sig"]), tmp_path / "m.onnx")
    nd, iso = tmp_path / "nd.json", tmp_path / "nd.isolated.json"
    args = [a.format(nd=nd, ref=ref, iso=iso) for a in extra]
    res = cli("debug", model, "--node-data", nd, *args)
    assert res.status == 2, res.stdout
    assert "both write" in res.stderr
    assert not nd.exists() and not iso.exists()


def test_node_data_may_not_replace_the_model_or_be_empty(cli, tmp_path):
    model = write(_chain(["relu", "mul", "neg", "sig"]), tmp_path / "m.onnx")
    before = model.read_bytes()
    res = cli("debug", model, "--node-data", model)
    assert res.status == 2 and model.read_bytes() == before
    res = cli("debug", model, "--node-data", "")
    assert res.status == 2
    assert "--node-data was given an empty path" in res.stderr + res.stdout
