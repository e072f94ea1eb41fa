"""Review of ``verify(..., reference_alongside=True)`` (the reference run in a daemon
thread while the candidate's session is built) and of its use by debug's tap check.

Passing tests pin what is right: the same DiffReport / debug document as the sequential
path on varied models, errors and exit codes, signals at each moment of the overlap, no
thread left behind, no overlap of the two Session's edits of a shared proto for a Model
reference. The five bugs the review found (a program ending while the reference still
ran aborted; both models failing gave the candidate's error, not the reference's; a Chain
reference overlapped its session builds with the candidate's; a replaced ``_compute``
left verify waiting) are fixed, and their tests pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, run_cli
from onnx import TensorProto, helper, numpy_helper
from test_signals import _wait_for

import surgeon
import surgeon.debugging.orchestration as orchestration
import surgeon.runner as runner
import surgeon.verification as verification
from surgeon.compare import EXACT
from surgeon.errors import RuntimeFailure, SurgeonError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model
from surgeon.verification import Chain, verify

ROOT = Path(surgeon.__file__).resolve().parent.parent
OPSET = [helper.make_opsetid("", 17)]
POSIX = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "SIGHUP"), reason="POSIX signals only"
)


# ----------------------------------------------------------------------------- models
def _model(nodes, inputs, outputs, inits=(), name="g") -> Model:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    return Model(helper.make_model(graph, opset_imports=OPSET))


def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _multi_output() -> Model:
    """Three outputs, one of them the graph input passed straight through."""
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "w")
    return _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Mul", ["r", "x"], ["y"]),
            helper.make_node("Neg", ["h"], ["z"]),
        ],
        [_vi("x", shape=[2, 3])],
        [_vi("y"), _vi("x", shape=[2, 3]), _vi("z")],
        [w],
        name="multi",
    )


def _float16() -> Model:
    rng = np.random.default_rng(12)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float16), "w")
    return _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Tanh", ["h"], ["y"]),
            helper.make_node("Sigmoid", ["h"], ["s"]),
        ],
        [_vi("x", TensorProto.FLOAT16, [3, 4])],
        [_vi("y", TensorProto.FLOAT16), _vi("s", TensorProto.FLOAT16)],
        [w],
        name="half",
    )


def _int64() -> Model:
    idx = numpy_helper.from_array(np.array([2, 0, 1, 1], np.int64), "idx")
    return _model(
        [
            helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
            helper.make_node("Add", ["g", "g"], ["y"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        ],
        [_vi("x", TensorProto.INT64, [2, 3])],
        [
            _vi("y", TensorProto.INT64),
            _vi("total", TensorProto.INT64),
            _vi("x", TensorProto.INT64, [2, 3]),
        ],
        [idx],
        name="ints",
    )


def _chain_of_three() -> tuple[Model, Model, Model]:
    """A -> B (a second model) and the merged candidate."""
    a = _model(
        [helper.make_node("Relu", ["x"], ["h"])], [_vi("x", shape=[2, 3])], [_vi("h")], name="a"
    )
    b = _model(
        [helper.make_node("Exp", ["h"], ["y"])], [_vi("h", shape=[2, 3])], [_vi("y")], name="b"
    )
    merged = _model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Exp", ["h"], ["y"])],
        [_vi("x", shape=[2, 3])],
        [_vi("y")],
        name="merged",
    )
    return a, b, merged


def _feeds(model: Model, seed=0):
    return make_feeds(model, FeedOptions(seed=seed))


def _both(candidate, reference, **kwargs):
    """The report of the overlapped and of the sequential path."""
    collected_a: dict = {}
    collected_b: dict = {}
    a = verify(candidate, reference, reference_alongside=True, collect=collected_a, **kwargs)
    b = verify(candidate, reference, collect=collected_b, **kwargs)
    assert sorted(collected_a) == sorted(collected_b)
    for k in collected_a:
        np.testing.assert_array_equal(collected_a[k], collected_b[k])
    return a.to_dict(), b.to_dict()


def _call_with_timeout(fn, timeout):
    """("returned", value) / ("raised", exception) / ("hung", None)."""
    box = {}

    def target():
        try:
            box["returned"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["raised"] = e

    t = threading.Thread(target=target, daemon=True, name="review-caller")
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "hung", None
    ((kind, value),) = box.items()
    return kind, value


def _reference_threads():
    return [t for t in threading.enumerate() if t.name == "surgeon-reference"]


def _wait_reference_threads(timeout=30.0):
    deadline = time.monotonic() + timeout
    for t in _reference_threads():
        t.join(max(0.0, deadline - time.monotonic()))
    return _reference_threads()


# ------------------------------------------------- same results as the sequential path
@pytest.mark.parametrize(
    "make, kwargs",
    [
        (_multi_output, {}),
        (_multi_output, {"fetch": ["h", "r"]}),
        # a graph input asked for by name, a candidate name that does not exist and a
        # reference name that does not exist
        (_multi_output, {"pairs": [("h", "h"), ("x", "x"), ("nope", "y"), ("y", "nope")]}),
        (_multi_output, {"tolerance": EXACT, "report_extra": False}),
        (_float16, {}),
        (_float16, {"fetch": ["h"], "tolerance": EXACT}),
        (_int64, {}),
        (_int64, {"pairs": [("g", "g"), ("x", "x"), ("total", "total")]}),
    ],
    ids=[
        "multi",
        "multi-fetch",
        "multi-odd-pairs",
        "multi-exact",
        "fp16",
        "fp16-fetch",
        "int64",
        "int64-pairs",
    ],
)
def test_same_report_as_sequential_on_varied_models(make, kwargs):
    model = make()
    a, b = _both(model, model, feeds=_feeds(model, 3), **kwargs)
    assert a == b


def test_same_report_with_a_distinct_candidate_that_lacks_a_reference_output():
    model = _multi_output()
    # the candidate renames y -> y2 and drops z: a name_map pair and a missing pair
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.name = "cand"
    for n in proto.graph.node:
        n.output[:] = ["y2" if o == "y" else o for o in n.output]
    del proto.graph.node[3]  # Neg -> z
    del proto.graph.output[:]
    proto.graph.output.extend([_vi("y2"), _vi("x", shape=[2, 3])])
    candidate = Model(proto)
    a, b = _both(candidate, model, feeds=_feeds(model, 4), name_map={"y": "y2"})
    assert a == b
    assert [t["status"] for t in a["tensors"]] == ["ok", "ok", "missing"]


def test_same_report_with_generated_feeds():
    model = _int64()
    a, b = _both(model, model, feed_options=FeedOptions(seed=7))
    assert a == b


def test_same_report_against_a_chain():
    a, b, merged = _chain_of_three()
    chain = Chain([a, b])
    x, y = _both(merged, chain, feeds=_feeds(a, 5), pairs=[("y", "y"), ("h", "0:h")])
    assert x == y and x["passed"]


def test_reference_last_wins_over_alongside(monkeypatch):
    started = []
    real = verification._Overlap
    monkeypatch.setattr(verification, "_Overlap", lambda *args: started.append(1) or real(*args))
    model = _multi_output()
    report = verify(
        model, model, feeds=_feeds(model), reference_last=True, reference_alongside=True
    )
    assert report and started == []


# Debug through the CLI (--json), overlapped (ALONGSIDE_WEIGHTS huge) and not (0): the
# same document and exit status; the spy shows the overlap was really taken.
def _saved(tmp_path, make) -> Path:
    path = tmp_path / f"{make.__name__.strip('_')}.onnx"
    onnx.save(make().proto, str(path))
    return path


@pytest.mark.parametrize(
    "which",
    ["tiny_yolo.onnx", "two_conv.onnx", "ext_weights.onnx", _multi_output, _float16, _int64],
)
def test_debug_json_is_the_same_overlapped_or_not(tmp_path, monkeypatch, which):
    path = SAMPLES / which if isinstance(which, str) else _saved(tmp_path, which)
    seen = []
    real = orchestration.verify

    def spy(*args, **kwargs):
        # (the tap check's plain run is started before verify: reference_started)
        seen.append(
            bool(kwargs.get("reference_alongside")) or verification._STARTED.get() is not None
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(orchestration, "verify", spy)
    results = {}
    for limit in (0, 2**40):
        monkeypatch.setattr(orchestration, "ALONGSIDE_WEIGHTS", limit)
        seen.clear()
        r = run_cli("debug", path, "--json")
        results[limit] = (r.status, json.loads(r.stdout), list(seen))
    assert results[0][2] == [False]
    assert results[2**40][2] == [True]
    assert results[0][:2] == results[2**40][:2]


# ------------------------------------------------------------------- errors and codes
def _unloadable(name, out="y") -> Model:
    return _model(
        [helper.make_node("NoSuchOp" + name, ["x"], [out])],
        [_vi("x", shape=[2, 3])],
        [_vi(out)],
        name=name,
    )


def _relu(name="good") -> Model:
    return _model(
        [helper.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=[2, 3])], [_vi("y")], name=name
    )


@pytest.mark.parametrize("alongside", [False, True])
def test_only_the_reference_fails_to_load(alongside):
    with pytest.raises(RuntimeFailure, match="could not load badref"):
        verify(
            _relu(),
            _unloadable("badref"),
            feeds={"x": np.ones((2, 3), np.float32)},
            reference_alongside=alongside,
        )


@pytest.mark.parametrize("alongside", [False, True])
def test_only_the_candidate_fails_to_load(alongside):
    with pytest.raises(RuntimeFailure, match="could not load badcand"):
        verify(
            _unloadable("badcand"),
            _relu(),
            feeds={"x": np.ones((2, 3), np.float32)},
            reference_alongside=alongside,
        )
    _wait_reference_threads()


def test_only_the_reference_fails_to_run_gives_the_same_error():
    shape = numpy_helper.from_array(np.array([4, 4], np.int64), "s")
    bad = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [_vi("x", shape=[2, 3])],
        [_vi("y")],
        [shape],
        name="badrun",
    )
    errors = []
    for alongside in (False, True):
        with pytest.raises(RuntimeFailure) as caught:
            verify(
                _relu(),
                bad,
                feeds={"x": np.ones((2, 3), np.float32)},
                reference_alongside=alongside,
            )
        errors.append((type(caught.value), caught.value.message, caught.value.exit_code))
    assert errors[0] == errors[1]


def test_both_failing_to_load_reports_the_same_error_as_sequential():
    feeds = {"x": np.ones((2, 3), np.float32)}
    messages = []
    for alongside in (False, True):
        with pytest.raises(RuntimeFailure) as caught:
            verify(
                _unloadable("badcand"),
                _unloadable("badref"),
                feeds=feeds,
                reference_alongside=alongside,
            )
        messages.append(caught.value.message)
    _wait_reference_threads()
    assert messages[0] == messages[1]


@pytest.mark.parametrize("which", ["badrun", "badload"])
def test_debug_cli_error_and_exit_code_are_the_same_overlapped_or_not(tmp_path, monkeypatch, which):
    if which == "badrun":
        shape = numpy_helper.from_array(np.array([4, 4], np.int64), "s")
        m = _model(
            [
                helper.make_node("Relu", ["x"], ["h"]),
                helper.make_node("Reshape", ["h", "s"], ["y"]),
            ],
            [_vi("x", shape=[2, 3])],
            [_vi("y")],
            [shape],
        )
    else:
        m = _model(
            [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("NoSuchOp", ["h"], ["y"])],
            [_vi("x", shape=[2, 3])],
            [_vi("y")],
        )
    path = tmp_path / f"{which}.onnx"
    onnx.save(m.proto, str(path))
    results = []
    for limit in (0, 2**40):
        monkeypatch.setattr(orchestration, "ALONGSIDE_WEIGHTS", limit)
        r = run_cli("debug", path, "--json")
        results.append((r.status, json.loads(r.stdout)))
    assert results[0] == results[1]
    assert results[0][0] == 2 and results[0][1]["error"] == "RuntimeFailure"


# --------------------------------------------------------------------------- deadlocks
def test_a_reference_session_raising_any_exception_releases_the_wait(monkeypatch):
    real = verification.Session

    def session(model, **kwargs):
        if threading.current_thread().name == "surgeon-reference":
            raise ValueError("not an onnxruntime error")
        return real(model, **kwargs)

    monkeypatch.setattr(verification, "Session", session)
    model = _relu()
    kind, value = _call_with_timeout(
        lambda: verify(model, model, feeds=_feeds(model), reference_alongside=True), 30
    )
    assert kind == "raised" and isinstance(value, ValueError)


@pytest.mark.parametrize("broken", ["model", "link"])
def test_a_chain_reference_that_fails_releases_the_wait(broken):
    a, b, merged = _chain_of_three()
    if broken == "model":  # a step onnxruntime cannot load
        chain, error, text = (
            Chain([a, _unloadable("broken", out="y")], links=[{"x": "h"}]),
            RuntimeFailure,
            "broken",
        )
    else:  # a step whose input nothing produces
        chain, error, text = (
            Chain([a, b], links=[{"h": "no-such-tensor"}]),
            SurgeonError,
            "no-such-tensor",
        )
    kind, value = _call_with_timeout(
        lambda: verify(merged, chain, feeds=_feeds(a), reference_alongside=True), 30
    )
    assert kind == "raised" and isinstance(value, error) and text in str(value)


def test_a_reference_thread_that_ends_without_signalling_does_not_hang(monkeypatch):
    def replaced(reference, feeds, names, options, built=None):  # forgets `built`
        raise RuntimeFailure("the reference failed before its session")

    monkeypatch.setattr(verification, "_compute", replaced)
    model = _relu()
    kind, value = _call_with_timeout(
        lambda: verify(model, model, feeds=_feeds(model), reference_alongside=True), 10
    )
    assert kind == "raised" and isinstance(value, RuntimeFailure)


# ---------------------------------------------------------------------- thread leaks
def test_no_thread_left_after_many_verifies():
    model = _multi_output()
    feeds = _feeds(model)
    before = threading.active_count()
    for _ in range(40):
        assert verify(model, model, feeds=feeds, reference_alongside=True, fetch=["h"])
    assert _reference_threads() == []
    assert threading.active_count() == before


def test_threads_left_by_failed_candidates_end_on_their_own():
    feeds = {"x": np.ones((2, 3), np.float32)}
    for _ in range(20):
        with pytest.raises(RuntimeFailure):
            verify(_unloadable("badcand"), _relu(), feeds=feeds, reference_alongside=True)
    assert _wait_reference_threads() == []


# ------------------------------------------------------------- a proto shared by both
def _window_spy(monkeypatch, delays=None):
    """Wrap runner.through_file, called inside Session's window where the shared proto
    holds the extra outputs and placeholders: record two threads inside it at once for
    one proto (widened by a sleep)."""
    real = runner.through_file
    inside: dict[int, str] = {}
    overlaps: list = []
    lock = threading.Lock()

    def spy(model):
        key = id(model.proto)
        me = threading.current_thread().name
        with lock:
            if key in inside:
                overlaps.append((inside[key], me))
            inside[key] = me
        time.sleep((delays or {}).get(me, 0.05))
        with lock:
            inside.pop(key, None)
        return real(model)

    monkeypatch.setattr(runner, "through_file", spy)
    return overlaps


def test_same_model_object_as_candidate_and_reference_never_overlaps_its_proto_edits(monkeypatch):
    model = _multi_output()
    before = model.proto.SerializeToString()
    feeds = _feeds(model, 1)
    overlaps = _window_spy(monkeypatch)
    kwargs = dict(feeds=feeds, pairs=[("h", "h"), ("r", "r"), ("y", "y")], fetch=["z"])
    for _ in range(3):
        a = verify(model, model, reference_alongside=True, **kwargs).to_dict()
        b = verify(model, model, **kwargs).to_dict()
        assert a == b and a["passed"]
    assert overlaps == []
    assert model.proto.SerializeToString() == before


def test_two_models_sharing_one_proto_never_overlap_its_edits(monkeypatch):
    model = _multi_output()
    twin = Model(model.proto)
    assert twin.proto is model.proto
    overlaps = _window_spy(monkeypatch)
    report = verify(
        twin,
        model,
        feeds=_feeds(model),
        pairs=[("h", "h"), ("y", "y")],
        fetch=["r"],
        reference_alongside=True,
    )
    assert report and overlaps == []


def test_chain_reference_sharing_the_candidates_proto(monkeypatch):
    m = _model(
        [
            helper.make_node("Relu", ["x"], ["h"]),
            helper.make_node("Neg", ["h"], ["k"]),
            helper.make_node("Exp", ["k"], ["y"]),
        ],
        [_vi("x", shape=[2, 3])],
        [_vi("y")],
    )
    kwargs = dict(pairs=[("y", "y"), ("h", "h")], fetch=["k"], feeds=_feeds(m))
    assert verify(m, Chain([m]), **kwargs)  # sequential
    # Only delays: the reference appends first and leaves its window first.
    _window_spy(
        monkeypatch, delays={"surgeon-reference": 0.1, "MainThread": 0.3, "review-caller": 0.3}
    )
    real_folder = runner.session_folder

    def later(model):
        if threading.current_thread().name != "surgeon-reference":
            time.sleep(0.05)
        return real_folder(model)

    monkeypatch.setattr(runner, "session_folder", later)
    assert verify(m, Chain([m]), reference_alongside=True, **kwargs)


# --------------------------------------------------------------------------- stdout
def test_caller_output_after_an_early_candidate_error_is_not_lost(monkeypatch, capsys):
    # A Chain reference is computed in turn (no thread): nothing builds a session under
    # the process-wide stdout redirect once verify has raised.
    import onnxruntime

    threads = []
    real = onnxruntime.InferenceSession.__init__

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", recording)
    a, b, merged = _chain_of_three()
    with pytest.raises(SurgeonError):
        # "nope" is no tensor of the candidate: its Session fails before onnxruntime
        verify(merged, Chain([a, b]), feeds=_feeds(a), fetch=["nope"], reference_alongside=True)
    print("the caller's line")
    _wait_reference_threads()
    assert "surgeon-reference" not in threads
    assert "the caller's line" in capsys.readouterr().out


def test_model_reference_session_is_built_before_verify_goes_on(monkeypatch, capsys):
    # With a Model reference, the redirect of the reference's build is over before the
    # main thread goes on: a line printed right after a candidate error is kept.
    import onnxruntime

    real = onnxruntime.InferenceSession.__init__

    def slow(self, *args, **kwargs):
        if threading.current_thread().name == "surgeon-reference":
            time.sleep(0.3)
        real(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", slow)
    model = _relu()
    with pytest.raises(SurgeonError):
        verify(model, model, feeds=_feeds(model), fetch=["nope"], reference_alongside=True)
    print("kept")
    _wait_reference_threads()
    assert "kept" in capsys.readouterr().out


# ------------------------------------------------------------ signals (subprocesses)
DRIVER = textwrap.dedent("""
    import os, sys, threading, time
    import onnxruntime
    import surgeon.verification as V

    where, marker = os.environ["HANG"], os.environ["MARKER"]

    def in_worker():
        return threading.current_thread().name == "surgeon-reference"

    def hang():
        open(marker, "w").close()
        time.sleep(60)

    if where == "ref-build":  # inside runner.CREATE_LOCK and the stdout redirect
        real = onnxruntime.InferenceSession.__init__

        def init(self, *a, **k):
            if in_worker():
                print("onnxruntime noise")
                hang()
            real(self, *a, **k)

        onnxruntime.InferenceSession.__init__ = init
    else:
        Real = V.Session

        class S(Real):
            def __init__(self, *a, **k):
                # cand-build: the main thread builds the candidate while the reference runs
                if where == "cand-build" and not in_worker():
                    hang()
                super().__init__(*a, **k)

            def run(self, *a, **k):
                if in_worker():
                    if where == "ref-run":
                        hang()
                    time.sleep(5)  # cand-build: still running meanwhile
                return super().run(*a, **k)

        V.Session = S
    sys.argv = ["surgeon"] + sys.argv[1:]
    from surgeon.cli import entry_point
    entry_point()
""")


@POSIX
@pytest.mark.parametrize("where", ["ref-build", "ref-run", "cand-build"])
@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_signal_at_each_moment_of_the_overlap(tmp_path, where, signum, code, word):
    model = tmp_path / "m.onnx"
    w = numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(2, 512), "w")
    m = _model(
        [helper.make_node("Add", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [_vi("x", shape=[2, 512])],
        [_vi("y")],
        [w],
    )
    onnx.save(m.proto, str(model))
    marker = tmp_path / "marker"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "debug", str(model), "--json"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TMPDIR": str(tmp),
            "HANG": where,
            "MARKER": str(marker),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(marker.exists, proc)
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    assert time.monotonic() - started < 20
    assert out == ""  # neither a document nor onnxruntime's noise on stdout
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []


# -------------------------------------------------- a program ending after a failure
EXITING = textwrap.dedent("""
    import numpy as np
    from onnx import helper, numpy_helper, TensorProto as TP
    from surgeon.model import Model
    from surgeon.runner import RunOptions
    from surgeon.verification import verify
    from surgeon.errors import RuntimeFailure

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((512, 512)) / 20).astype(np.float32), "w")
    nodes, prev = [], "x"
    for i in range(200):  # a reference whose run lasts a while
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    x = helper.make_tensor_value_info("x", TP.FLOAT, [512, 512])
    y = helper.make_tensor_value_info(prev, TP.FLOAT, None)
    op = [helper.make_opsetid("", 17)]
    ref = Model(helper.make_model(helper.make_graph(nodes, "ref", [x], [y], [w]), opset_imports=op))
    bad = Model(helper.make_model(
        helper.make_graph([helper.make_node("NoSuchOp", ["x"], [prev])], "bad", [x], [y]),
        opset_imports=op))
    try:
        verify(bad, ref, feeds={"x": rng.standard_normal((512, 512)).astype(np.float32)},
               reference_options=RunOptions(threads=1), reference_alongside=True)
    except RuntimeFailure as e:
        print("caught", flush=True)
""")


def test_a_program_that_ends_right_after_a_failed_candidate_exits_cleanly():
    proc = subprocess.run(
        [sys.executable, "-c", EXITING],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "caught"
    assert proc.returncode == 0, proc.stderr[-300:]
