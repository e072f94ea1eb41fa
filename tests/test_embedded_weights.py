"""Embedded weights left in the model file (load(..., weights_on_disk=True)): the same
model as a full parse, values included, on many seeded random models; no copy of the
weights in Python; debug, inspect and diff give the same report either way, and debug
still finds a planted weight change."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon
import surgeon.embedded
from surgeon.external import is_external
from surgeon.runner import Session, in_memory_bytes

# dtypes a random initializer may take (each has a fixed width on the wire).
_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


def _random_model(rng: np.random.Generator) -> onnx.ModelProto:
    """A model whose initializers have random dtypes, shapes (empty and scalar ones
    too), names, doc strings and storage (raw_data or typed fields), all reaching
    outputs through Identity."""
    inits, nodes, outputs = [], [], []
    for i in range(int(rng.integers(1, 12))):
        dtype = _DTYPES[int(rng.integers(len(_DTYPES)))]
        rank = int(rng.integers(0, 4))
        shape = [int(d) for d in rng.integers(0, 9, size=rank)]
        values = (rng.standard_normal(shape) * 50).astype(dtype)
        tensor = numpy_helper.from_array(values, f"w{i}/ü" if i % 3 == 0 else f"w{i}")
        if rng.random() < 0.3 and dtype == np.float32:  # typed storage, no raw_data
            tensor = helper.make_tensor(tensor.name, TensorProto.FLOAT, shape, values.ravel())
        if rng.random() < 0.3:
            tensor.doc_string = f"doc {i}"
        inits.append(tensor)
        nodes.append(helper.make_node("Identity", [tensor.name], [f"y{i}"], name=f"n{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", tensor.data_type, shape))
    graph = helper.make_graph(nodes, "random", [], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _values(model: surgeon.Model) -> dict[str, np.ndarray]:
    return {t.name: model.tensor_array(t) for t in model.proto.graph.initializer}


@pytest.mark.parametrize("seed", range(40))
def test_random_models_load_to_the_same_values(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 1)
    path = tmp_path / "m.onnx"
    onnx.save(_random_model(np.random.default_rng(seed)), str(path))
    whole = onnx.load(str(path))
    lazy = surgeon.load(path, weights_on_disk=True)
    expected = {t.name: numpy_helper.to_array(t) for t in whole.graph.initializer}
    got = _values(lazy)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value)
    # Only raw_data tensors go on disk; the nodes and everything else are unchanged.
    for t, w in zip(lazy.proto.graph.initializer, whole.graph.initializer, strict=True):
        assert is_external(t) == (w.HasField("raw_data") and len(w.raw_data) >= 1)
    assert lazy.proto.graph.node == whole.graph.node
    # onnxruntime reads the same values from the file.
    if lazy.proto.graph.output:
        run = Session(lazy).run({})
        for name, value in expected.items():
            out = "y" + name.split("/")[0][1:]
            np.testing.assert_array_equal(run[out], value)


def test_large_weights_stay_out_of_python_and_the_report_is_the_same(samples, cli, monkeypatch):
    path = samples / "tiny_yolo.onnx"
    whole = surgeon.load(path)
    lazy = surgeon.load(path, weights_on_disk=True)  # at the default threshold
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 65)
    lower = surgeon.load(path, weights_on_disk=True)
    assert in_memory_bytes(lower) < in_memory_bytes(whole) / 4
    assert in_memory_bytes(lazy) <= in_memory_bytes(whole)
    assert lower.external_data_files == []  # the model's own file is not a side file
    on_disk = cli("debug", path, "--tap", "all", "--json")
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 2**62)
    in_memory = cli("debug", path, "--tap", "all", "--json")
    assert on_disk.status == in_memory.status == 0
    assert _without_timings(on_disk.json) == _without_timings(in_memory.json)


def _without_timings(report):
    if isinstance(report, dict):
        return {k: _without_timings(v) for k, v in report.items() if "seconds" not in k}
    if isinstance(report, list):
        return [_without_timings(v) for v in report]
    return report


@pytest.mark.parametrize("folder", ["same", "other"])
def test_planted_weight_change_is_found_with_weights_on_disk(
    samples, cli, monkeypatch, tmp_path, folder
):
    """The reference beside the model (both keep their weights on disk) or in another
    folder (the merged comparison model reads the candidate's folder only)."""
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 65)
    good = samples / "tiny_yolo.onnx"
    if folder == "other":
        tmp_path = tmp_path / "elsewhere"
        tmp_path.mkdir()
    proto = onnx.load(str(good))
    target = next(t for t in proto.graph.initializer if t.name == "backbone/conv1.weight")
    changed = numpy_helper.to_array(target).copy()
    changed.flat[0] += 10.0
    target.CopyFrom(numpy_helper.from_array(changed, target.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    res = cli("debug", bad, "--ref", good, "--json")
    assert res.status == 1, res.stderr
    assert res.json["root_cause"]["node"] == "backbone/conv1"


def test_saved_model_stands_alone(samples, monkeypatch, tmp_path):
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 65)
    lazy = surgeon.load(samples / "tiny_yolo.onnx", weights_on_disk=True)
    out = lazy.save(tmp_path / "copy.onnx")
    saved = onnx.load(str(out))  # onnx alone, from another folder: no references left
    assert not any(is_external(t) for t in saved.graph.initializer)
    original = onnx.load(str(samples / "tiny_yolo.onnx"))
    for a, b in zip(saved.graph.initializer, original.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_reference_with_external_data_in_another_folder(samples, cli, tmp_path, monkeypatch):
    """A reference whose weights are in an external data file in its own folder: the
    merged comparison model reads them from there, not from the candidate's folder."""
    monkeypatch.setattr(surgeon.loading, "INLINE_EXTERNAL_BELOW", 1)  # all stay on disk
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    candidate = surgeon.load(samples / "ext_weights.onnx")
    out = candidate.save(elsewhere / "candidate.onnx")
    res = cli("debug", out, "--ref", samples / "ext_weights.onnx", "--json")
    assert res.status == 0, res.stderr
    assert res.json["passed"] and len(res.json["comparison"]) == 5


@pytest.mark.parametrize("name", ["tiny_yolo.onnx", "two_conv.onnx", "if_model.onnx"])
@pytest.mark.parametrize("command", ["inspect", "diff", "debug"])
def test_commands_that_keep_weights_on_disk_report_the_same(
    samples, cli, monkeypatch, name, command
):
    """inspect, diff and debug load with the weights left in the file: the same report as
    with every weight in memory (nothing on disk at a huge threshold)."""
    path = samples / name
    argv = {
        "inspect": ["inspect", path, "--json"],
        "diff": ["diff", path, path, "--json"],
        "debug": ["debug", path, "--tap", "all", "--ref", path, "--json"],
    }[command]
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 65)
    on_disk = cli(*argv)
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 2**62)
    in_memory = cli(*argv)
    assert on_disk.status == in_memory.status, on_disk.stderr
    assert _without_timings(on_disk.json) == _without_timings(in_memory.json)
