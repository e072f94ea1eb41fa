"""Untrusted models stay inside their folder: external data is looked for in every place a
tensor can live, is read only from the model's own folder, and never reaches onnxruntime as
a reference it would resolve against the current folder. Only regular files are read."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import surgeon
from surgeon.errors import ModelLoadError
from surgeon.loading import load
from surgeon.model import Model, iter_all_tensors

SECRET = np.array([123.0, -7.5], dtype=np.float32).tobytes()  # 8 bytes, two floats


def _external(name: str, location: str = "notes.txt") -> TensorProto:
    """A float[2] tensor whose values are said to be in ``location``."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        t.external_data.add(key=key, value=value)
    return t


def _sparse_constant(location: str = "notes.txt") -> onnx.ModelProto:
    """`z = Identity(Constant(sparse_value=...))`: the sparse values are external."""
    indices = helper.make_tensor("si", TensorProto.INT64, [2], [0, 3])
    sparse = helper.make_sparse_tensor(_external("sv", location), indices, [2, 2])
    nodes = [
        helper.make_node("Constant", [], ["c"], sparse_value=sparse),
        helper.make_node("Identity", ["c"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _placements() -> dict[str, onnx.ModelProto]:
    """The same external tensor, hidden in each place a tensor can live."""
    out = {"sparse_value": _sparse_constant()}
    # A TENSORS / SPARSE_TENSORS list on a custom-domain node.
    node = helper.make_node("Op", ["x"], ["y"], domain="custom.test")
    node.attribute.append(
        helper.make_attribute("ts", [_external("a")], attr_type=onnx.AttributeProto.TENSORS)
    )
    lst = onnx.AttributeProto(name="ss", type=onnx.AttributeProto.SPARSE_TENSORS)
    lst.sparse_tensors.append(
        helper.make_sparse_tensor(
            _external("b"), helper.make_tensor("i", TensorProto.INT64, [1], [0]), [2]
        )
    )
    node.attribute.append(lst)
    out["tensor_lists"] = _graph_with([node], opsets={"custom.test": 1})
    # An attribute that says it is a float but carries a tensor anyway.
    liar = helper.make_node("Relu", ["x"], ["y"])
    liar.attribute.append(onnx.AttributeProto(name="alpha", type=onnx.AttributeProto.FLOAT))
    liar.attribute[0].t.CopyFrom(_external("c"))
    out["mislabelled_attribute"] = _graph_with([liar])
    # Inside an If body.
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=_external("d"))],
        "then",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [2])],
    )
    cond = helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=body)
    graph = helper.make_graph(
        [cond],
        "g",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    out["if_body"] = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # Inside a local function.
    fn = helper.make_function(
        "local",
        "F",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["k"], value=_external("e")),
            helper.make_node("Add", ["x", "k"], ["y"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    model = _graph_with([helper.make_node("F", ["x"], ["y"], domain="local")], {"local": 1})
    model.functions.append(fn)
    out["local_function"] = model
    # A sparse initializer.
    model = _graph_with([helper.make_node("Add", ["x", "w"], ["y"])])
    model.graph.sparse_initializer.append(
        helper.make_sparse_tensor(
            _external("w"), helper.make_tensor("wi", TensorProto.INT64, [2], [0, 1]), [2]
        )
    )
    out["sparse_initializer"] = model
    return out


def _graph_with(nodes, opsets=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    imports = [helper.make_opsetid("", 17)]
    imports += [helper.make_opsetid(d, v) for d, v in (opsets or {}).items()]
    return helper.make_model(graph, opset_imports=imports)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A model folder and a separate current folder holding the user's notes.txt."""
    model_dir = tmp_path / "model"
    cwd = tmp_path / "cwd"
    model_dir.mkdir()
    cwd.mkdir()
    (cwd / "notes.txt").write_bytes(SECRET)
    monkeypatch.chdir(cwd)
    return model_dir, cwd


@pytest.mark.parametrize("place", sorted(_placements()))
def test_external_data_is_looked_for_everywhere(folders, place):
    model_dir, _ = folders
    path = model_dir / "m.onnx"
    onnx.save(_placements()[place], str(path))
    # notes.txt is only in the current folder: never looked for there.
    with pytest.raises(ModelLoadError, match="notes.txt` is missing"):
        load(path, validate=False)
    # Beside the model it is read, and no external reference survives loading.
    (model_dir / "notes.txt").write_bytes(SECRET)
    model = load(path, validate=False)
    assert "notes.txt" in model.external_data_files
    assert all(t.data_location != TensorProto.EXTERNAL for t in iter_all_tensors(model.proto))
    assert any(t.raw_data == SECRET for t in iter_all_tensors(model.proto))


def test_a_sparse_constant_never_reads_the_current_folder(folders, cli):
    """The reported case: ``debug --save`` copied a file of the user's into the npz."""
    model_dir, cwd = folders
    onnx.save(_sparse_constant(), str(model_dir / "m.onnx"))
    res = cli("debug", model_dir / "m.onnx", "--save", cwd / "out.npz")
    assert res.status == 2, res.stderr
    assert "notes.txt" in res.stderr and "missing" in res.stderr
    assert not (cwd / "out.npz").exists()


def test_a_model_built_in_memory_is_read_from_its_own_folder(folders):
    """A Model whose proto still holds references (not made by surgeon.load) reaches
    onnxruntime with its data read from its own folder, or not at all."""
    model_dir, _ = folders
    proto = _sparse_constant()
    with pytest.raises(ModelLoadError, match="no folder to read it from"):
        surgeon.run(Model(proto), {})
    with pytest.raises(ModelLoadError, match="notes.txt` is missing"):
        surgeon.run(Model(proto, model_dir / "m.onnx"), {})
    own = np.array([1.0, 2.0], dtype=np.float32)
    (model_dir / "notes.txt").write_bytes(own.tobytes())
    z = surgeon.run(Model(proto, model_dir / "m.onnx"), {})["z"]
    np.testing.assert_array_equal(z.reshape(-1)[[0, 3]], own)
    # The caller's proto is left as it was.
    assert proto.graph.node[0].attribute[0].sparse_tensor.values.data_location == 1


@pytest.mark.parametrize("location", ["../cwd/notes.txt", "/etc/hostname", "sub/../../x"])
def test_locations_outside_the_folder_are_refused_in_sparse_attributes(folders, location):
    model_dir, _ = folders
    onnx.save(_sparse_constant(location), str(model_dir / "m.onnx"))
    with pytest.raises(ModelLoadError, match="absolute path|climbs out"):
        load(model_dir / "m.onnx")


# ---------------------------------------------------------------------- regular files only
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@needs_fifo
def test_a_fifo_is_refused_as_a_model_without_hanging(tmp_path, cli):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    res = cli("inspect", fifo)  # reading it would wait forever for a writer
    assert res.status == 2
    assert "named pipe (FIFO)" in res.stderr and "regular file" in res.stderr


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_is_refused_as_a_model(cli):
    res = cli("inspect", "/dev/zero")  # it never ends: read until memory runs out before
    assert res.status == 2
    assert "character device" in res.stderr


@needs_fifo
def test_a_fifo_is_refused_as_external_data(tmp_path):
    model = _graph_with([helper.make_node("Add", ["x", "w"], ["y"])])
    model.graph.initializer.append(_external("w", "w.bin"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(ModelLoadError, match="FIFO"):
        load(tmp_path / "m.onnx")


@needs_fifo
def test_a_fifo_is_refused_as_an_npz(tmp_path, cli, samples):
    fifo = tmp_path / "feeds.npz"
    os.mkfifo(fifo)
    model = sorted(samples.glob("*.onnx"))[0]
    for args in (
        ("debug", model, "--feeds", fifo),
        ("debug", model, "--ref", fifo),
        ("diff", model, model, "--feeds", fifo),
    ):
        res = cli(*args)
        assert res.status == 2, (args, res.stderr)
        assert "FIFO" in res.stderr


def test_a_model_file_above_two_gib_is_not_read(tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as fh:  # sparse: no disk space is used
        fh.truncate(2**31 + 1)
    with pytest.raises(ModelLoadError, match="more than an ONNX file can hold"):
        load(big)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks to devices")
def test_a_symlink_to_a_device_is_not_external_data(tmp_path):
    model = _graph_with([helper.make_node("Add", ["x", "w"], ["y"])])
    model.graph.initializer.append(_external("w", "w.bin"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    os.symlink("/dev/zero", tmp_path / "w.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load(tmp_path / "m.onnx")
