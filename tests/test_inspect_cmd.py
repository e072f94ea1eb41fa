"""`surgeon inspect` through the CLI, with facts recomputed here from the onnx protobuf."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import onnx
import pytest
from conftest import ROOT, parse, run_cli, write
from onnx import numpy_helper

from surgeon.model import Model
from surgeon.saving import save

SAMPLE_NAMES = ["two_conv.onnx", "tiny_yolo.onnx", "if_model.onnx", "ext_weights.onnx"]

INSPECT_KEYS = {
    "schema",
    "pytorch",
    "file",
    "ir_version",
    "opsets",
    "producer",
    "graph_name",
    "inputs",
    "outputs",
    "initializers_as_inputs",
    "nodes",
    "nodes_including_subgraphs",
    "op_types",
    "parameters",
    "custom_domains",
    "external_data",
    "subgraph_nodes",
    "functions",
    "metadata",
    "history",
    "declared_value_info",
}


def readme_json_keys(command: str) -> set[str]:
    """The names in backticks of the README's "JSON keys" paragraph for ``command``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## JSON keys", 1)[1].split("\n## ", 1)[0]
    para = next(p for p in section.split("\n\n") if p.startswith(f"`surgeon {command} --json`"))
    return {w for w in re.findall(r"`([^`]+)`", para) if re.fullmatch(r"[a-z_]+", w)}


def _flat(text: str) -> str:
    return " ".join(text.split())


def _independent_params(path: Path) -> tuple[int, int, Counter]:
    """Parameter count, bytes and count per dtype from onnx.load + numpy."""
    proto = onnx.load(str(path))  # reads external data from the model's folder
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    by_dtype = Counter()
    for a in arrays:
        by_dtype[a.dtype.name] += a.size
    return sum(a.size for a in arrays), sum(a.nbytes for a in arrays), by_dtype


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_json_facts_match_an_independent_reading(samples, name):
    path = samples / name
    res = run_cli("inspect", path, "--json")
    assert res.status == 0, res.stderr
    info = res.json
    assert set(info) == INSPECT_KEYS and info["schema"] == "surgeon.inspect/1"
    proto = onnx.load(str(path), load_external_data=False)
    assert info["ir_version"] == proto.ir_version == 8
    assert info["opsets"] == {"ai.onnx": 17}
    assert info["producer"] == {"name": "surgeon sample_models/build.py", "version": ""}
    assert info["nodes"] == len(proto.graph.node)
    assert info["op_types"] == dict(Counter(n.op_type for n in proto.graph.node))
    count, nbytes, by_dtype = _independent_params(path)
    assert info["parameters"] == {"count": count, "bytes": nbytes, "by_dtype": dict(by_dtype)}
    assert info["custom_domains"] == {}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_text(samples, name):
    res = run_cli("inspect", samples / name)
    assert res.status == 0, res.stderr
    text = _flat(res.stdout)
    count, _, _ = _independent_params(samples / name)
    assert "IR version 8" in text and "opsets ai.onnx 17" in text
    assert "producer surgeon sample_models/build.py" in text
    assert f"{count:,} parameters" in text
    for op, n in Counter(n.op_type for n in onnx.load(str(samples / name)).graph.node).items():
        assert re.search(rf"│ {op} +│ +{n} │", res.stdout), op


def test_the_node_count_mentions_subgraphs_only_when_there_are_some(samples):
    plain = _flat(run_cli("inspect", samples / "two_conv.onnx").stdout)
    assert "2 nodes ·" in plain and "subgraph" not in plain.split("·")[2]
    nested = _flat(run_cli("inspect", samples / "if_model.onnx").stdout)
    main = len(onnx.load(str(samples / "if_model.onnx")).graph.node)
    total = run_cli("inspect", samples / "if_model.onnx", "--json").json[
        "nodes_including_subgraphs"
    ]
    assert total > main and f"{main} nodes ({total} with those in subgraphs)" in nested


def test_dynamic_dims_by_name(samples):
    info = run_cli("inspect", samples / "tiny_yolo.onnx", "--json").json
    assert info["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, 64, 64]}]
    assert info["outputs"] == [{"name": "output0", "dtype": "float32", "shape": ["batch", 7, 64]}]
    text = run_cli("inspect", samples / "two_conv.onnx").stdout
    assert "[1, 3, H, W]" in text and "[1, 4, H, W]" in text
    assert "[batch, 3, 64, 64]" in run_cli("inspect", samples / "tiny_yolo.onnx").stdout


def test_histogram_is_sorted_by_count(samples):
    ops = run_cli("inspect", samples / "tiny_yolo.onnx", "--json").json["op_types"]
    counts = list(ops.values())
    assert counts == sorted(counts, reverse=True)
    assert ops["Mul"] == 5 and ops["Conv"] == 4


def test_external_data_listed(samples):
    info = run_cli("inspect", samples / "ext_weights.onnx", "--json").json
    assert info["external_data"] == ["ext_weights.onnx.data"]
    assert (
        "external data: ext_weights.onnx.data"
        in run_cli("inspect", samples / "ext_weights.onnx").stdout
    )
    assert run_cli("inspect", samples / "tiny_yolo.onnx", "--json").json["external_data"] == []


def test_if_subgraph_and_outer_scope_reads(samples):
    info = run_cli("inspect", samples / "if_model.onnx", "--json").json
    assert info["nodes"] == 4 and info["nodes_including_subgraphs"] == 6
    [node] = info["subgraph_nodes"]
    assert (node["node"], node["op"]) == ("choose", "If")
    subs = {s["attribute"]: s for s in node["subgraphs"]}
    assert set(subs) == {"then_branch", "else_branch"}
    assert sorted(subs["then_branch"]["outer_scope_reads"]) == ["w", "x"]
    assert sorted(subs["else_branch"]["outer_scope_reads"]) == ["one", "x"]
    assert subs["then_branch"]["nodes"] == 1
    text = _flat(run_cli("inspect", samples / "if_model.onnx").stdout)
    assert "subgraph: choose (If).then_branch: 1 nodes, reads x, w from the outer scope" in text
    assert "subgraph: choose (If).else_branch: 1 nodes, reads x, one from the outer scope" in text


def test_nested_subgraph_reads_reach_the_outer_node(tmp_path):
    # The inner If reads `w` from two scopes up: the outer If must list it.
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[2] w) => (y) {
        y = If(c) <
            then_branch = t () => (ty) {
                ty = If(c) <then_branch = a () => (ay) { ay = Neg(w) },
                            else_branch = b () => (by) { by = Abs(w) }>
            },
            else_branch = e () => (ey) { ey = Identity(w) }
        >
    }""")
    info = run_cli("inspect", write(model, tmp_path / "nested.onnx"), "--json").json
    subs = {s["attribute"]: s for s in info["subgraph_nodes"][0]["subgraphs"]}
    assert sorted(subs["then_branch"]["outer_scope_reads"]) == ["c", "w"]
    assert subs["then_branch"]["nodes"] == 3
    assert info["nodes_including_subgraphs"] == 5


def test_custom_domain_listed(tmp_path):
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[N, 4] x) => (y) { t = com.example.Gelu2(x)
        y = Relu(t) }""")
    path = write(model, tmp_path / "custom.onnx")
    info = run_cli("inspect", path, "--json").json
    assert info["custom_domains"] == {"com.example": 1}
    assert info["opsets"] == {"ai.onnx": 17, "com.example": 1}
    assert info["op_types"] == {"Relu": 1, "com.example::Gelu2": 1}
    text = _flat(run_cli("inspect", path).stdout)
    assert "custom domains: com.example (1 nodes)" in text and "--custom-op-library" in text


def test_local_function_is_not_a_custom_domain(tmp_path):
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[N] x) => (y) { y = local.twice(x) }
    <domain: "local", opset_import: ["" : 17]>
    twice (a) => (b) { b = Add(a, a) }""")
    path = write(model, tmp_path / "func.onnx")
    info = run_cli("inspect", path, "--json").json
    assert info["custom_domains"] == {}
    assert info["functions"] == ["local::twice"]
    text = run_cli("inspect", path).stdout
    assert "local functions: local::twice" in text and "custom domains" not in text


def test_history_metadata_and_initializers_as_inputs(tmp_path):
    proto = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] w) => (y) <float[2] w = {1.0, 2.0}> { y = Add(x, w) }""")
    proto.metadata_props.add(key="author", value="[bold]me[/bold]")
    model = Model(proto).add_provenance("rename", {"output0": "preds"})
    path = save(model, tmp_path / "hist.onnx")
    info = run_cli("inspect", path, "--json").json
    assert info["metadata"] == {"author": "[bold]me[/bold]"}
    assert info["history"][0]["edit"] == "rename"
    assert info["initializers_as_inputs"] == ["w"]
    assert [i["name"] for i in info["inputs"]] == ["x"]
    text = run_cli("inspect", path).stdout
    assert "[bold]me[/bold]" in text  # shown literally, not as markup
    assert "rename" in text and "output0=preds" in text
    assert "1 initializer(s) are also listed as graph inputs" in _flat(text)


def test_readme_json_keys_exist(samples):
    documented = readme_json_keys("inspect")
    assert documented - {"count", "bytes", "by_dtype", "names"} <= INSPECT_KEYS
    info = run_cli("inspect", samples / "tiny_yolo.onnx", "--json").json
    assert {"count", "bytes", "by_dtype"} <= set(info["parameters"])
    # `names` is documented as present with --names only
    assert "names" in documented and "names" not in info
    assert "names" in run_cli("inspect", samples / "tiny_yolo.onnx", "--names", "--json").json


@pytest.mark.parametrize("kind", ["junk", "truncated", "missing external data"])
def test_bad_model_exit_2_no_traceback(samples, kind):
    if kind == "junk":
        path = samples / "junk.onnx"
        path.write_bytes(b"\x08\x07" + b"\xff" * 40)
    elif kind == "truncated":
        data = (samples / "if_model.onnx").read_bytes()
        path = samples / "cut.onnx"
        path.write_bytes(data[: len(data) - 20])
    else:
        (samples / "ext_weights.onnx.data").unlink()
        path = samples / "ext_weights.onnx"
    before = set(samples.parent.rglob("*"))
    res = run_cli("inspect", path)
    assert res.status == 2 and res.stdout == ""
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert path.name in res.stderr
    assert set(samples.parent.rglob("*")) == before
