"""Feeds: --shape parsing, dynamic-dim resolution, seeded random values and .npz feeds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx import TensorProto, helper

from surgeon.errors import SurgeonError, UsageError
from surgeon.feeds import (
    DEFAULT_BATCH,
    DEFAULT_DIM,
    FeedOptions,
    describe_feeds,
    make_feeds,
    parse_shape_args,
    resolve_shapes,
)
from surgeon.model import Model

# Two inputs share `batch`; `mask` has its own dynamic `K`; `ids` is fully static.
MODEL = Model(
    parse("""<ir_version: 8, opset_import: ["" : 17]>
    shapes (float[batch, 3, H, W] images, float[batch, K] mask, int64[5] ids) => (y) {
        y = Identity(images)
    }""")
)


# ---------------------------------------------------------------- parse_shape_args
def test_parse_both_forms():
    shapes, dims = parse_shape_args(["images:1x3x640x640", "H=480", " W = 320"])
    assert shapes == {"images": (1, 3, 640, 640)}
    assert dims == {"H": 480, "W": 320}


def test_parse_brackets_commas_colons_in_names_and_scalars():
    shapes, _ = parse_shape_args(["x:[2,3]", "ns:sub:4x5", "s:"])
    assert shapes == {"x": (2, 3), "ns:sub": (4, 5), "s": ()}


@pytest.mark.parametrize(
    "arg", ["images:1xAx3", "images:-1x3", ":1x3", "images:1xx3", "=5", "H=abc", "H=-1", "images"]
)
def test_parse_errors_name_the_argument(arg):
    with pytest.raises(UsageError) as e:
        parse_shape_args([arg])
    assert f"`{arg}`" in str(e.value)  # the value; the CLI adds the option's name
    assert e.value.exit_code == 2


# ---------------------------------------------------------------- resolve_shapes
def test_defaults_batch_one_other_dynamic_dims_64():
    shapes = resolve_shapes(MODEL)
    assert shapes == {
        "images": (DEFAULT_BATCH, 3, DEFAULT_DIM, DEFAULT_DIM),
        "mask": (DEFAULT_BATCH, DEFAULT_DIM),
        "ids": (5,),
    }
    assert (DEFAULT_BATCH, DEFAULT_DIM) == (1, 64)


def test_unnamed_dynamic_dims_get_defaults_too():
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [vi],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = Model(helper.make_model(graph))
    assert resolve_shapes(model) == {"x": (1, 3, 64)}


def test_explicit_shape_fixes_shared_symbols_for_other_inputs():
    shapes = resolve_shapes(MODEL, FeedOptions(shapes={"images": (4, 3, 32, 48)}))
    assert shapes["images"] == (4, 3, 32, 48)
    assert shapes["mask"] == (4, 64)  # shares `batch` with images


def test_named_dims():
    shapes = resolve_shapes(MODEL, FeedOptions(dims={"batch": 2, "H": 10, "K": 7}))
    assert shapes == {"images": (2, 3, 10, 64), "mask": (2, 7), "ids": (5,)}


def test_explicit_shape_contradicting_a_static_dim():
    with pytest.raises(UsageError) as e:
        resolve_shapes(MODEL, FeedOptions(shapes={"images": (1, 4, 8, 8)}))
    assert "fixes it at 3" in str(e.value) and "`images` has dim 1 = 4" in str(e.value)


def test_explicit_shape_of_wrong_rank():
    with pytest.raises(UsageError, match="rank 3"):
        resolve_shapes(MODEL, FeedOptions(shapes={"images": (1, 3, 8)}))


def test_unknown_input_name_with_suggestion():
    with pytest.raises(UsageError) as e:
        resolve_shapes(MODEL, FeedOptions(shapes={"image": (1, 3, 8, 8)}))
    assert "`image`" in str(e.value) and "did you mean `images`" in str(e.value)


def test_unknown_dim_name_with_suggestion():
    with pytest.raises(UsageError) as e:
        resolve_shapes(MODEL, FeedOptions(dims={"h": 8}))
    assert "the dim `h`" in str(e.value) and "did you mean" in str(e.value)
    assert "`H`" in str(e.value)
    with pytest.raises(UsageError, match="its dynamic dims: `batch`, `H`, `W`, `K`"):
        resolve_shapes(MODEL, FeedOptions(dims={"zzz": 8}))


def test_contradicting_values_for_one_symbol():
    with pytest.raises(UsageError) as e:
        resolve_shapes(MODEL, FeedOptions(shapes={"images": (2, 3, 8, 8), "mask": (3, 5)}))
    assert "need one value" in str(e.value)
    with pytest.raises(UsageError, match="batch=1"):
        resolve_shapes(MODEL, FeedOptions(shapes={"images": (2, 3, 8, 8)}, dims={"batch": 1}))


def test_all_problems_reported_at_once():
    with pytest.raises(UsageError) as e:
        resolve_shapes(MODEL, FeedOptions(shapes={"imagez": (1,), "mask": (1, 2, 3)}))
    assert len(e.value.problems) == 2


def test_unknown_rank_needs_an_explicit_shape():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = Model(helper.make_model(graph))
    with pytest.raises(UsageError, match="unknown rank; give its shape, e.g. x:"):
        resolve_shapes(model)
    assert resolve_shapes(model, FeedOptions(shapes={"x": (2, 2)})) == {"x": (2, 2)}


# ---------------------------------------------------------------- make_feeds
DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"]
ONNX_TYPE = {
    "float16": "float16",
    "float32": "float",
    "float64": "double",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "bool": "bool",
}


def _typed_model() -> Model:
    args = ", ".join(f"{ONNX_TYPE[d]}[64, 64] in_{d}" for d in DTYPES)
    return Model(
        parse(f"""<ir_version: 8, opset_import: ["" : 17]>
        typed ({args}) => (y) {{ y = Identity(in_float32) }}""")
    )


def test_dtypes_and_value_ranges():
    feeds = make_feeds(_typed_model())
    for d in DTYPES:
        v = feeds[f"in_{d}"]
        assert v.dtype == np.dtype(d) and v.shape == (64, 64), d
    for d in ("float16", "float32", "float64"):
        v = feeds[f"in_{d}"].astype(np.float64)
        assert abs(v.mean()) < 0.1 and 0.9 < v.std() < 1.1, d  # standard normal
    for d in ("int32", "int64"):
        v = feeds[f"in_{d}"]
        assert v.min() == 0 and v.max() == 7, d  # valid as small indices
    assert feeds["in_uint8"].min() < 5 and feeds["in_uint8"].max() > 250
    assert 0.4 < feeds["in_bool"].mean() < 0.6


def test_same_seed_same_values_other_seed_other_values():
    model = _typed_model()
    a, b = make_feeds(model, FeedOptions(seed=3)), make_feeds(model, FeedOptions(seed=3))
    c = make_feeds(model, FeedOptions(seed=4))
    for name in a:
        assert np.array_equal(a[name], b[name]), name
        assert not np.array_equal(a[name], c[name]), name


def test_each_input_has_its_own_stream():
    one = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (y) { y = Identity(x) }""")
    )
    two = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] a, float[4] x) => (y) { y = Add(a, x) }""")
    )
    assert np.array_equal(make_feeds(one)["x"], make_feeds(two)["x"])


def test_negative_seed_is_a_user_error():
    with pytest.raises(UsageError, match="the seed -1"):
        make_feeds(MODEL, FeedOptions(seed=-1))


def test_describe_feeds():
    feeds = make_feeds(MODEL, FeedOptions(shapes={"images": (2, 3, 8, 8)}))
    assert describe_feeds(feeds) == {
        "images": {"shape": [2, 3, 8, 8], "dtype": "float32"},
        "mask": {"shape": [2, 64], "dtype": "float32"},
        "ids": {"shape": [5], "dtype": "int64"},
    }


# ---------------------------------------------------------------- .npz feeds
def _npz(tmp_path, **arrays) -> str:
    path = tmp_path / "feeds.npz"
    np.savez(path, **arrays)
    return str(path)


def test_partial_npz_rest_random_and_shared_dims_follow_the_file(tmp_path):
    images = np.full((3, 3, 8, 8), 0.25, np.float32)
    feeds = make_feeds(MODEL, FeedOptions(npz=_npz(tmp_path, images=images)))
    assert np.array_equal(feeds["images"], images)
    assert feeds["mask"].shape == (3, 64)  # `batch` = 3, taken from the file
    assert feeds["ids"].shape == (5,)


@pytest.mark.parametrize(
    "shapes, dims, message",
    [
        # the file's own input at another shape: the file's value would be used
        ({"images": [3, 3, 16, 16]}, {}, r"`images` \(3x3x16x16\) is not the shape of its value"),
        # a dim the file's value fixes, set otherwise
        ({}, {"batch": 2}, r"batch=2 sets batch = 2, but the value of `images`"),
        ({}, {"H": 4}, r"H=4 sets H = 4, but the value of `images`"),
        # through another input's shape: inputs sharing `batch` need one value
        ({"mask": [2, 7]}, {}, r"the shape of `mask` sets batch = 2, but the value of `images`"),
    ],
)
def test_a_shape_that_contradicts_the_feeds_file_is_refused(tmp_path, shapes, dims, message):
    # It used to lose silently: the file's value ran, not the shape asked for.
    images = np.zeros((3, 3, 8, 8), np.float32)
    options = FeedOptions(npz=_npz(tmp_path, images=images), shapes=shapes, dims=dims)
    with pytest.raises(UsageError, match=message):
        make_feeds(MODEL, options)


def test_a_shape_that_agrees_with_the_feeds_file_is_taken(tmp_path):
    images = np.zeros((3, 3, 8, 8), np.float32)
    options = FeedOptions(
        npz=_npz(tmp_path, images=images),
        shapes={"images": [3, 3, 8, 8], "mask": [3, 5]},
        dims={"H": 8},
    )
    feeds = make_feeds(MODEL, options)
    assert feeds["images"].shape == (3, 3, 8, 8) and feeds["mask"].shape == (3, 5)


def test_cli_refuses_a_shape_the_feeds_file_contradicts(tmp_path, cli):
    from conftest import SAMPLES

    np.savez(tmp_path / "f.npz", **{"in": np.zeros((1, 3, 16, 16), np.float32)})
    for spec in ("in:1x3x32x32", "H=32"):
        res = cli(
            "debug", SAMPLES / "two_conv.onnx", "--feeds", tmp_path / "f.npz", "--shape", spec
        )
        assert res.status == 2 and "feeds file" in res.stderr and "Traceback" not in res.stderr
    res = cli("debug", SAMPLES / "two_conv.onnx", "--feeds", tmp_path / "f.npz", "--shape", "H=16")
    assert res.status == 0, res.stderr


def test_npz_wrong_key_with_suggestion(tmp_path):
    path = _npz(tmp_path, image=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(SurgeonError) as e:
        make_feeds(MODEL, FeedOptions(npz=path))
    assert "`image`" in str(e.value) and "did you mean `images`" in str(e.value)
    assert "feeds.npz" in str(e.value)


def test_npz_wrong_dtype(tmp_path):
    path = _npz(tmp_path, images=np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(SurgeonError, match="is float64; the model wants float32"):
        make_feeds(MODEL, FeedOptions(npz=path))


def test_npz_wrong_static_dim(tmp_path):
    path = _npz(tmp_path, images=np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(SurgeonError, match=r"has shape \[1, 4, 8, 8\]"):
        make_feeds(MODEL, FeedOptions(npz=path))


def test_npz_wrong_rank(tmp_path):
    path = _npz(tmp_path, ids=np.zeros((5, 1), np.int64))
    with pytest.raises(SurgeonError, match=r"`ids`.*has shape \[5, 1\]"):
        make_feeds(MODEL, FeedOptions(npz=path))


def test_npz_problems_are_collected(tmp_path):
    path = _npz(
        tmp_path, image=np.zeros(1, np.float32), ids=np.zeros(5, np.int32), mask=np.zeros(3)
    )
    with pytest.raises(SurgeonError) as e:
        make_feeds(MODEL, FeedOptions(npz=path))
    assert len(e.value.problems) == 4  # unknown key, ids dtype, mask dtype and rank


def test_explicit_shape_wins_over_the_npz_for_other_inputs(tmp_path):
    # The file's arrays are used as they are; their dims only fill in what --shape leaves.
    path = _npz(tmp_path, mask=np.zeros((2, 5), np.float32))
    feeds = make_feeds(MODEL, FeedOptions(npz=path, shapes={"images": (2, 3, 8, 8)}))
    assert feeds["mask"].shape == (2, 5) and feeds["images"].shape == (2, 3, 8, 8)
    feeds = make_feeds(MODEL, FeedOptions(npz=path, dims={"H": 4}))
    assert feeds["images"].shape == (2, 3, 4, 64)


def test_shape_arguments_checked_even_when_the_npz_has_every_input(tmp_path):
    path = _npz(tmp_path, x=np.zeros(4, np.float32))
    model = Model(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N] x) => (y) { y = Identity(x) }""")
    )
    assert make_feeds(model, FeedOptions(npz=path))["x"].shape == (4,)
    with pytest.raises(UsageError, match="did you mean `x`"):
        make_feeds(model, FeedOptions(npz=path, shapes={"xx": (4,)}))


def test_npz_missing_or_unreadable(tmp_path):
    with pytest.raises(SurgeonError, match="no such file"):
        make_feeds(MODEL, FeedOptions(npz=str(tmp_path / "nope.npz")))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(SurgeonError, match="not a readable .npz"):
        make_feeds(MODEL, FeedOptions(npz=str(bad)))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = _npz(tmp_path, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SurgeonError, match="not a readable .npz"):
        make_feeds(MODEL, FeedOptions(npz=path))


def test_random_values_for_unsupported_dtype_say_what_to_do():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])],
    )
    with pytest.raises(SurgeonError, match="give its values in an .npz"):
        make_feeds(Model(helper.make_model(graph)))
    assert onnx  # the model above is built with onnx.helper, not parsed
