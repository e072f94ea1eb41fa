"""Loading, validating and atomically saving models (external data included)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, write

import surgeon
from surgeon.compare import EXACT
from surgeon.errors import ModelLoadError, OutputPathError, UnsafePathError
from surgeon.loading import load
from surgeon.model import Model
from surgeon.saving import save
from surgeon.verification import verify

SMALL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (y) {
    y = Relu(x)
}"""


def _with_external(tmp_path, location: str) -> os.PathLike:
    """A model whose initializer points at ``location``."""
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 4] x) => (y) { y = Add(x, w) }""")
    w = onnx.numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    w.external_data.add(key="offset", value="0")
    w.external_data.add(key="length", value="32")
    m.graph.initializer.append(w)
    return write(m, tmp_path / "m.onnx")


def test_load_sample_models():
    for name in ("two_conv.onnx", "tiny_yolo.onnx", "if_model.onnx", "ext_weights.onnx"):
        m = load(SAMPLES / name)
        assert m.proto.graph.node


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "nope.onnx")


def test_missing_file_suggests_sibling(tmp_path):
    write(parse(SMALL), tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError) as e:
        load(tmp_path / "modle.onnx")
    assert "model.onnx" in str(e.value)


def test_not_a_protobuf(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_text("this is not a model at all\n" * 20)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model|holds no ONNX graph"):
        load(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load(p)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, fraction):
    data = (SAMPLES / "tiny_yolo.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError):
        load(p)


def test_missing_external_data_file(tmp_path):
    p = _with_external(tmp_path, "weights.bin")
    with pytest.raises(ModelLoadError, match="weights.bin` is missing"):
        load(p)


def test_external_data_ok(tmp_path):
    p = _with_external(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(np.ones((2, 4), np.float32).tobytes())
    m = load(p)
    assert m.external_data_files == ["weights.bin"]
    w = onnx.numpy_helper.to_array(m.proto.graph.initializer[0])
    assert np.array_equal(w, np.ones((2, 4), np.float32))


def test_external_data_too_short(tmp_path):
    p = _with_external(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="past the end"):
        load(p)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 32)
    p = _with_external(inner, location)
    with pytest.raises(UnsafePathError):
        load(p)


def test_external_data_symlink_outside_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 32)
    os.symlink(tmp_path / "outside.bin", inner / "link.bin")
    p = _with_external(inner, "link.bin")
    with pytest.raises(UnsafePathError, match="symlink"):
        load(p)


def test_structural_problems_are_collected(tmp_path):
    m = parse(SMALL)
    m.graph.node.add(op_type="Relu", input=["nowhere"], output=["z"], name="dangling")
    m.graph.output.add(name="ghost")
    with pytest.raises(ModelLoadError) as e:
        load(write(m, tmp_path / "bad.onnx"))
    text = str(e.value)
    assert "`nowhere`" in text and "`ghost`" in text


def test_cycle_is_reported(tmp_path):
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (y) { a = Add(x, b)
     b = Relu(a)
     y = Identity(b) }""")
    with pytest.raises(ModelLoadError, match="cycle"):
        load(write(m, tmp_path / "cycle.onnx"))


def test_wrong_opset(tmp_path):
    m = parse(SMALL)
    m.opset_import[0].version = 999
    with pytest.raises(ModelLoadError, match="opset 999"):
        load(write(m, tmp_path / "op.onnx"))


def test_save_refuses_to_overwrite_input(tmp_path):
    p = write(parse(SMALL), tmp_path / "m.onnx")
    before = p.read_bytes()
    m = load(p)
    with pytest.raises(OutputPathError, match="--inplace"):
        save(m, p)
    assert p.read_bytes() == before
    save(m, p, inplace=True)


def test_save_missing_folder(tmp_path):
    m = Model(parse(SMALL))
    with pytest.raises(OutputPathError, match="does not exist"):
        save(m, tmp_path / "no" / "such" / "m.onnx")


def test_save_is_atomic_leaves_no_temp_files(tmp_path):
    m = load(SAMPLES / "tiny_yolo.onnx")
    out = save(m, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert load(out).proto == m.proto


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    m = load(SAMPLES / "tiny_yolo.onnx")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OutputPathError, match="No space"):
        save(m, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["two_conv.onnx", "tiny_yolo.onnx", "if_model.onnx", "ext_weights.onnx"]
)
def test_round_trip_is_bit_identical(tmp_path, name):
    original = load(SAMPLES / name)
    saved = load(save(original, tmp_path / name))
    report = verify(saved, original, tolerance=EXACT)
    assert report and report.tolerance.exact
    assert saved.proto.graph == original.proto.graph


def test_external_data_round_trip(tmp_path):
    original = load(SAMPLES / "ext_weights.onnx")
    out = save(original, tmp_path / "copy.onnx", external_data=True)
    assert (tmp_path / "copy.onnx.data").exists()
    # the in-memory model is untouched by the external write
    assert all(
        t.data_location == onnx.TensorProto.DEFAULT for t in original.proto.graph.initializer
    )
    again = load(out)
    assert again.external_data_files == ["copy.onnx.data"]
    assert verify(again, original, tolerance=EXACT)
    # and through the graph editor too
    edited = Model.from_graph(original.to_graph(), base=original)
    assert verify(edited, original, tolerance=EXACT)


def test_from_graph_keeps_metadata_and_does_not_touch_input():
    m = load(SAMPLES / "two_conv.onnx")
    before = m.proto.SerializeToString()
    g = m.to_graph()
    g.nodes[0].name = "renamed"
    edited = Model.from_graph(g, base=m).add_provenance("test", {"x": 1})
    assert m.proto.SerializeToString() == before
    assert edited.proto.producer_name == m.proto.producer_name
    assert edited.provenance[-1]["edit"] == "test"
    assert m.provenance == []


def test_public_api_is_lazy():
    assert surgeon.load.__wrapped__ is load
    with pytest.raises(AttributeError):
        surgeon.no_such_thing  # noqa: B018
