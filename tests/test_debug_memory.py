"""How debug's statistics run keeps memory down without changing a number: weights handed
to onnxruntime as arrays (not copied into the statistics model nor serialised), and the
tapped model run before the plain one (verify's ``reference_last``), or the plain one run
while the tapped model's session is built (``reference_alongside``).

Each is checked against an independent plain onnxruntime run, and the debug report
against the one the previous order and copies gave."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper
from test_verify import _ort_run as _plain  # an independent onnxruntime run

from surgeon.compare import EXACT
from surgeon.debugging import DebugOptions, debug
from surgeon.edits.tap import learn_types, select_taps
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.loading import load
from surgeon.model import Model
from surgeon.runner import BORROW_FROM, RunOptions, Session, borrowable_weights
from surgeon.statistics import build_stats_model
from surgeon.verification import verify


def _conv_model(dtype=np.float32) -> Model:
    """Conv -> Relu -> MatMul, and a Gather, with weights of several sizes and types: a
    256x256 matrix (64 KiB and more: left on disk when saved as external data), a conv
    weight, an int64 index tensor, and a small bias (kept in the proto)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)  # 64-256 bytes: stays in the proto
    m = rng.standard_normal((256, 256)).astype(dtype)
    idx = np.arange(600, dtype=np.int64) % 256  # 4800 bytes, an integer weight
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["y"]),
        helper.make_node("Gather", ["m", "idx"], ["g"], axis=0),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, [1, 3, 4, 256])],
        [
            helper.make_tensor_value_info("y", elem, None),
            helper.make_tensor_value_info("g", elem, None),
        ],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(m, "m"),
            numpy_helper.from_array(idx, "idx"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model(proto)


def _without(model: Model, names) -> onnx.ModelProto:
    """A copy of ``model``'s proto without the initializers ``names`` (as the statistics
    model is built without the weights it borrows)."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model.proto)
    kept = [t for t in stripped.graph.initializer if t.name not in names]
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    return stripped


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_borrowed_weights_run_equals_a_plain_run(dtype):
    model = _conv_model(dtype)
    before = model.proto.SerializeToString()
    weights = borrowable_weights(model)
    assert set(weights) == {"w", "m", "idx"}  # the 16-element bias stays in the proto
    assert all(model.proto.graph.initializer[i].ByteSize() >= BORROW_FROM for i in (0, 2, 3))
    # A model without them, as the statistics model is built, runs with them given.
    stripped = _without(model, weights)
    feeds = make_feeds(model, FeedOptions(seed=5))
    got = Session(Model(stripped), initializers=weights).run(feeds)
    want = _plain(model, feeds)
    for name in ("y", "g"):
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])
    assert model.proto.SerializeToString() == before  # placeholders removed again


def test_borrowed_weights_through_a_scratch_file(monkeypatch):
    # A model with more weights in memory than FILE_THRESHOLD reaches onnxruntime as a
    # scratch file: the borrowed weights are written into it like the others.
    import surgeon.runner

    model = _conv_model()
    before = model.proto.SerializeToString()
    weights = borrowable_weights(model)
    stripped = _without(model, weights)
    monkeypatch.setattr(surgeon.runner, "FILE_THRESHOLD", -1)
    feeds = make_feeds(model, FeedOptions(seed=6))
    got = Session(Model(stripped), initializers=weights).run(feeds)
    np.testing.assert_array_equal(got["y"], _plain(model, feeds)["y"])
    # The copies went into the file, not into the caller's proto.
    assert len(stripped.graph.initializer) == len(model.proto.graph.initializer) - len(weights)
    assert model.proto.SerializeToString() == before


def test_external_and_exotic_initializers_are_not_borrowed(tmp_path):
    model = _conv_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model.proto, str(path), save_as_external_data=True, size_threshold=0)
    loaded = load(path)
    # Large external tensors stay on disk (onnxruntime maps them); small ones were read in.
    borrowed = borrowable_weights(loaded)
    assert "m" not in borrowed and "w" in borrowed
    bf16 = helper.make_tensor("bf", TensorProto.BFLOAT16, [1024], np.zeros(1024, np.uint16))
    strings = helper.make_tensor("s", TensorProto.STRING, [300], [b"x" * 8] * 300)
    model.proto.graph.initializer.extend([bf16, strings])
    assert not {"bf", "s"} & set(borrowable_weights(model))


def test_stats_model_leaves_borrowed_initializers_out():
    model = load(SAMPLES / "tiny_yolo.onnx")
    taps = select_taps(model, ["all"])
    types = learn_types(model, [t for t in taps if t not in model.output_names])
    weights = borrowable_weights(model)
    assert weights
    lean, outs = build_stats_model(model, taps, types, borrowed=weights)
    full, outs_full = build_stats_model(model, taps, types)
    names = {t.name for t in lean.proto.graph.initializer}
    assert not names & set(weights)
    assert names | set(weights) == {t.name for t in full.proto.graph.initializer}
    assert outs == outs_full
    feeds = make_feeds(model, FeedOptions(seed=0))
    fetch = [x for pair in outs.values() for x in pair]
    got = Session(lean, extra_outputs=fetch, initializers=weights).run(feeds, fetch)
    want = Session(full, extra_outputs=fetch).run(feeds, fetch)
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("order", ["reference_last", "reference_alongside"])
@pytest.mark.parametrize("sample", ["tiny_yolo.onnx", "two_conv.onnx"])
def test_either_order_gives_the_same_report(sample, order):
    model = load(SAMPLES / sample)
    taps = select_taps(model, ["all"])
    tapped = Session(model, extra_outputs=taps)  # only to check the names are real
    assert tapped.output_names
    feeds = make_feeds(model, FeedOptions(seed=2))
    kept: dict = {}
    args = dict(pairs=[(o, o) for o in model.output_names], feeds=feeds, tolerance=EXACT)
    first = verify(model, model, fetch=taps, collect=kept, **{order: True}, **args)
    second = verify(model, model, fetch=taps, **args)
    assert first.to_dict() == second.to_dict()
    assert first and set(taps) <= set(kept)


@pytest.mark.parametrize("order", ["reference_last", "reference_alongside"])
def test_with_candidate_inputs_the_reference_runs_first(order):
    # An extracted part is fed from the reference's tensors: the reference must run first
    # whatever the caller asked for.
    model = load(SAMPLES / "two_conv.onnx")
    from surgeon.edits.extract import extract

    first_node = model.proto.graph.node[0]
    part = extract(model, inputs=[first_node.output[0]], outputs=model.output_names).model
    report = verify(
        part,
        model,
        candidate_inputs={first_node.output[0]: first_node.output[0]},
        pairs=[(o, o) for o in model.output_names],
        feeds=make_feeds(model, FeedOptions(seed=0)),
        **{order: True},
    )
    assert report


def test_reference_alongside_reports_the_candidates_error_after_the_reference_ends(
    monkeypatch,
):
    # The reference's thread is waited for (a program that ends while onnxruntime runs
    # in another thread aborts in its teardown); its own error is dropped.
    import threading
    import time

    import surgeon.verification as verification
    from surgeon.errors import RuntimeFailure

    model = load(SAMPLES / "two_conv.onnx")
    ended = []

    def slow_reference(*args):
        args[4].built.set()  # its session "built": the candidate's is built next
        time.sleep(0.2)
        ended.append(True)
        raise RuntimeFailure("the reference failed too")

    def broken_session(*args, **kwargs):
        raise RuntimeFailure("the candidate failed")

    monkeypatch.setattr(verification, "_compute", slow_reference)
    monkeypatch.setattr(verification, "Session", broken_session)
    with pytest.raises(RuntimeFailure, match="the candidate failed"):
        verify(model, model, feeds=make_feeds(model, FeedOptions(seed=0)), reference_alongside=True)
    assert ended == [True]
    assert not [t for t in threading.enumerate() if t.name == "surgeon-reference"]


def test_reference_alongside_raises_the_references_error(monkeypatch):
    import surgeon.verification as verification
    from surgeon.errors import RuntimeFailure

    model = load(SAMPLES / "two_conv.onnx")

    def failing_reference(*args):
        args[4].built.set()
        raise RuntimeFailure("onnxruntime could not run the reference")

    monkeypatch.setattr(verification, "_compute", failing_reference)
    with pytest.raises(RuntimeFailure, match="could not run the reference"):
        verify(model, model, feeds=make_feeds(model, FeedOptions(seed=0)), reference_alongside=True)


def test_debug_report_is_unchanged_by_the_memory_savings():
    # The statistics run (weights borrowed, tapped model first) against the values run
    # (every tensor fetched and measured with numpy): same statistics and tap check.
    model = load(SAMPLES / "tiny_yolo.onnx")
    lean = debug(model, DebugOptions(taps=["all"]))
    full = debug(model, DebugOptions(taps=["all"], keep_values=True))
    assert lean.mode == "statistics" and full.mode == "values"
    assert lean.tap_check and full.tap_check
    by_name = {s.name: s for s in full.stats}
    for s in lean.stats:
        f = by_name[s.name]
        assert (s.shape, s.min, s.max, s.zeros, s.flags) == (
            f.shape,
            f.min,
            f.max,
            f.zeros,
            f.flags,
        )
        assert s.mean == pytest.approx(f.mean, rel=1e-12, abs=1e-300)
        assert s.std == pytest.approx(f.std, rel=1e-10, abs=1e-300)


def test_a_model_that_cannot_run_is_blamed_for_itself(tmp_path):
    # The tapped model runs first now: a model whose own node fails must still be
    # reported as the model failing, not as surgeon's statistics nodes failing.
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array([4, 4], np.int64), "shape")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    proto.ir_version = 8
    from surgeon.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure) as info:
        debug(Model(proto), DebugOptions(taps=["all"]))
    assert "statistics nodes" not in str(info.value.message)
    assert "Reshape" in str(info.value.message) or "bad_reshape" in str(info.value.message)


def test_bad_borrowed_initializers_are_usage_errors():
    from surgeon.errors import UsageError

    model = _conv_model()
    with pytest.raises(UsageError, match="leaves out"):
        Session(model, initializers={"m": np.zeros((256, 256), np.float32)})
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model.proto)
    del stripped.graph.initializer[2]  # m
    for bad in ([1, 2], np.array(["a"]), np.zeros(3, np.complex64)):
        with pytest.raises(UsageError, match="numpy array"):
            Session(Model(stripped), initializers={"m": bad})


def test_run_options_unchanged_for_the_plain_run():
    # The borrowed path is only taken when asked for: a plain run still serialises the
    # model with its weights (its proto is what onnxruntime gets).
    model = _conv_model()
    feeds = make_feeds(model, FeedOptions(seed=4))
    got = Session(model, options=RunOptions(optimization="disabled")).run(feeds)
    np.testing.assert_array_equal(got["y"], _plain(model, feeds)["y"])


@pytest.mark.parametrize("sample", ["ext_weights.onnx", "two_conv.onnx", "tiny_yolo.onnx"])
def test_in_memory_bytes_from_declared_sizes(sample):
    # Sized from shapes and types (no copy of raw_data): the same number as the bytes the
    # in-memory tensors hold, external ones left out.
    from surgeon.external import is_external
    from surgeon.protos import iter_tensors
    from surgeon.runner import in_memory_bytes

    model = load(SAMPLES / sample)
    held = sum(
        len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes
        for t in iter_tensors(model.proto)
        if not is_external(t)
    )
    assert in_memory_bytes(model) == held


def test_borrowed_weights_are_read_late_and_dropped_once_onnxruntime_copies_them():
    from surgeon.runner import BorrowedWeights, _onnxruntime_copies_initializers

    model = _conv_model()
    lent = BorrowedWeights(model)
    assert lent.names == {"w", "m", "idx"}
    stripped = _without(model, lent.names)
    session = Session(Model(stripped), initializers=lent)
    feeds = make_feeds(model, FeedOptions(seed=8))
    want = _plain(model, feeds)
    got = session.run(feeds)
    for name in ("y", "g"):
        np.testing.assert_array_equal(got[name], want[name])
    # The probe is what allows dropping them: onnxruntime 1.32 copies (a write to the
    # array after the session is built does not show), so none is kept here.
    copies = _onnxruntime_copies_initializers()
    assert copies
    assert session._borrowed == []
    np.testing.assert_array_equal(session.run(feeds)["y"], want["y"])  # still right


def test_the_copy_probe_says_no_when_onnxruntime_would_share(monkeypatch):
    # Were onnxruntime to use the arrays as they are, the session keeps them.
    import surgeon.runner as runner

    monkeypatch.setattr(runner, "_onnxruntime_copies_initializers", lambda: False)
    model = _conv_model()
    lent = runner.BorrowedWeights(model)
    stripped = _without(model, lent.names)
    session = Session(Model(stripped), initializers=lent)
    assert len(session._borrowed) == 3


def test_initializers_of_the_wrong_kind_are_usage_errors():
    from surgeon.errors import UsageError

    with pytest.raises(UsageError, match="mapping of names"):
        Session(_conv_model(), initializers=object())


def test_a_refused_session_leaves_the_callers_proto_as_it_was():
    """Extra outputs go onto the model's proto only after every argument is checked."""
    from surgeon.errors import UsageError

    model = _conv_model()
    before = model.proto.SerializeToString()
    tensor = model.proto.graph.node[0].output[0]
    for bad in (object(), {"m": np.zeros((256, 256), np.float32)}):
        with pytest.raises(UsageError):
            Session(model, extra_outputs=[tensor], initializers=bad)
        assert model.proto.SerializeToString() == before


def test_a_strided_borrowed_array_is_a_usage_error():
    from surgeon.errors import UsageError

    model = _conv_model()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model.proto)
    m = next(t for t in stripped.graph.initializer if t.name == "m")
    value = onnx.numpy_helper.to_array(m)
    stripped.graph.initializer.remove(m)
    with pytest.raises(UsageError, match="C-contiguous"):
        Session(Model(stripped), initializers={"m": np.asfortranarray(value)})
    # the contiguous copy runs
    Session(Model(stripped), initializers={"m": np.ascontiguousarray(value)})


@pytest.mark.parametrize("role", ["input", "output"])
def test_weights_that_are_graph_inputs_or_outputs_are_not_borrowed(role):
    # Found in review: a weight listed as a graph output failed the tap check
    # ("W (missing)"), one listed as a graph input could not be fed.
    from surgeon.runner import BorrowedWeights

    model = _conv_model()
    info = helper.make_tensor_value_info("m", TensorProto.FLOAT, [256, 256])
    (model.proto.graph.input if role == "input" else model.proto.graph.output).append(info)
    assert "m" not in borrowable_weights(model)
    assert "m" not in BorrowedWeights(model).names
    report = debug(model, DebugOptions(taps=["all"]))
    assert report.mode == "statistics" and report.tap_check


def test_reference_alongside_builds_the_references_session_first(monkeypatch):
    # Session creations take turns (runner.CREATE_LOCK): the reference's comes first, so
    # its run, not its creation, overlaps the candidate's build.
    import surgeon.verification as verification

    order = []
    real = verification.Session

    class Recording(real):
        def __init__(self, model, **kwargs):
            order.append(("build", model.name))
            super().__init__(model, **kwargs)

        def run(self, feeds, outputs=None):
            order.append(("run", self.model.name))
            return super().run(feeds, outputs)

    monkeypatch.setattr(verification, "Session", Recording)
    model = load(SAMPLES / "two_conv.onnx")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.name = "tapped"
    tapped = Model(proto)
    report = verify(
        tapped, model, feeds=make_feeds(model, FeedOptions(seed=0)), reference_alongside=True
    )
    assert report
    assert order[0] == ("build", model.name)
    assert order[-1] == ("run", "tapped")
    assert order.index(("build", "tapped")) > 0


def test_reference_alongside_with_a_failing_reference_session_does_not_wait_forever():
    # The reference's session cannot be built (a bad custom op library path): its error
    # is raised before the candidate's session is built, as in the sequential order.
    from surgeon.errors import SurgeonError

    model = load(SAMPLES / "two_conv.onnx")
    with pytest.raises(SurgeonError, match="custom op library"):
        verify(
            model,
            model,
            feeds=make_feeds(model, FeedOptions(seed=0)),
            reference_options=RunOptions(custom_op_libraries=("/nonexistent/lib.so",)),
            reference_alongside=True,
        )
