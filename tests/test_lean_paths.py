"""The fast paths of a debug run's fixed costs give what the plain ways give.

Each test pins one shortcut against the straightforward computation it replaced: the
tensor walks (a per-type field plan, one pass per graph), byte counts that read
``raw_data`` once or not at all, feeds drawn chunk by chunk, NaN/Inf counted without a
float64 copy, and external references resolved once per file within one check (every
tensor still checked, nothing kept between checks), and the UTF-8 check of every text
field at load (a field plan per message class). The NaN-source walk skipped when no
output holds NaN is pinned by the verdict tests (test_corpus, test_review_numbers).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon
from surgeon import external, protos
from surgeon.debugging.nonfinite import _count_nonfinite
from surgeon.errors import ModelLoadError, UnsafePathError
from surgeon.feeds import _NORMAL_CHUNK, _random_values, _standard_normal
from surgeon.graph_facts import INFERENCE_WEIGHT_LIMIT, inference_skeleton
from surgeon.loading import _has_non_utf8, non_utf8_fields
from surgeon.model import Model, TensorInfo
from surgeon.weights import session_folder


def _t(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _nested_model() -> onnx.ModelProto:
    """Tensors in every place: initializers, a sparse initializer, Constant values,
    a tensor-list attribute, If bodies two deep, a local function holding a body."""
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=_t("cv", [1.0, 2.0])),
            helper.make_node("Constant", [], ["d"], value=_t("dv", [3.0])),
        ],
        "body",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
        [_t("body_init", [5.0])],
    )
    outer_body = helper.make_graph(
        [helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body)],
        "outer_body",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
        [_t("outer_init", [7.0])],
    )
    sparse = helper.make_sparse_tensor(
        _t("sparse_values", [1.0]), _t("sparse_indices", [0], np.int64), [3]
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["y"], then_branch=outer_body, else_branch=body),
            helper.make_node(
                "Custom", ["y"], ["w"], domain="x", ts=[_t("a1", [1.0]), _t("a2", [2.0])], g=body
            ),
        ],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        [_t("init", [0.0])],
        sparse_initializer=[sparse],
    )
    function = onnx.FunctionProto(name="f", domain="x")
    function.node.extend(
        [
            helper.make_node("Constant", [], ["q"], value=_t("fconst", [9.0])),
            helper.make_node("If", ["cond"], ["r"], then_branch=body, else_branch=outer_body),
        ]
    )
    return helper.make_model(graph, functions=[function])


def _graphs(graph):
    """Pre-order: a graph, then each body in node and attribute order."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _reference_iter_tensors(proto):
    """iter_tensors as it was written before the one-pass walk: graphs first, then
    each graph's tensors."""
    graphs = list(_graphs(proto.graph))
    for f in proto.functions:
        fake = onnx.GraphProto()
        fake.node.extend(f.node)
        graphs.extend(_graphs(fake))
    for g in graphs:
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def test_iter_tensors_keeps_its_order():
    proto = _nested_model()
    names = [t.name for t in protos.iter_tensors(proto)]
    assert names == [t.name for t in _reference_iter_tensors(proto)]
    assert names[:6] == ["init", "sparse_values", "sparse_indices", "a1", "a2", "body_init"]


def test_iter_all_tensors_finds_every_place_in_schema_order():
    proto = _nested_model()
    found = [t.name for t in protos.iter_all_tensors(proto)]
    # Everything iter_tensors finds, plus nothing it misses: same multiset.
    assert sorted(found) == sorted(t.name for t in protos.iter_tensors(proto))
    # A tensor in a place iter_tensors does not look (an attribute claiming another
    # type, a training graph) is found too.
    proto.graph.node[1].attribute[0].t.CopyFrom(_t("hidden", [1.0]))
    proto.training_info.add().initialization.initializer.append(_t("training", [1.0]))
    found = [t.name for t in protos.iter_all_tensors(proto)]
    assert "hidden" in found and "training" in found


def test_external_tensor_added_after_a_walk_is_seen():
    # The walk caches a plan per message type, never what it found: a reference made
    # after a first walk, deep in a body of a function, is found by the next one.
    proto = _nested_model()
    assert external.external_tensors(proto) == []
    branches = {a.name: a.g for a in proto.functions[0].node[1].attribute}
    deep = branches["else_branch"].node[0].attribute[0].g  # the If inside outer_body
    t = deep.node[0].attribute[0].t
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.bin")
    assert [x.name for x in external.external_tensors(proto)] == ["cv"]


def test_tensor_nbytes_raw_typed_empty_and_external():
    raw = _t("raw", np.zeros((3, 5)))
    assert protos.tensor_nbytes(raw) == 60
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    assert not typed.HasField("raw_data") and protos.tensor_nbytes(typed) == 16
    empty = onnx.TensorProto(name="empty", data_type=TensorProto.FLOAT, dims=[2], raw_data=b"")
    assert empty.HasField("raw_data") and protos.tensor_nbytes(empty) == 8  # as before
    ext = onnx.TensorProto(name="ext", data_type=TensorProto.FLOAT, dims=[10])
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="length", value="40")
    assert protos.tensor_nbytes(ext) == 40


def test_declared_nbytes_reads_shape_and_type_only():
    assert protos.declared_nbytes(_t("a", np.zeros((2, 3)))) == 24
    assert protos.declared_nbytes(_t("s", 1.0, np.float64)) == 8
    assert protos.declared_nbytes(helper.make_tensor("x", TensorProto.STRING, [1], [b"a"])) is None
    int4 = onnx.TensorProto(name="q", data_type=TensorProto.INT4, dims=[4])
    assert protos.declared_nbytes(int4) is None


def test_skeleton_keeps_small_initializers_only_whatever_the_dims_claim():
    small = _t("shape", [1, 2, 3], np.int64)
    big = _t("big", np.zeros(1024))
    lying = _t("lying", [0.0])  # dims say 4 bytes, raw_data holds 8 KiB
    lying.raw_data = bytes(8192)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [small, big, lying],
    )
    skeleton = inference_skeleton(Model(helper.make_model(graph)))
    assert [t.name for t in skeleton.graph.initializer] == ["shape"]
    assert all(len(t.raw_data) <= INFERENCE_WEIGHT_LIMIT for t in skeleton.graph.initializer)
    assert [v.name for v in skeleton.graph.input] == ["x", "big", "lying"]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize(
    "shape", [(), (0,), (1,), (3, 5), (_NORMAL_CHUNK + 7,), (2, _NORMAL_CHUNK), (1, 3, 64, 64)]
)
def test_chunked_normal_draw_equals_one_float64_draw(shape, dtype):
    seed = [3, zlib.crc32(b"images")]
    expected_rng = np.random.default_rng(seed)
    expected = expected_rng.standard_normal(shape).astype(dtype)
    rng = np.random.default_rng(seed)
    got = _standard_normal(rng, shape, np.dtype(dtype))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # The generator ends in the same state: what is drawn next is the same too.
    assert rng.bit_generator.state == expected_rng.bit_generator.state


def test_random_float_feed_is_the_float64_draw_rounded():
    info = TensorInfo("images", "float32", (1, 3, 640, 640))
    got = _random_values(info, (1, 3, 640, 640), 0)
    rng = np.random.default_rng([0, zlib.crc32(b"images")])
    np.testing.assert_array_equal(got, rng.standard_normal((1, 3, 640, 640)).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_nonfinite_counts_equal_the_float64_counts(dtype):
    import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy

    values = np.array([1.0, np.nan, -np.inf, np.inf, 0.0, np.nan, 3.0, np.nan])
    x = values.astype(dtype)
    assert _count_nonfinite(x) == (3, 2)
    assert _count_nonfinite(np.ones(5, dtype)) == (0, 0)
    # Near the top of each type's range: the counts do not depend on the cast.
    big = np.full(10, np.finfo(dtype).max if dtype != "bfloat16" else 3e38, np.float64)
    big = big.astype(dtype)
    wide = big.astype(np.float64)
    assert _count_nonfinite(big) == (int(np.isnan(wide).sum()), int(np.isinf(wide).sum()))


# ---------------------------------------------------------------- external references
def _external_model(folder, names=("w0", "w1", "w2")):
    """Three 64 KiB weights in one file (kept on disk by load), summed by Adds."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = [np.full((128, 128), i + 1, np.float32) for i in range(len(names))]
    nodes, last = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Add", [last, name], [f"s{i}"]))
        last = f"s{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 128])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [128, 128])],
        [numpy_helper.from_array(w, n) for w, n in zip(weights, names, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(
        model,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    return folder / "m.onnx"


def _set_location(proto, name, location):
    t = next(t for t in proto.graph.initializer if t.name == name)
    for e in t.external_data:
        if e.key == "location":
            e.value = location


def test_one_check_resolves_each_file_once(tmp_path, monkeypatch):

    m = surgeon.load(_external_model(tmp_path))
    resolutions = []
    resolve = type(tmp_path).resolve

    def counting(self, *a, **k):
        resolutions.append(self)
        return resolve(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "resolve", counting)
    assert session_folder(m) == str(tmp_path)
    # The folder and the file, once each for three tensors (it was twice per tensor).
    assert len(resolutions) == 2
    resolutions.clear()
    session_folder(m)  # a new check resolves again: nothing is kept between checks
    assert len(resolutions) == 2


def test_every_tensor_is_checked_though_its_file_was_resolved(tmp_path):

    m = surgeon.load(_external_model(tmp_path / "models"))
    (tmp_path / "m.data").write_bytes((tmp_path / "models" / "m.data").read_bytes())
    # The same file, reached by another spelling that climbs out: refused.
    proto = onnx.ModelProto()
    proto.CopyFrom(m.proto)
    _set_location(proto, "w2", "../m.data")
    with pytest.raises(UnsafePathError, match="climbs out"):
        session_folder(m.with_proto(proto))
    # A link in the folder to a file outside it, after two tensors in the good file.
    (tmp_path / "models" / "link.data").symlink_to(tmp_path / "m.data")
    proto.CopyFrom(m.proto)
    _set_location(proto, "w2", "link.data")
    with pytest.raises(UnsafePathError, match="outside the model's folder"):
        session_folder(m.with_proto(proto))
    # A range past the end of the (already opened) file, on the last tensor.
    proto.CopyFrom(m.proto)
    w2 = next(t for t in proto.graph.initializer if t.name == "w2")
    for e in w2.external_data:
        if e.key == "offset":
            e.value = str(10**9)
    with pytest.raises(ModelLoadError, match="lies past the end"):
        session_folder(m.with_proto(proto))


def test_a_file_swapped_for_a_link_between_checks_is_refused(tmp_path):

    src = _external_model(tmp_path / "models")
    m = surgeon.load(src)
    assert session_folder(m) is not None
    outside = tmp_path / "elsewhere.data"
    os.replace(tmp_path / "models" / "m.data", outside)
    (tmp_path / "models" / "m.data").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the model's folder"):
        session_folder(m)


# ---------------------------------------------------------------- text fields at load
def _with_bad_text(placeholder: bytes) -> onnx.ModelProto:
    """A model whose text ``placeholder`` (4 letters) is replaced by bytes that are not
    UTF-8, wherever it is."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="NODE", tag=[b"\xff\xfe"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["DIMS"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    graph.node[0].input.append("INPT")
    data = helper.make_model(graph).SerializeToString()
    assert data.count(placeholder) == 1
    proto = onnx.ModelProto()
    proto.ParseFromString(data.replace(placeholder, b"\xff\xfe\xfd\xfc"))
    return proto


@pytest.mark.parametrize("placeholder", [b"NODE", b"INPT", b"DIMS"])
def test_text_that_is_not_utf8_is_found_anywhere(placeholder):
    proto = _with_bad_text(placeholder)
    assert _has_non_utf8(proto)
    assert len(non_utf8_fields(proto)) == 1


def test_bytes_fields_are_not_text():
    clean = _with_bad_text(b"NODE")
    clean.graph.node[0].name = "node"
    # The attribute's `strings` are bytes by the schema (they may be anything), so
    # they are not a damaged text field.
    assert clean.graph.node[0].attribute[0].strings == [b"\xff\xfe"]
    assert not _has_non_utf8(clean)
