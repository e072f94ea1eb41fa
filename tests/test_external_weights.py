"""Weights that stay on disk: loading leaves large external tensors in their files, edits
never read them into Python, onnxruntime maps them, saving streams them into the
output's own file, and a saved model verifies bit for bit against the original.

The models are tiny: two 128 x 128 float32 weights (64 KiB each, INLINE_EXTERNAL_BELOW,
so they stay external) and a small bias (read in at load).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import surgeon
import surgeon.external as external
from surgeon.compare import EXACT
from surgeon.errors import ModelLoadError, UnsafePathError
from surgeon.model import Model
from surgeon.protos import INLINE_EXTERNAL_BELOW

N = 128
RNG = np.random.default_rng(7)
W0 = (RNG.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
W1 = (RNG.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
BIAS = RNG.standard_normal(N).astype(np.float32)


def _proto() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
        helper.make_node("Tanh", ["hb"], ["t"], name="act"),
        helper.make_node("MatMul", ["t", "w1"], ["y"], name="mm1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N])],
        [
            numpy_helper.from_array(W0, "w0"),
            numpy_helper.from_array(BIAS, "b"),
            numpy_helper.from_array(W1, "w1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _write(folder, name="m.onnx", data="m.onnx.data"):
    """The model with every weight in ``data`` (onnx's own writer), page-aligned."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = _proto()
    onnx.save_model(
        proto,
        str(folder / name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=0,
    )
    return folder / name


def _reference(x):
    return ReferenceEvaluator(_proto()).run(None, {"x": x})[0]


@pytest.fixture
def spy(monkeypatch):
    """Counts every read of external bytes into Python, by kind."""
    calls = {"read": 0, "copy": 0}
    read, copy = external.read_tensor_data, external.copy_tensor_data

    def counting_read(*a, **k):
        calls["read"] += 1
        return read(*a, **k)

    def counting_copy(*a, **k):
        calls["copy"] += 1
        return copy(*a, **k)

    monkeypatch.setattr(external, "read_tensor_data", counting_read)
    monkeypatch.setattr(external, "copy_tensor_data", counting_copy)
    import surgeon.saving

    monkeypatch.setattr(surgeon.saving, "copy_tensor_data", counting_copy)
    return calls


def _external_names(proto) -> set[str]:
    return {t.name for t in external.external_tensors(proto)}


def test_load_keeps_large_tensors_on_disk(tmp_path):
    assert W0.nbytes >= INLINE_EXTERNAL_BELOW > BIAS.nbytes
    m = surgeon.load(_write(tmp_path))
    assert _external_names(m.proto) == {"w0", "w1"}  # the bias was read in
    assert m.proto.ByteSize() < 4096  # a skeleton: no weight bytes
    assert m.external_data_files == ["m.onnx.data"]
    assert set(m.external_stamps) == {str((tmp_path / "m.onnx.data").resolve())}
    assert m.weight_bytes() == 2 * W0.nbytes + BIAS.nbytes


def test_edits_do_not_read_the_weights_into_python(tmp_path, spy):
    m = surgeon.load(_write(tmp_path))
    x = np.random.default_rng(0).standard_normal((2, N)).astype(np.float32)
    tapped = surgeon.tap(m, ["all"], feeds={"x": x})
    cut = surgeon.extract(m, ["t"], ["y"], feeds={"x": x})
    renamed = surgeon.rename(m, {"y": "out"}, feeds={"x": x})
    for edited in (tapped, cut, renamed):
        assert edited.passed, edited.report.summary()
        assert edited.model.proto.ByteSize() < 8192
    assert _external_names(tapped.model.proto) == {"w0", "w1"}
    assert _external_names(cut.model.proto) == {"w1"}
    assert spy == {"read": 0, "copy": 0}  # onnxruntime mapped the files itself
    values = surgeon.run(m, {"x": x})
    np.testing.assert_allclose(values["y"], _reference(x), rtol=1e-5, atol=1e-5)
    assert spy == {"read": 0, "copy": 0}


@pytest.mark.parametrize("external_data", [True, False])
def test_a_saved_edit_verifies_bit_exact_and_owns_its_weights(tmp_path, spy, external_data):
    src = _write(tmp_path / "in")
    m = surgeon.load(src)
    cut = surgeon.extract(m, ["t"], ["y"])
    out = surgeon.save(cut.model, tmp_path / "cut.onnx", external_data=external_data)
    assert spy["read"] == 0 and spy["copy"] == 1  # w1 streamed, once
    stored = onnx.load(str(out), load_external_data=False)
    if external_data:
        (t,) = stored.graph.initializer
        assert t.data_location == TensorProto.EXTERNAL
        assert {e.key: e.value for e in t.external_data}["location"] == "cut.onnx.data"
    else:
        assert not _external_names(stored)
    t = np.tanh(np.random.default_rng(1).standard_normal((2, N)).astype(np.float32))
    edited = surgeon.run(cut.model, {"t": t})["y"]
    # The input's weights gone, the saved model still holds them (its own copy).
    (tmp_path / "in" / "m.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="m.onnx.data was deleted since"):
        surgeon.run(cut.model, {"t": t})
    again = surgeon.load(out)
    np.testing.assert_array_equal(again.tensor_array(again.proto.graph.initializer[0]), W1)
    saved = surgeon.run(again, {"t": t})["y"]
    assert saved.tobytes() == edited.tobytes()
    np.testing.assert_allclose(saved, t @ W1, atol=1e-5)


def test_a_saved_copy_verifies_bit_exact_against_the_original(tmp_path):
    m = surgeon.load(_write(tmp_path / "in"))
    for external_data in (True, False):
        out = surgeon.save(m, tmp_path / f"copy{external_data}.onnx", external_data=external_data)
        report = surgeon.verify(surgeon.load(out), m, tolerance=EXACT)
        assert report.passed, report.summary()


def test_a_streamed_single_file_parses_as_the_model_with_its_weights(tmp_path):
    m = surgeon.load(_write(tmp_path / "in"))
    out = surgeon.save(m, tmp_path / "single.onnx", external_data=False)
    assert not (tmp_path / "single.onnx.data").exists()
    stored = onnx.load(str(out))
    expected = _proto()
    assert [t.name for t in stored.graph.initializer] == ["w0", "b", "w1"]
    for got, want in zip(stored.graph.initializer, expected.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
    assert stored.graph.node == expected.graph.node
    onnx.checker.check_model(stored)


def test_auto_external_data_above_the_limit_streams_too(tmp_path, monkeypatch):
    import surgeon.saving

    monkeypatch.setattr(surgeon.saving, "PROTO_LIMIT", 1024)  # as if the weights were > 2 GB
    m = surgeon.load(_write(tmp_path / "in"))
    out = surgeon.save(m, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 2 * W0.nbytes
    assert surgeon.verify(surgeon.load(out), m, tolerance=EXACT).passed


def test_an_in_place_save_rewrites_the_weights_it_reads(tmp_path):
    src = _write(tmp_path)
    result = run_cli(
        "rename", src, "--map", "y=z", "-o", src, "--inplace", "--external-data", "always"
    )
    assert result.status == 0, result.stderr
    again = surgeon.load(src)
    assert again.output_names == ["z"]
    x = np.random.default_rng(2).standard_normal((2, N)).astype(np.float32)
    np.testing.assert_allclose(surgeon.run(again, {"x": x})["z"], _reference(x), atol=1e-5)


def test_a_weights_file_replaced_after_loading_is_refused(tmp_path):
    src = _write(tmp_path)
    m = surgeon.load(src)
    data = tmp_path / "m.onnx.data"
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(data.read_bytes()[::-1])
    os.replace(replacement, data)
    x = np.zeros((2, N), np.float32)
    with pytest.raises(ModelLoadError, match="replaced or changed since the model was loaded"):
        surgeon.run(m, {"x": x})
    with pytest.raises(ModelLoadError, match="replaced or changed"):
        surgeon.save(m, tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx").exists()


def test_external_constants_read_from_the_model_folder_not_the_current_one(tmp_path, monkeypatch):
    src = _write(tmp_path / "models")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "m.onnx.data").write_bytes(b"\xff" * (4 * W0.nbytes))
    monkeypatch.chdir(decoy)
    m = surgeon.load(src)
    graph = m.to_graph()
    np.testing.assert_array_equal(graph.tensors()["w0"].values, W0)
    w1 = next(t for t in m.proto.graph.initializer if t.name == "w1")
    np.testing.assert_array_equal(m.tensor_array(w1), W1)
    folded = surgeon.fold(m)
    assert folded.passed, folded.report.summary()


def test_a_model_loaded_by_a_relative_path_still_reads_its_folder_after_a_chdir(
    tmp_path, monkeypatch
):
    """The data folder is made absolute at load: a later chdir into a folder that holds
    a file of the same name must not change which bytes the references point at."""
    _write(tmp_path / "models")
    decoy = _write(tmp_path / "decoy")
    (decoy.parent / "m.onnx.data").write_bytes(b"\x00" * (4 * W0.nbytes))
    monkeypatch.chdir(tmp_path / "models")
    m = surgeon.load("m.onnx")
    monkeypatch.chdir(decoy.parent)
    x = RNG.standard_normal((2, N)).astype(np.float32)
    from surgeon.runner import Session

    np.testing.assert_allclose(Session(m).run({"x": x})["y"], _reference(x), atol=1e-5)


def test_references_built_in_memory_are_checked_before_a_run(tmp_path):
    src = _write(tmp_path / "models")
    m = surgeon.load(src)
    proto = onnx.ModelProto()
    proto.CopyFrom(m.proto)
    w0 = next(t for t in proto.graph.initializer if t.name == "w0")
    for e in w0.external_data:
        if e.key == "location":
            e.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(b"\0" * W0.nbytes)
    with pytest.raises(UnsafePathError, match="climbs out"):
        surgeon.run(m.with_proto(proto), {"x": np.zeros((2, N), np.float32)})
    with pytest.raises(ModelLoadError, match="no folder to read it from"):
        surgeon.run(Model(m.proto), {"x": np.zeros((2, N), np.float32)})


def test_merge_of_models_in_two_folders(tmp_path):
    first = surgeon.load(_write(tmp_path / "a"))
    second = surgeon.load(_write(tmp_path / "b"))
    merged = surgeon.merge(first, second, {"y": "x"})
    assert merged.passed, merged.report.summary()
    # One data folder: the first's weights stay on disk, the second's came in.
    assert merged.model.data_dir == tmp_path / "a"
    assert len(_external_names(merged.model.proto)) == 2
    out = surgeon.save(merged.model, tmp_path / "merged.onnx", external_data=True)
    assert surgeon.verify(surgeon.load(out), merged.model, tolerance=EXACT).passed


def test_a_single_file_past_protobufs_limit_is_refused_before_writing(tmp_path, monkeypatch):
    import surgeon.saving
    from surgeon.errors import OutputPathError

    monkeypatch.setattr(surgeon.saving, "SINGLE_FILE_LIMIT", 2 * W0.nbytes)
    m = surgeon.load(_write(tmp_path / "in"))
    with pytest.raises(OutputPathError, match="past protobuf's 2 GB limit"):
        surgeon.save(m, tmp_path / "one.onnx", external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no file, no temp file
    result = run_cli(
        "rename",
        tmp_path / "in" / "m.onnx",
        "--map",
        "y=z",
        "-o",
        tmp_path / "z.onnx",
        "--external-data",
        "never",
    )
    assert result.status == 2 and "Save with external data" in result.stderr
    assert not (tmp_path / "z.onnx").exists()


def test_blame_maps_the_weights_too(tmp_path, spy):
    m = surgeon.load(_write(tmp_path))
    result = surgeon.blame(m)
    assert result is not None
    assert spy == {"read": 0, "copy": 0}


def test_an_external_length_that_does_not_fit_the_shape_is_refused_at_load(tmp_path):
    src = _write(tmp_path)
    proto = onnx.load(str(src), load_external_data=False)
    w0 = next(t for t in proto.graph.initializer if t.name == "w0")
    for e in w0.external_data:
        if e.key == "length":
            e.value = str(W0.nbytes + 4)
    onnx.save_model(proto, str(src))
    result = run_cli("inspect", src)
    assert result.status == 2 and f"needs {W0.nbytes}" in result.stderr
    with pytest.raises(ModelLoadError) as caught:
        surgeon.load(src)
    assert any(
        f"initializer `w0` holds {W0.nbytes + 4} bytes in its external data" in p
        for p in caught.value.problems
    )
