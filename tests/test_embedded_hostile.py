"""Hostile model files against ``load(path, weights_on_disk=True)`` (surgeon.embedded).

The walk over the file's wire bytes is advisory: whatever the file holds (cut short,
flipped bytes, crafted tensors, a graph field twice, odd names, symlinks), loading it with
the weights left on disk gives the same model, values included, or the same
ModelLoadError, as parsing it whole. A file changed after loading is refused, never read
as other values; a saved copy stands alone; debug reports the same either way.

The threshold is lowered to 65 bytes: the 4 x 8 float32 weight `w` (128 bytes) goes on
disk, the 8-float bias `b` (32 bytes) stays in memory. Among them, the bugs a review
found: a file name that is not UTF-8, a symlink re-pointed after loading, a relative path
and a later chdir, and a file of millions of tiny fields.
"""

from __future__ import annotations

import os
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

import surgeon
import surgeon.embedded
from surgeon.errors import ModelLoadError
from surgeon.protos import encode_varint
from surgeon.runner import Session

RNG = np.random.default_rng(11)
W = RNG.standard_normal((4, 8)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)
X = RNG.standard_normal((2, 4)).astype(np.float32)


@pytest.fixture(autouse=True)
def _low_threshold(monkeypatch):
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 65)


def _proto(w=W) -> onnx.ModelProto:
    """y = x @ w + b."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save(proto, path):
    onnx.save(proto, str(path))
    return path


# ---------------------------------------------------------------- wire-level crafting
def _ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    """A varint field (negative values as int64 two's complement)."""
    return encode_varint(number << 3) + encode_varint(value % 2**64)


def _tensor(name=b"w", dims=(4, 8), data_type=1, raw=W.tobytes(), before=b"", after=b""):
    """TensorProto bytes: dims (1), data_type (2), name (8), raw_data (9)."""
    out = before + b"".join(_int(1, d) for d in dims) + _int(2, data_type)
    out += _ld(8, name) if name is not None else b""
    return out + (_ld(9, raw) if raw is not None else b"") + after


_BIAS = numpy_helper.from_array(B, "b").SerializeToString()


def _file(tensors, *, split=False, tail=b"") -> bytes:
    """The model's file with these initializers; ``split``: in a second graph field
    (protobuf merges the two)."""
    head = _proto()
    graph = onnx.GraphProto()
    graph.CopyFrom(head.graph)
    head.ClearField("graph")
    del graph.initializer[:]
    inits = b"".join(_ld(5, t) for t in tensors)
    body = (
        _ld(7, graph.SerializeToString()) + _ld(7, inits)
        if split
        else _ld(7, graph.SerializeToString() + inits)
    )
    return head.SerializeToString() + body + tail


# ---------------------------------------------------------------- comparing outcomes
def _inlined(m) -> onnx.ModelProto:
    """A copy of ``m.proto``, tensors that point into its own file read back from it by
    a plain file read (not surgeon's reader)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(m.proto)
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        fields = {e.key: e.value for e in t.external_data}
        target = m.data_dir / fields["location"]
        assert os.path.samefile(target, m.path)  # the model's own file, no other
        with open(target, "rb") as fh:
            fh.seek(int(fields["offset"]))
            t.raw_data = fh.read(int(fields["length"]))
        del t.external_data[:]
        t.ClearField("data_location")
    return proto


def _outcome(path, **kwargs):
    try:
        return "ok", _inlined(surgeon.load(path, **kwargs))
    except ModelLoadError as e:
        return "error", str(e)


def _assert_same(path):
    """Loading ``path`` with the weights on disk gives what parsing it whole gives."""
    plain = _outcome(path)
    assert _outcome(path, weights_on_disk=True) == plain
    return plain[0]


def _on_disk(m) -> set[str]:
    return {t.name for t in m.proto.graph.initializer if t.data_location == TensorProto.EXTERNAL}


def _reference(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _assert_values(m, reference):
    assert {t.name for t in m.proto.graph.initializer} == set(reference)
    for t in m.proto.graph.initializer:
        np.testing.assert_array_equal(m.tensor_array(t), reference[t.name])


def _run(m):
    return Session(m).run({"x": X})["y"]


# ---------------------------------------------------------------- tests
def test_large_weights_go_on_disk_with_the_same_values(tmp_path):
    path = _save(_proto(), tmp_path / "m.onnx")
    m = surgeon.load(path, weights_on_disk=True)
    assert _on_disk(m) == {"w"}  # the bias is under the threshold
    assert str(path.resolve()) in m.external_stamps  # the file counts as a weights file
    _assert_values(m, _reference(path))
    np.testing.assert_allclose(_run(m), X @ W + B, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_run(m), _run(surgeon.load(path)))


@pytest.mark.parametrize("split", [False, True], ids=["one-graph", "graph-twice"])
def test_every_cut_point_gives_the_same_outcome(tmp_path, split):
    data = _file([_tensor(), _BIAS], split=split)
    path = tmp_path / "cut.onnx"
    seen = set()
    for n in range(1, len(data) + 1):
        path.write_bytes(data[:n])
        seen.add(_assert_same(path))
    assert seen == {"ok", "error"}  # some cuts land on a field boundary


def test_every_flipped_byte_gives_the_same_outcome(tmp_path):
    data = _file([_tensor(), _BIAS])
    path = tmp_path / "flip.onnx"
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= mask
            path.write_bytes(damaged)
            _assert_same(path)


_GROUP = encode_varint(50 << 3 | 3) + encode_varint(50 << 3 | 4)
_METADATA = _ld(16, _ld(1, b"k") + _ld(2, b"v"))
# name -> (tensor bytes, the initializers expected on disk; None: the file is refused)
CASES = {
    "plain": (_tensor(), {"w"}),
    "packed dims": (_tensor(dims=(), before=_ld(1, encode_varint(4) + encode_varint(8))), {"w"}),
    "raw_data first": (_tensor(raw=None, before=_ld(9, W.tobytes())), {"w"}),
    "doc and metadata": (_tensor(after=_ld(12, b"doc") + _METADATA), {"w"}),
    "name as a varint too": (_tensor(after=_int(8, 5)), {"w"}),
    "raw and float_data": (_tensor(after=_ld(4, np.ones(32, np.float32).tobytes())), set()),
    "raw_data twice": (_tensor(after=_ld(9, (W + 1).tobytes())), set()),
    "raw_data as a varint": (_tensor(after=_int(9, 5)), set()),
    "length disagrees": (_tensor(dims=(4, 9)), None),
    "negative dims": (_tensor(dims=(-4, -8)), set()),
    "huge dims": (_tensor(dims=(2**62, 8)), None),
    "dim past 64 bits": (
        _tensor(dims=(), before=encode_varint(1 << 3) + encode_varint(2**64 + 32)),
        set(),
    ),
    "string": (_tensor(data_type=TensorProto.STRING), set()),
    "int4": (_tensor(data_type=TensorProto.INT4, dims=(4, 64)), set()),
    "float8": (_tensor(data_type=TensorProto.FLOAT8E4M3FN, dims=(4, 32)), set()),
    "undefined type": (_tensor(data_type=0), set()),
    "unknown field": (_tensor(after=_int(99, 1)), set()),
    "group": (_tensor(after=_GROUP), set()),
    "marked external": (_tensor(after=_int(14, 1)), None),
    "data_location default": (_tensor(after=_int(14, 0)), set()),
    "external_data entry": (_tensor(after=_ld(13, _ld(1, b"location") + _ld(2, b"m.onnx"))), set()),
    "non-UTF-8 name": (_tensor(name=b"w\xff"), None),
    "non-UTF-8 doc": (_tensor(after=_ld(12, b"\xff\xfe")), None),
    "no name": (_tensor(name=None), None),
}


@pytest.mark.parametrize("split", [False, True], ids=["one-graph", "graph-twice"])
@pytest.mark.parametrize("case", list(CASES))
def test_crafted_tensor(tmp_path, case, split):
    tensor, expected = CASES[case]
    path = tmp_path / "m.onnx"
    path.write_bytes(_file([tensor, _BIAS], split=split, tail=_int(99, 7)))
    assert _assert_same(path) == ("error" if expected is None else "ok")
    if expected is not None:
        assert _on_disk(surgeon.load(path, weights_on_disk=True)) == expected


def test_files_concatenated_merge_their_graphs(tmp_path):
    w2 = np.random.default_rng(5).standard_normal(40).astype(np.float32)
    extra = onnx.ModelProto()
    extra.graph.initializer.append(numpy_helper.from_array(w2, "w2"))
    path = tmp_path / "m.onnx"
    path.write_bytes(_file([_BIAS, _tensor()]) + _ld(99, b"?") + extra.SerializeToString())
    assert _assert_same(path) == "ok"
    m = surgeon.load(path, weights_on_disk=True)
    assert _on_disk(m) == {"w", "w2"}  # indices counted across both graph fields
    _assert_values(m, {"w": W, "b": B, "w2": w2})
    path.write_bytes(_file([_tensor(), _BIAS]) * 2)  # every node twice: invalid
    assert _assert_same(path) == "error"


def test_symlink_from_another_folder_stays_embedded(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real = _save(_proto(), tmp_path / "a" / "m.onnx")
    link = tmp_path / "b" / "m.onnx"
    link.symlink_to(real)
    m = surgeon.load(link, weights_on_disk=True)
    assert _on_disk(m) == set()
    _assert_values(m, _reference(real))
    np.testing.assert_array_equal(_run(m), _run(surgeon.load(real)))


def test_symlink_in_the_same_folder(tmp_path):
    real = _save(_proto(), tmp_path / "m.onnx")
    (tmp_path / "link.onnx").symlink_to("m.onnx")
    assert _assert_same(tmp_path / "link.onnx") == "ok"
    m = surgeon.load(tmp_path / "link.onnx", weights_on_disk=True)
    _assert_values(m, _reference(real))
    np.testing.assert_array_equal(_run(m), _run(surgeon.load(real)))


def test_symlink_repointed_after_load_is_refused_or_the_same(tmp_path):
    _save(_proto(), tmp_path / "m.onnx")
    _save(_proto(W + 1), tmp_path / "other.onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to("m.onnx")
    m = surgeon.load(link, weights_on_disk=True)
    expected = _run(m)
    link.unlink()
    link.symlink_to("other.onnx")
    try:
        got = _run(m)
    except ModelLoadError:
        return
    np.testing.assert_array_equal(got, expected)


def test_relative_path_then_chdir_is_refused_or_the_same(tmp_path, monkeypatch):
    for folder, w in (("a", W), ("b", W + 1)):
        (tmp_path / folder).mkdir()
        _save(_proto(w), tmp_path / folder / "m.onnx")
    monkeypatch.chdir(tmp_path / "a")
    m = surgeon.load("m.onnx", weights_on_disk=True)
    expected = _run(m)
    monkeypatch.chdir(tmp_path / "b")
    try:
        got = _run(m)
    except ModelLoadError:
        return
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "name", ["sp ace.onnx", "ünïcødé ☃.onnx", "a\\b.onnx", "-lead.onnx", "new\nline.onnx"]
)
def test_odd_file_names(tmp_path, name):
    path = _save(_proto(), tmp_path / name)
    assert _assert_same(path) == "ok"
    m = surgeon.load(path, weights_on_disk=True)
    np.testing.assert_array_equal(_run(m), _run(surgeon.load(path)))


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system taking any bytes")
def test_non_utf8_file_name(tmp_path, cli):
    path = _save(_proto(), os.fsdecode(os.fsencode(tmp_path) + b"/m\xff.onnx"))
    assert _assert_same(path) == "ok"
    assert cli("debug", path, "--json").status == 0


@pytest.mark.parametrize("how", ["rewritten in place", "replaced", "deleted"])
def test_file_changed_after_load_is_refused(tmp_path, how):
    path = _save(_proto(), tmp_path / "m.onnx")
    m = surgeon.load(path, weights_on_disk=True)
    other = _proto(W + 1)
    other.doc_string = "longer"  # a size that differs: refused whatever the clock's grain
    if how == "rewritten in place":
        with open(path, "r+b") as fh:
            fh.write(other.SerializeToString())
    elif how == "replaced":
        os.replace(_save(other, tmp_path / "new.onnx"), path)
    else:
        path.unlink()
    expected = "deleted" if how == "deleted" else "replaced or changed"
    with pytest.raises(ModelLoadError, match=expected):
        _run(m)
    with pytest.raises(ModelLoadError, match=expected):
        m.save(tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ModelLoadError, match=expected):
        m.tensor_array(m.proto.graph.initializer[0])


@pytest.mark.parametrize("where", ["other folder", "inplace", "external data"])
def test_saved_copy_stands_alone(tmp_path, where):
    path = _save(_proto(), tmp_path / "m.onnx")
    reference = _reference(path)
    m = surgeon.load(path, weights_on_disk=True)
    assert _on_disk(m) == {"w"}
    if where == "other folder":
        (tmp_path / "out").mkdir()
        out = m.save(tmp_path / "out" / "copy.onnx")
    elif where == "inplace":
        out = m.save(path, inplace=True)
    else:
        out = m.save(tmp_path / "e.onnx", external_data=True)
    if where != "external data":
        assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
        assert not any(
            t.data_location for t in onnx.load(str(out), load_external_data=False).graph.initializer
        )
    saved = onnx.load(str(out))
    assert {t.name for t in saved.graph.initializer} == set(reference)
    for t in saved.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), reference[t.name])
    if where == "inplace":  # its references described the old file
        with pytest.raises(ModelLoadError, match="replaced"):
            _run(m)


def _report(cli, path, *args):
    res = cli("debug", path, "--tap", "all", "--json", *args)
    assert res.status in (0, 1), res.stdout + res.stderr

    def strip(o):  # timings differ from run to run
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if "second" not in k}
        return [strip(v) for v in o] if isinstance(o, list) else o

    return strip(res.json)


def _nan_model(folder):
    w = W.copy()
    w[1, 2] = np.nan
    return _save(_proto(w), folder / "nan.onnx")


def _yolo(folder, name="m.onnx", bump=0.0):
    """tiny_yolo, its first weight moved by ``bump`` (a reference that differs)."""
    proto = onnx.load(str(SAMPLES / "tiny_yolo.onnx"))
    t = proto.graph.initializer[0]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(bump), t.name))
    folder.mkdir(exist_ok=True)
    return _save(proto, folder / name)


@pytest.mark.parametrize("which", ["tiny_yolo", "nan weight", "ref beside", "ref elsewhere"])
def test_debug_report_does_not_depend_on_where_weights_are(cli, tmp_path, monkeypatch, which):
    path = _nan_model(tmp_path) if which == "nan weight" else _yolo(tmp_path)
    args = []
    if which.startswith("ref"):
        folder = tmp_path if which == "ref beside" else tmp_path / "refs"
        args = ["--ref", _yolo(folder, "r.onnx", bump=0.5)]
    assert _on_disk(surgeon.load(path, weights_on_disk=True))
    on_disk = _report(cli, path, *args)
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 2**40)
    assert not _on_disk(surgeon.load(path, weights_on_disk=True))
    assert _report(cli, path, *args) == on_disk


def test_debug_report_through_a_symlink(cli, tmp_path, monkeypatch):
    _nan_model(tmp_path)
    (tmp_path / "link.onnx").symlink_to("nan.onnx")
    on_disk = _report(cli, tmp_path / "link.onnx")
    monkeypatch.setattr(surgeon.embedded, "ON_DISK_FROM", 2**40)
    assert _report(cli, tmp_path / "link.onnx") == on_disk


def test_debug_inplace_output_with_weights_on_disk(cli, tmp_path):
    path = _yolo(tmp_path)
    reference = _reference(path)
    res = cli("debug", path, "--json", "-o", path, "--inplace", "--save", tmp_path / "t.npz")
    assert res.status == 0, res.stderr
    saved = onnx.load(str(path))
    assert not any(t.data_location for t in saved.graph.initializer)
    for t in saved.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), reference[t.name])


def test_many_small_fields_cost_about_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    data = _file([_tensor(), _BIAS], tail=_ld(7, _int(99, 0) * 100_000))
    path.write_bytes(data)
    tracemalloc.start()
    try:
        surgeon.load(path, weights_on_disk=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(data)
