"""Bounded resources, clear refusals: feeds over a size limit, npz files checked from their
headers, loading and per-node work linear in the model, malformed provenance."""

from __future__ import annotations

import io
import json
import math
import time
import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from surgeon.dynamic import check_dynamic
from surgeon.edits.boundary import learn_from_runs
from surgeon.edits.shapes import reshape_io
from surgeon.errors import SurgeonError, UsageError
from surgeon.feeds import FeedOptions, load_npz, make_feeds, parse_size, read_npz_index
from surgeon.inspection import describe
from surgeon.loading import load
from surgeon.model import PROVENANCE_KEY, Model
from surgeon.origin import node_origin


def _relu(shape, name="images") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", [name], ["y"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------- feed size limit
def test_declared_dims_too_large_are_refused(tmp_path, cli):
    onnx.save(_relu([100000, 100000, 100000], "x"), str(tmp_path / "m.onnx"))
    res = cli("debug", tmp_path / "m.onnx")
    assert res.status == 2, res.stderr
    text = _flat(res.stderr)
    assert "would take 3.55 PiB, more than the limit of 4 GiB" in text
    assert "`x` [100000, 100000, 100000] float32" in text
    assert "every dim is fixed by the model" in text and "raise the feed size limit" in text


BIG = 2**63 - 1  # the largest dim ONNX can hold: valid, and far beyond any feed limit
CUT = ("--inputs", "images", "--outputs", "y")


@pytest.mark.parametrize(
    "args,cause",
    [
        (("debug", "--shape", f"batch={BIG}"), f"dim 0 (batch) = {BIG}"),
        (("diff", "--shape", "images:100000000000x3x64x64"), "dim 0 (batch) = 100000000000"),
        (("extract", *CUT, "--shape", f"batch={BIG}"), f"dim 0 (batch) = {BIG}"),
        (("extract", *CUT, "--shape", f"images:{BIG}x3x64x64"), f"dim 0 (batch) = {BIG}"),
        (("check-dynamic", "--sizes", "batch=100000000"), "dim 0 (batch) = 100000000"),
        (("check-dynamic", "--sizes", f"batch=1,{BIG}"), f"dim 0 (batch) = {BIG}"),
        (
            ("reshape-io", "--dims", "images:100000000x3x64x64", "-o", "{tmp}/o.onnx"),
            "`images` 100000000x3x64x64 float32 would take at least",
        ),
        (
            ("reshape-io", "--dims", f"images:{BIG}x3x64x64", "-o", "{tmp}/o.onnx"),
            f"`images` {BIG}x3x64x64 float32 would take at least",
        ),
        (
            ("reshape-io", "--dims", "images:Bx3x64x64", "--sizes", f"B={BIG}"),
            f"dim 0 (B) = {BIG}",
        ),
    ],
)
def test_chosen_dims_too_large_are_refused(tmp_path, cli, args, cause):
    """Dims that fit an int64 but not in memory: exit 2 with the size and the dim that
    makes it, never a MemoryError (exit 3)."""
    model = tmp_path / "m.onnx"
    onnx.save(_relu(["batch", 3, 64, 64]), str(model))
    command, *rest = args
    extra = (model,) if command == "diff" else ()
    res = cli(command, model, *extra, *(a.format(tmp=tmp_path) for a in rest))
    assert res.status == 2, (res.stdout, res.stderr)
    text = _flat(res.stdout + res.stderr)
    assert "more than the limit of 4 GiB" in text and "Traceback" not in text
    assert cause in text
    # the user's --dims set the sizes: blamed on them, not on the model
    assert (
        ("sizes --dims sets" in text)
        if "--dims" in args and "--sizes" not in args
        else ("Choose smaller dims" in text)
    )
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "args,where",
    [
        (("debug", "--shape", "batch=99999999999999999999"), "--shape: the dim size `batch="),
        (("diff", "--shape", "images:99999999999999999999x3x64x64"), "--shape: the shape `images:"),
        (
            ("extract", *CUT, "--shape", "batch=99999999999999999999"),
            "--shape: the dim size `batch=",
        ),
        (
            ("extract", *CUT, "--shape", "images:99999999999999999999x3"),
            "--shape: the shape `images:",
        ),
        (
            ("check-dynamic", "--sizes", "batch=1,99999999999999999999"),
            "--sizes: the sizes `batch=",
        ),
        (
            ("reshape-io", "--dims", "images:99999999999999999999x3x64x64", "-o", "{tmp}/o.onnx"),
            "--dims: dim 99999999999999999999 in the dims `images:",
        ),
        (("reshape-io", "--dims", "images:Bx3x64x64", "--sizes", "B=2**70"), None),
        (
            ("reshape-io", "--dims", "images:Bx3x64x64", "--sizes", f"B={2**63}"),
            "--sizes: the sizes `B=",
        ),
    ],
)
def test_dims_beyond_int64_are_refused_when_read(tmp_path, cli, args, where):
    """A dim ONNX cannot hold (int64) is refused with its value before anything is made
    (reshape-io failed with exit 3 writing it into the model)."""
    model = tmp_path / "m.onnx"
    onnx.save(_relu(["batch", 3, 64, 64]), str(model))
    command, *rest = args
    extra = (model,) if command == "diff" else ()
    res = cli(command, model, *extra, *(a.format(tmp=tmp_path) for a in rest))
    assert res.status == 2, (res.stdout, res.stderr)
    text = _flat(res.stderr)
    if where is None:  # not a number at all: the ordinary parse error
        assert "--sizes: cannot read the sizes `B=2**70`" in text
    else:
        assert where in text and "is larger than any tensor dim can be" in text
        assert str(2**63 - 1) in text
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "dims", [[0, 3, 64, 64], [2**63, 3, 64, 64], "0x3x64x64", f"{2**63}x3x64x64"]
)
def test_reshape_io_refuses_static_dims_it_cannot_hold(dims):
    """0 would read back as "not static" (dynamic), 2^63 does not fit the proto: both are
    refused by the library too, naming the dim."""
    with pytest.raises(
        UsageError, match=f"dim {dims[0] if isinstance(dims, list) else dims.split('x')[0]} "
    ):
        reshape_io(Model(_relu(["batch", 3, 64, 64])), {"images": dims}, check=False)


def test_check_dynamic_refuses_sizes_beyond_int64():
    with pytest.raises(UsageError, match="below 2\\^63"):
        check_dynamic(Model(_relu(["batch", 3, 64, 64])), sizes={"batch": [1, 2**63]})


@pytest.mark.parametrize(
    "command,args",
    [
        ("extract", CUT),
        ("check-dynamic", ()),
        ("reshape-io", ("--dims", "images:Bx3x64x64")),
    ],
)
def test_every_command_takes_max_feed_size(tmp_path, cli, command, args):
    """One batch-1 input is 48 KiB (and batch 3, tried by the dynamic checks, 144 KiB)."""
    onnx.save(_relu(["batch", 3, 64, 64]), str(tmp_path / "m.onnx"))
    res = cli(command, tmp_path / "m.onnx", *args, "--max-feed-size", "40k")
    assert res.status == 2, (res.stdout, res.stderr)
    assert "more than the limit of 40 KiB" in _flat(res.stderr)
    res = cli(command, tmp_path / "m.onnx", *args, "--max-feed-size", "1M")
    assert res.status == 0, (res.stdout, res.stderr)
    res = cli(command, tmp_path / "m.onnx", *args, "--max-feed-size", "lots")
    assert res.status == 2 and "cannot read the size `lots`" in res.stderr


@pytest.mark.parametrize("command", ["check-dynamic", "reshape-io"])
def test_dynamic_checks_refuse_before_running(tmp_path, cli, command, monkeypatch):
    """Batch 1 (48 KiB) fits 100 KiB, batch 3 (144 KiB) does not: refused before any size
    runs (and before reshape-io's value comparison), naming the batch-3 inputs."""
    import surgeon.runner

    onnx.save(_relu(["batch", 3, 64, 64]), str(tmp_path / "m.onnx"))
    ran = []
    monkeypatch.setattr(surgeon.runner.Session, "run", lambda *a, **k: ran.append(a))
    args = ("--dims", "images:Bx3x64x64") if command == "reshape-io" else ()
    res = cli(command, tmp_path / "m.onnx", *args, "--max-feed-size", "100k")
    assert res.status == 2, (res.stdout, res.stderr)
    text = _flat(res.stderr)
    assert "more than the limit of 100 KiB" in text and "[3, 3, 64, 64]" in text
    assert "Choose smaller dims" in text and "the sizes tried" in text
    assert ran == []


def test_reshape_io_keeps_what_the_caller_set(tmp_path):
    """The library's reshape_io carries feed_options (limit, seed, values) into every run."""
    model = Model(_relu(["batch", 3, 64, 64]))
    with pytest.raises(UsageError, match="more than the limit of 100 KiB"):
        reshape_io(
            model, {"images": "Bx3x64x64"}, feed_options=FeedOptions(max_feed_bytes=100 * 1024)
        )
    values = np.full((2, 3, 64, 64), -1.0, np.float32)
    np.savez(tmp_path / "f.npz", images=values)
    edited = reshape_io(
        model,
        {"images": "Bx3x64x64"},
        feed_options=FeedOptions(seed=7, npz=str(tmp_path / "f.npz"), max_feed_bytes=None),
        sizes={"B": [1, 2]},
    )
    # The values came from the npz (so the comparison has no seed); the runtime check's
    # random inputs use the caller's seed.
    assert edited.passed and edited.report.seed is None
    assert edited.details["dynamic"]["seed"] == 7
    assert edited.report.feeds["images"]["shape"] == [2, 3, 64, 64]


def test_check_dynamic_takes_a_limit():
    model = Model(_relu(["batch", 3, 64, 64]))
    with pytest.raises(UsageError, match="more than the limit of 100 KiB"):
        check_dynamic(model, feed_options=FeedOptions(max_feed_bytes=100 * 1024))
    assert check_dynamic(
        model, feed_options=FeedOptions(max_feed_bytes=None), sizes={"batch": [1, 2]}
    ).passed


def test_extract_second_run_keeps_the_limit():
    """extract learns dims from a second run at larger sizes (batch 2 = 96 KiB): it keeps
    the caller's limit (it used the 4 GiB default), and is skipped when over it."""
    model = Model(_relu(["batch", 3, 64, 64]))
    learned, _ = learn_from_runs(model, ["y"], FeedOptions(max_feed_bytes=1 << 20))
    assert learned["y"].shape == ("batch", 3, 64, 64)
    learned, notes = learn_from_runs(model, ["y"], FeedOptions(max_feed_bytes=60 * 1024))
    assert learned["y"].shape == (None, None, None, None) and notes


def test_the_limit_is_adjustable(tmp_path, cli):
    onnx.save(_relu([1000, 1000]), str(tmp_path / "m.onnx"))  # 4 MB of float32
    res = cli("debug", tmp_path / "m.onnx", "--max-feed-size", "1M")
    assert res.status == 2 and "more than the limit of 1 MiB" in _flat(res.stderr)
    res = cli("debug", tmp_path / "m.onnx", "--max-feed-size", "8M")
    assert res.status == 0, res.stderr
    res = cli("debug", tmp_path / "m.onnx", "--max-feed-size", "lots")
    assert res.status == 2 and "cannot read the size `lots`" in res.stderr


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4G", 4 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("1000", 1000),
        ("2kb", 2048),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "nan", "inf", "4Q"])
def test_parse_size_refuses_non_sizes(text):
    with pytest.raises(UsageError):
        parse_size(text)


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    batch=st.integers(1, 40),
    dtype=st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.UINT8]),
    limit=st.integers(1, 60000),
)
def test_refused_exactly_when_the_arrays_would_pass_the_limit(dims, batch, dtype, limit):
    """Against an independent count: numpy's own nbytes of arrays of the same shapes."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("a", dtype, ["N", *dims]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, "N"]),
        ],
        [helper.make_tensor_value_info("y", dtype, None)],
    )
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    expected = np.empty((batch, *dims), np_dtype).nbytes + np.empty((2, batch), np.float32).nbytes
    options = FeedOptions(dims={"N": batch}, max_feed_bytes=limit)
    if expected > limit:
        with pytest.raises(UsageError, match="more than the limit"):
            make_feeds(model, options)
    else:
        feeds = make_feeds(model, options)
        assert sum(v.nbytes for v in feeds.values()) == expected


def test_no_limit_when_asked():
    model = Model(_relu([300, 300]))
    feeds = make_feeds(model, FeedOptions(max_feed_bytes=None))
    assert feeds["images"].shape == (300, 300)


# ---------------------------------------------------------------------- npz headers
def _npy_header(shape, dtype="<f4") -> bytes:
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _bomb(path, key: str, shape, payload: int) -> None:
    """An npz whose member ``key`` has the given header and ``payload`` zero bytes of
    values, deflated (a few hundred kB on disk)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(f"{key}.npy", "w", force_zip64=True) as member:
            member.write(_npy_header(shape))
            chunk = bytes(2**22)
            for _ in range(payload // len(chunk)):
                member.write(chunk)


def test_an_npz_bomb_is_refused_from_its_headers(tmp_path, cli):
    """Claims 6.4 GB; refused before a byte of the values is inflated."""
    onnx.save(_relu([40000, 40000]), str(tmp_path / "m.onnx"))
    bomb = tmp_path / "feeds.npz"
    _bomb(bomb, "images", (40000, 40000), 2**24)
    start = time.perf_counter()
    res = cli("debug", tmp_path / "m.onnx", "--feeds", bomb)
    assert res.status == 2, res.stderr
    assert "5.96 GiB" in _flat(res.stderr) and "more than the limit" in _flat(res.stderr)
    with pytest.raises(SurgeonError, match="Nothing was decompressed"):
        load_npz(bomb)
    assert time.perf_counter() - start < 5


def test_values_past_the_header_are_never_inflated(tmp_path):
    """A member whose header says 2 floats but whose data goes on for 16 MB: exactly the 2
    floats are read."""
    path = tmp_path / "long.npz"
    _bomb(path, "x", (2,), 2**24)
    arrays = load_npz(path)
    assert arrays["x"].shape == (2,) and arrays["x"].dtype == np.float32


def test_unknown_keys_are_refused_before_loading(tmp_path, cli):
    """`imagse` is refused by name (with a suggestion) although it claims 6 GB: keys are
    checked first, and nothing is read."""
    onnx.save(_relu([1, 3]), str(tmp_path / "m.onnx"))
    bomb = tmp_path / "feeds.npz"
    _bomb(bomb, "imagse", (40000, 40000), 2**22)
    res = cli("debug", tmp_path / "m.onnx", "--feeds", bomb)
    assert res.status == 2
    text = _flat(res.stderr)
    assert "`imagse`, which is not an input" in text and "did you mean `images`" in text


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a zip at all", "not a zip archive"),
        ("pickle", "Python objects"),
        ("notnpy", "is not a .npy array"),
        ("badheader", "no valid .npy header"),
        ("truncated", "truncated"),
    ],
)
def test_unreadable_npz_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    else:
        with zipfile.ZipFile(path, "w") as z:
            if content == "notnpy":
                z.writestr("x.txt", b"hello")
            elif content == "badheader":
                z.writestr("x.npy", b"\x93NUMPY garbage")
            else:
                z.writestr("x.npy", _npy_header((100,)) + b"\0" * 12)
    with pytest.raises(SurgeonError, match=message):
        load_npz(path)


@settings(max_examples=25, deadline=None)
@given(
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_/.]{0,8}", fullmatch=True),
        st.tuples(
            st.lists(st.integers(0, 4), max_size=3),
            st.sampled_from(["float32", "float64", "int8", "uint16", "bool", "complex64"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
    compressed=st.booleans(),
)
def test_npz_reading_matches_numpy(tmp_path_factory, arrays, compressed):
    """Headers and values equal what np.load gives, for C and Fortran order."""
    rng = np.random.default_rng(0)
    values = {}
    for key, (shape, dtype, fortran) in arrays.items():
        a = (rng.standard_normal(shape) * 10).astype(dtype)
        values[key] = np.asfortranarray(a) if fortran else a
    path = tmp_path_factory.mktemp("npz") / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **values)
    with np.load(path) as reference:
        expected = {k: reference[k] for k in reference.files}
    index = read_npz_index(path)
    got = load_npz(path)
    assert set(index) == set(got) == set(expected)
    for key, want in expected.items():
        assert index[key].shape == want.shape and index[key].dtype == want.dtype
        assert index[key].nbytes == want.nbytes
        assert got[key].dtype == want.dtype
        np.testing.assert_array_equal(got[key], want)


# ---------------------------------------------------------------------- linear time
def _chain(nodes: int) -> onnx.ModelProto:
    """A chain whose every node reads its own initializer, listed as a graph input too
    (the inspect facts about initializers-as-inputs were quadratic in them)."""
    inits, inputs, chain = [], [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])], []
    for i in range(nodes):
        w = f"w{i}"
        inits.append(helper.make_tensor(w, TensorProto.FLOAT, [1], [0.5]))
        inputs.append(helper.make_tensor_value_info(w, TensorProto.FLOAT, [1]))
        chain.append(helper.make_node("Add", [f"t{i}", w], [f"t{i + 1}"], name=f"/m{i}/Add"))
    graph = helper.make_graph(
        chain,
        "chain",
        inputs,
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _seconds(fn) -> float:
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_load_inspect_and_origins_grow_linearly(tmp_path):
    """8x the nodes may cost about 8x the time, never the 64x of per-node set rebuilds
    (those took 1 s at 5k nodes and 300 s at 100k)."""
    costs = []
    for n in (400, 3200):
        path = tmp_path / f"c{n}.onnx"
        onnx.save(_chain(n), str(path))
        model = load(path)
        names = [node.name for node in model.proto.graph.node]
        costs.append(
            _seconds(
                lambda path=path, names=names: (
                    describe(loaded := load(path)),
                    [node_origin(loaded, name) for name in names],
                )
            )
        )
    assert costs[1] / costs[0] < 25, costs


# ---------------------------------------------------------------------- provenance
@pytest.mark.parametrize(
    "value,why",
    [
        ("not json {", "not valid JSON"),
        ('{"edit": "tap"}', "JSON dict"),
        ("[1, 2]", "record 1"),
        ('[{"edit": 5}]', "record 1"),
        ('[{"edit": "tap", "params": [1]}]', "record 1"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
        (json.dumps([{"edit": "x" * 2_000_000}]), "too large"),
    ],
    ids=["text", "dict", "numbers", "edit-not-str", "params-list", "deep", "huge"],
)
def test_malformed_provenance_is_shown_as_such(tmp_path, cli, value, why):
    proto = _relu([1, 3])
    proto.metadata_props.add(key=PROVENANCE_KEY, value=value)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    res = cli("inspect", tmp_path / "m.onnx")
    assert res.status == 0, res.stderr
    assert "malformed" in res.stdout and why.split()[0] in res.stdout
    info = cli("inspect", tmp_path / "m.onnx", "--json").json
    assert info["history"] == []
    assert info["metadata"][PROVENANCE_KEY].startswith(f"(malformed: {why}")
    assert len(info["metadata"][PROVENANCE_KEY]) < 400
    # An edit appends a fresh history and keeps the unreadable one beside it.
    model = load(tmp_path / "m.onnx").copy().add_provenance("tap", {"a": 1})
    assert [r["edit"] for r in model.provenance] == ["tap"]
    kept = {p.key: p.value for p in model.proto.metadata_props}
    assert kept[PROVENANCE_KEY + ".malformed"] == value


def test_wellformed_provenance_is_still_listed(tmp_path, cli):
    proto = _relu([1, 3])
    records = [{"edit": "tap", "params": {"taps": ["y"]}, "surgeon": "0.1", "extra": 1}]
    proto.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(records))
    onnx.save(proto, str(tmp_path / "m.onnx"))
    info = cli("inspect", tmp_path / "m.onnx", "--json").json
    assert info["history"] == records and PROVENANCE_KEY not in info["metadata"]


def test_a_reference_npz_is_bounded_by_the_same_limit(tmp_path, cli):
    onnx.save(_relu([1, 3]), str(tmp_path / "m.onnx"))
    np.savez(
        tmp_path / "acts.npz",
        images=np.zeros((1, 3), np.float32),
        y=np.zeros((1, 3), np.float32),  # one tensor pairs: a reference pairing none is exit 2
        big=np.zeros(2**19),
    )
    res = cli("debug", tmp_path / "m.onnx", "--ref", tmp_path / "acts.npz", "--max-feed-size", "1M")
    assert res.status == 2 and "more than the limit of 1 MiB" in _flat(res.stderr)
    assert "`big`: [524288] float64 = 4 MiB" in _flat(res.stderr)
    res = cli("debug", tmp_path / "m.onnx", "--ref", tmp_path / "acts.npz")
    assert res.status == 0, res.stderr


def test_memory_the_machine_lacks_is_exit_2_not_a_crash(tmp_path, cli, monkeypatch):
    """A limit raised past the machine's memory: the allocation failure is a clear error."""
    import surgeon.feeds as feeds

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(feeds, "_random_values", no_memory)
    onnx.save(_relu([1, 3]), str(tmp_path / "m.onnx"))
    res = cli("debug", tmp_path / "m.onnx")
    assert res.status == 2 and "not enough memory for the input `images`" in _flat(res.stderr)
