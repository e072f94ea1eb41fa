"""Review of a22f6fb (debug --ref: a float16 unit compared with its twin, the reference's
own node re-run on the same stored values).

Passing tests pin what the change gets right: real errors (weights, attributes, input
order, another op behind a carrying Cast, swapped multi-output names, name_map pairs,
reference weights on disk in another folder) are still the root cause on both paths;
identical float16 models with optional empty inputs, Split, TopK, float16 graph inputs
or a name_map are clean on both paths; bfloat16 models and saved activations do not
crash.

The two bugs the review found in the merged run (a twin read its inputs through guards
of its own, which onnxruntime can bypass, while the unit read the shared one; a unit
with an integer or bfloat16 feed got no twin there) are fixed and their tests pass, as
is the older one it found (the merged run's float16 guards did not always round, so an
overflowing float16 model's per-unit numbers differed between the paths:
in_graph_compare.rounding_guard). (The review also checked float32 reports
byte-identical to the commit before the change, by running both trees; that one-off
check is not kept in the suite.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx import numpy_helper
from onnx.external_data_helper import convert_model_to_external_data
from test_debug_in_graph import _both, _normalise
from test_precision_float16 import float_model, to_float16

from surgeon.compare import Tolerance
from surgeon.debugging import debug
from surgeon.debugging.results import DebugOptions
from surgeon.loading import load

H13 = '<ir_version: 8, opset_import: ["" : 13]>\n'
H18 = '<ir_version: 8, opset_import: ["" : 18]>\n'


def _options(folder, reference, feeds, tolerance=Tolerance(), **extra):
    if isinstance(reference, onnx.ModelProto):
        reference = str(write(reference, folder / "ref.onnx"))
    np.savez(folder / "feeds.npz", **feeds)
    options = DebugOptions(reference=reference, tolerance=tolerance, **extra)
    return dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(folder / "feeds.npz")),
    )


def _run_both(tmp_path, candidate, reference, feeds, tolerance=Tolerance(), **extra):
    if isinstance(candidate, onnx.ModelProto):
        candidate = write(candidate, tmp_path / "cand.onnx")
    return _both(candidate, _options(tmp_path, reference, feeds, tolerance, **extra))


def _own(report) -> dict[str, tuple[int, float | None]]:
    return {
        u.node: (u.isolated.mismatches, u.isolated.max_abs)
        for u in report.precision.ranking
        if u.isolated is not None
    }


def _verdict(report) -> str:
    return report.precision.root_cause.verdict


def _x(seed, shape=(2, 3, 8)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# A float16 chain: ReduceMean (no float16 kernel on CPU) feeds Sub unrounded in the
# reference's own run; Softmax and a weight follow.
CHAIN = (
    H13
    + """g (float[2, 3, 8] x) => (float16[2, 3, 8] y) {
    h = Cast<to = 10>(x)
    r = ReduceMean<axes = [2], keepdims = 1>(h)
    t = Sub(h, r)
    s = Softmax<axis = 2>(t)
    y = Mul(s, w)
}"""
)


def _chain(text=CHAIN, delta=0.0):
    model = parse(text)
    w = np.random.default_rng(5).standard_normal(8).astype(np.float16)
    w[2] += np.float16(delta)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    return model


# ---------------------------------------------------------------- real errors stay found


@pytest.mark.parametrize(
    "candidate, culprit",
    [
        (lambda: _chain(CHAIN.replace("Sub(h, r)", "Sub(r, h)")), "Sub->t"),
        (lambda: _chain(CHAIN.replace("Softmax<axis = 2>", "Softmax<axis = 1>")), "Softmax->s"),
        (lambda: _chain(delta=1.0), "Mul->y"),
        # another op behind a Cast (a value carrier keeps the same-name pair): `u` pairs
        # with the reference's `t` through the Cast, and its twin is the reference's Sub
        (
            lambda: _chain(
                CHAIN.replace("t = Sub(h, r)", "u = Add(h, r)\n    t = Cast<to = 10>(u)")
            ),
            "Add->u",
        ),
    ],
    ids=["input-order", "attribute", "weights", "other-op-behind-cast"],
)
def test_a_changed_float16_node_is_still_the_root_cause_on_both_paths(tmp_path, candidate, culprit):
    fast, slow = _run_both(tmp_path, candidate(), _chain(), {"x": _x(0)})
    for report in (fast, slow):
        assert _verdict(report) == "found"
        ranking = report.precision.ranking
        assert ranking[0].node == culprit and ranking[0].isolated.mismatches > 0
        others = {n: e for n, e in _own(report).items() if n != culprit}
        assert all(m == 0 for m, _ in others.values()), others
    assert _own(fast)[culprit][0] == _own(slow)[culprit][0]


SPLIT = (
    H13
    + """g (float[2, 3, 8] x) => (float16[2, 3, 4] p, float16[2, 3, 4] q) {
    h = Cast<to = 10>(x)
    r = ReduceMean<axes = [2], keepdims = 1>(h)
    t = Sub(h, r)
    p, q = Split<axis = 2>(t, sp)
}"""
)


def _split(text=SPLIT):
    model = parse(text)
    model.graph.initializer.append(numpy_helper.from_array(np.array([4, 4], np.int64), "sp"))
    return model


def test_swapped_split_outputs_are_found_the_twin_is_the_paired_output(tmp_path):
    candidate = _split(SPLIT.replace("p, q = Split", "q, p = Split"))
    fast, slow = _run_both(tmp_path, candidate, _split(), {"x": _x(0)})
    for report in (fast, slow):
        assert _verdict(report) == "found"
        top = report.precision.ranking[0]
        assert top.op == "Split" and top.isolated.mismatches == 24


def _renamed(text):
    return (
        text.replace("h =", "ch =")
        .replace("(h)", "(ch)")
        .replace("r =", "cr =")
        .replace("t =", "ct =")
        .replace("(t, sp)", "(ct, sp)")
    )


def test_name_map_pairs_identical_clean_and_swapped_inputs_found(tmp_path):
    name_map = {"h": "ch", "r": "cr", "t": "ct"}
    same = _split(_renamed(SPLIT).replace("Sub(h, r)", "Sub(ch, cr)"))
    (tmp_path / "a").mkdir()
    fast, slow = _run_both(tmp_path / "a", same, _split(), {"x": _x(0)}, name_map=name_map)
    for report in (fast, slow):
        assert _verdict(report) == "clean"
        assert all(e == (0, 0.0) for e in _own(report).values()), _own(report)
    swapped = _split(_renamed(SPLIT).replace("Sub(h, r)", "Sub(cr, ch)"))
    (tmp_path / "b").mkdir()
    fast, slow = _run_both(tmp_path / "b", swapped, _split(), {"x": _x(0)}, name_map=name_map)
    for report in (fast, slow):
        assert _verdict(report) == "found"
        assert report.precision.ranking[0].node == "Sub->ct"


WEIGHTED = (
    H13
    + """g (float[2, 3, 16] x) => (float16[2, 3, 16] y) {
    h = Cast<to = 10>(x)
    r = ReduceMean<axes = [2], keepdims = 1>(h)
    t = Add(h, r)
    u = Mul(t, w)
    y = Add(u, r)
}"""
)


def test_the_twin_reads_the_references_weights_from_its_own_folder(tmp_path):
    # Both models keep `w` in a file of the same name, each in its own folder, with
    # other values: the twin (the reference's Mul) must read the reference's file, or
    # the changed weight would vanish (the unit against a copy of itself).
    def model(delta):
        proto = parse(WEIGHTED)
        w = np.random.default_rng(5).standard_normal(16).astype(np.float16)
        w[3] += np.float16(delta)
        proto.graph.initializer.append(numpy_helper.from_array(w, "w"))
        convert_model_to_external_data(
            proto, all_tensors_to_one_file=True, location="weights.data", size_threshold=0
        )
        return proto

    for folder, delta in (("cand", 2.0), ("ref", 0.0)):
        (tmp_path / folder).mkdir()
        onnx.save(model(delta), str(tmp_path / folder / "m.onnx"))
    fast, slow = _run_both(
        tmp_path,
        tmp_path / "cand" / "m.onnx",
        str(tmp_path / "ref" / "m.onnx"),
        {"x": _x(0, (2, 3, 16))},
    )
    for report in (fast, slow):
        assert _verdict(report) == "found"
        assert report.precision.ranking[0].node == "Mul->u"
        others = {n: e for n, e in _own(report).items() if n != "Mul->u"}
        assert all(e == (0, 0.0) for e in others.values()), others


# ------------------------------------------------------- identical models: no own error

IDENTICAL = {
    "clip-empty-min": (
        H13
        + """g (float[2, 3, 8] x) => (float16[2, 3, 8] y) {
        h = Cast<to = 10>(x)
        r = ReduceMean<axes = [2], keepdims = 1>(h)
        t = Add(h, r)
        y = Clip(t, , mx)
    }""",
        {"mx": np.array(0.5, np.float16)},
        np.float32,
    ),
    "split": (SPLIT, {"sp": np.array([4, 4], np.int64)}, np.float32),
    "topk": (
        H13
        + """g (float[2, 3, 8] x) => (float16[2, 3, 3] v, int64[2, 3, 3] i) {
        h = Cast<to = 10>(x)
        r = ReduceMean<axes = [2], keepdims = 1>(h)
        t = Add(h, r)
        e = Exp(t)
        v, i = TopK<axis = 2>(e, k)
    }""",
        {"k": np.array([3], np.int64)},
        np.float32,
    ),
    "float16-graph-input": (
        H13
        + """g (float16[2, 3, 8] x) => (float16[2, 3, 8] y) {
        r = ReduceMean<axes = [2], keepdims = 1>(x)
        t = Sub(x, r)
        y = Mul(t, t)
    }""",
        {},
        np.float16,
    ),
}


@pytest.mark.parametrize("name", sorted(IDENTICAL))
@pytest.mark.parametrize("seed", range(2))
def test_identical_float16_models_are_clean_on_both_paths(tmp_path, name, seed):
    text, initializers, dtype = IDENTICAL[name]
    model = parse(text)
    for k, v in initializers.items():
        model.graph.initializer.append(numpy_helper.from_array(v, k))
    fast, slow = _run_both(tmp_path, model, model, {"x": _x(seed).astype(dtype)})
    for report in (fast, slow):
        assert _verdict(report) == "clean"
        assert all(e == (0, 0.0) for e in _own(report).values()), _own(report)
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())


# --------------------------------------------------------------------------- no crashes


def test_a_bfloat16_model_against_itself_runs_on_both_paths(tmp_path):
    model = parse(
        H18
        + """g (float[2, 3, 8] x) => (float[2, 3, 8] y) {
        h = Cast<to = 16>(x)
        t = Identity(h)
        y = Cast<to = 1>(t)
    }"""
    )
    fast, slow = _run_both(tmp_path, model, model, {"x": _x(0)})
    for report in (fast, slow):
        assert _verdict(report) == "clean"
        assert all(e == (0, 0.0) for e in _own(report).values())


def test_saved_activations_as_reference_run_without_twins(tmp_path):
    # No reference model, so no twin: the stored tensors are compared, as before.
    from surgeon.runner import run

    model = parse(
        H13
        + """g (float[2, 3, 4] x) => (float16[2, 3, 4] t) {
        h = Cast<to = 10>(x)
        r = ReduceMean<axes = [2], keepdims = 1>(h)
        t = Add(h, r)
    }"""
    )
    cand = load(write(model, tmp_path / "m.onnx"))
    x = _x(0, (2, 3, 4))
    np.savez(tmp_path / "acts.npz", x=x, **run(cand, {"x": x}, outputs=["h", "r", "t"]))
    report = debug(cand, _options(tmp_path, str(tmp_path / "acts.npz"), {"x": x}))
    assert report.mode == "values"
    assert {"Add->t", "ReduceMean->r", "Cast->h"} <= set(_own(report))


# ------------------------------------- the merged run: twins read what their units read

# `e` is read by a Cast unit and by a Mul unit: they share its float16 guard, which then
# rounds; a twin reading `e` through a guard of its own got onnxruntime's unrounded
# float32 value and blamed the identical Mul.
CAST_AND_MUL = (
    H13
    + """g (float[2, 3, 8] x) => (float[2, 3, 8] y, float16[2, 3, 8] s) {
    h = Cast<to = 10>(x)
    e = Exp(h)
    y = Cast<to = 1>(e)
    s = Mul(e, e)
}"""
)


@pytest.mark.parametrize("seed", range(2))
def test_identical_model_with_a_tensor_read_by_a_cast_and_a_mul_is_clean_in_graph(tmp_path, seed):
    model = parse(CAST_AND_MUL)
    fast, slow = _run_both(tmp_path, model, model, {"x": _x(seed)})
    assert _verdict(slow) == "clean"  # the values path is right
    assert all(e == (0, 0.0) for e in _own(slow).values())
    assert _verdict(fast) == "clean", _own(fast)  # the merged run: Mul->s found
    assert all(e == (0, 0.0) for e in _own(fast).values()), _own(fast)


# opset 18 ReduceMean takes its axes as an input, here a Constant node's int64 output
# (an activation the unit is fed, not an initializer).
AXES_INPUT = (
    H18
    + """g (float[4, 8, 32] x) => (float16[4, 8, 1] s) {
    h = Cast<to = 10>(x)
    ax = Constant<value = int64[1] {2}>()
    s = ReduceMean<keepdims = 1>(h, ax)
}"""
)


def test_with_the_axes_an_initializer_both_paths_are_clean(tmp_path):
    model = parse(AXES_INPUT.replace("    ax = Constant<value = int64[1] {2}>()\n", ""))
    model.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "ax"))
    fast, slow = _run_both(tmp_path, model, model, {"x": _x(0, (4, 8, 32))})
    for report in (fast, slow):
        assert _verdict(report) == "clean"


@pytest.mark.parametrize("seed", range(2))
def test_identical_model_with_an_integer_activation_feed_is_clean_in_graph(tmp_path, seed):
    model = parse(AXES_INPUT)
    fast, slow = _run_both(tmp_path, model, model, {"x": _x(seed, (4, 8, 32))})
    assert _verdict(slow) == "clean"  # the values path is right
    assert _verdict(fast) == "clean", _own(fast)  # the merged run: ReduceMean->s found
    assert _own(fast) == _own(slow)


def test_identical_overflowing_float16_model_gives_the_same_report_on_both_paths(tmp_path):
    reference = to_float16(float_model(300.0))  # `sq` overflows float16
    fast, slow = _run_both(
        tmp_path, reference, reference, {"x": _x(0, (4, 16))}, Tolerance(1e-3, 1e-3)
    )
    for report in (fast, slow):
        assert _verdict(report) == "clean"
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())
