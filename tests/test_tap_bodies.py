"""Taps inside If, Loop and Scan bodies (surgeon.edits.tap_bodies): each tapped body
tensor is checked against an independent computation (numpy, or onnx's
ReferenceEvaluator run on the untouched model with the body tensor made a body output),
and the original outputs stay bit-identical."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli, write

import surgeon
from surgeon.debugging import DebugOptions, debug
from surgeon.edits.tap import select_taps, tap
from surgeon.errors import NameNotFoundError
from surgeon.model import Model
from surgeon.runner import run

# An If on a bool input; each branch computes two tensors from x and w (w read from the
# main graph: an outer-scope read); the then-branch also holds a scalar.
IF_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (bool c, float[2, 3] x) => (float[2, 3] y) <float[3] w = {1.0, -2.0, 0.5}> {
    y = If (c) <
        then_branch = g1 () => (float[2, 3] t_out) {
            t = Mul(x, w)
            s = ReduceSum <keepdims = 0> (t)
            t_out = Add(t, s)
        },
        else_branch = g2 () => (float[2, 3] e_out) {
            t = Sub(x, w)
            e_out = Relu(t)
        }>
}"""


def _if_model() -> Model:
    return Model(parse(IF_MODEL))


W = np.array([1.0, -2.0, 0.5], np.float32)
X = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5


def test_if_taps_both_branches_in_turn():
    model = _if_model()
    names = select_taps(model, ["all"])
    # plain names shared by the two branches are told apart by where they live
    assert names == [
        "#0/then_branch/t",
        "#0/then_branch/s",
        "#0/then_branch/t_out",
        "#0/else_branch/t",
        "#0/else_branch/e_out",
        "y",
    ]
    edited = tap(model, ["all"], feeds={"c": np.array(True), "x": X})
    assert edited and edited.report.tolerance.exact  # original output bit-identical
    onnx.checker.check_model(edited.model.proto)  # ranks declared where known
    for c in (True, False):
        feeds = {"c": np.array(c), "x": X}
        out = run(edited.model, feeds)
        original = run(model, feeds)
        assert out["y"].tobytes() == original["y"].tobytes()
        then_t, else_t = X * W, X - W
        if c:
            np.testing.assert_array_equal(out["#0/then_branch/t"], then_t)
            np.testing.assert_array_equal(out["#0/then_branch/s"], np.float32(then_t.sum()))
            assert out["#0/else_branch/t"].size == 0  # branch not taken: empty, same dtype
            assert out["#0/else_branch/t"].dtype == np.float32
        else:
            np.testing.assert_array_equal(out["#0/else_branch/t"], else_t)
            np.testing.assert_array_equal(out["#0/else_branch/e_out"], np.maximum(else_t, 0))
            assert out["#0/then_branch/t"].size == 0  # (the scalar `s`: a zero scalar)
        assert bool(out["#0 branch taken"]) == c


@pytest.mark.parametrize("c", [True, False])
def test_debug_says_which_branch_ran_and_measures_only_that(c):
    model = _if_model()
    report = debug(model, DebugOptions(keep_values=True), feeds={"c": np.array(c), "x": X})
    assert report.passed and report.tap_check.passed and report.tap_check.tolerance.exact
    taken = "then_branch" if c else "else_branch"
    executed = {b["name"]: b["executed"] for b in report.bodies["taps"]}
    assert all(ok == (f"/{taken}/" in name) for name, ok in executed.items())
    measured = {s.name for s in report.stats}
    assert {n for n, ok in executed.items() if ok} <= measured
    assert not any(n in measured for n, ok in executed.items() if not ok)  # no fake stats
    assert not any(n in report.values for n, ok in executed.items() if not ok)
    t = report.values[f"#0/{taken}/t"]
    np.testing.assert_array_equal(t, X * W if c else X - W)
    stats = next(s for s in report.stats if s.name == f"#0/{taken}/t")
    assert stats.max == pytest.approx(float(t.max())) and stats.node == f"#0/{taken}/#0"


# A Loop of 4 iterations: acc <- acc * 2 + x; h = acc * 2 is tapped at every iteration.
LOOP_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[3] x) => (float[3] y, float[4, 3] ys) {
    trip = Constant <value = int64 {4}> ()
    cond = Constant <value = bool {1}> ()
    y, ys = Loop (trip, cond, x) <body = body (int64 i, bool c, float[3] acc)
        => (bool c_out, float[3] acc_out, float[3] scan) {
            c_out = Identity(c)
            two = Constant <value = float {2.0}> ()
            h = Mul(acc, two)
            acc_out = Add(h, x)
            scan = Identity(acc_out)
        }>
}"""


def _loop_reference(x):
    acc, hs = x.copy(), []
    for _ in range(4):
        h = acc * np.float32(2)
        hs.append(h)
        acc = h + x
    return np.stack(hs)


def test_loop_taps_every_iteration_and_names_the_worst():
    model = Model(parse(LOOP_MODEL))
    x = np.array([1.0, -3.0, 0.5], np.float32)
    edited = tap(model, ["h"], feeds={"x": x})  # the plain body name: unique
    assert edited and edited.details["taps"] == ["#2/body/h"]
    out = run(edited.model, {"x": x})
    np.testing.assert_array_equal(out["#2/body/h"], _loop_reference(x))
    original = run(model, {"x": x})
    for name in ("y", "ys"):
        assert out[name].tobytes() == original[name].tobytes()

    report = debug(model, DebugOptions(taps=("h",)), feeds={"x": x})
    [body] = report.bodies["taps"]
    assert body["iterations"] == [4]
    # the values grow each iteration: the worst (largest absolute value) is the last
    assert body["worst_iteration"] == [3] and body["worst_reason"] == "max abs"
    [stats] = report.stats
    hs = _loop_reference(x)
    assert stats.shape == [4, 3]
    assert stats.mean == pytest.approx(float(hs.astype(np.float64).mean()))
    assert stats.max == pytest.approx(float(hs.max()))


def test_loop_tap_names_the_first_non_finite_iteration():
    # h = x / i: x / 0 at iteration 0 is Inf, born there from finite inputs
    text = LOOP_MODEL.replace("h = Mul(acc, two)", "h = Div(x, i_f)")
    model = Model(
        parse(text.replace("two = Constant <value = float {2.0}> ()", "i_f = Cast <to = 1> (i)"))
    )
    x = np.array([1.0, -3.0, 0.5], np.float32)
    report = debug(model, DebugOptions(), feeds={"x": x})
    body = next(b for b in report.bodies["taps"] if b["name"] == "#2/body/h")
    assert body["worst_iteration"] == [0] and body["worst_reason"] == "non-finite"
    born = report.born
    assert not report.passed
    assert born[0].tensor == "#2/body/h" and born[0].node == "#2/body/#2"
    assert born[0].kind == "born"
    assert "first Inf at `#2/body/h`" in report.verdict()


# Scan: a running sum over the rows of x; the body tensor `d = s_in * 0.5` is tapped.
SCAN_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2] s0, float[5, 2] xs) => (float[2] s, float[5, 2] ys) {
    s, ys = Scan <num_scan_inputs = 1, scan_output_axes = [0], body = body (float[2] s_in, float[2] row)
        => (float[2] s_out, float[2] y) {
            half = Constant <value = float {0.5}> ()
            d = Mul(s_in, half)
            s_out = Add(d, row)
            y = Identity(s_out)
        }> (s0, xs)
}"""


def test_scan_taps_every_iteration():
    model = Model(parse(SCAN_MODEL))
    rng = np.random.default_rng(0)
    feeds = {
        "s0": rng.standard_normal(2).astype(np.float32),
        "xs": rng.standard_normal((5, 2)).astype(np.float32),
    }
    edited = tap(model, ["#0/body/d"], feeds=feeds)
    assert edited
    out = run(edited.model, feeds)
    s, expected = feeds["s0"], []
    for row in feeds["xs"]:
        d = s * np.float32(0.5)
        expected.append(d)
        s = d + row
    np.testing.assert_array_equal(out["#0/body/d"], np.stack(expected))
    attrs = {a.name: list(a.ints) for a in edited.model.proto.graph.node[0].attribute if a.ints}
    assert attrs["scan_output_axes"] == [0, 0]


# Nested: a Loop inside the then-branch of an If; an If inside a Loop body.
NESTED = """<ir_version: 8, opset_import: ["" : 17]>
agraph (bool c, float[3] x) => (float[3] y) {
    y = If (c) <
        then_branch = g1 () => (float[3] t_out) {
            trip = Constant <value = int64 {3}> ()
            cond = Constant <value = bool {1}> ()
            t_out = Loop (trip, cond, x) <body = body (int64 i, bool cc, float[3] acc)
                => (bool c_out, float[3] acc_out) {
                    c_out = Identity(cc)
                    pos = Constant <value = bool {1}> ()
                    acc_out = If (pos) <
                        then_branch = h1 () => (float[3] a1) { k = Neg(acc)
                                                               a1 = Add(k, x) },
                        else_branch = h2 () => (float[3] a2) { a2 = Identity(acc) }>
                }>
        },
        else_branch = g2 () => (float[3] e_out) { e_out = Abs(x) }>
}"""


def test_nested_bodies_against_the_reference_evaluator():
    model = Model(parse(NESTED))
    x = np.array([0.5, -1.0, 2.0], np.float32)
    deep = "#0/then_branch/#2/body/#2/then_branch/k"
    assert deep in select_taps(model, ["all"])
    edited = tap(model, [deep, "e_out"], feeds={"c": np.array(True), "x": x})
    assert edited
    # independent: onnx's ReferenceEvaluator on a Python re-computation of the loop
    from onnx.reference import ReferenceEvaluator

    acc, ks = x.copy(), []
    for _ in range(3):
        ks.append(-acc)
        acc = -acc + x
    ref_y = ReferenceEvaluator(model.proto).run(None, {"c": np.array(True), "x": x})[0]
    np.testing.assert_allclose(ref_y, acc)
    out = run(edited.model, {"c": np.array(True), "x": x})
    np.testing.assert_array_equal(out[deep], np.stack(ks))
    assert out["#0/else_branch/e_out"].size == 0
    out = run(edited.model, {"c": np.array(False), "x": x})
    assert out[deep].size == 0
    np.testing.assert_array_equal(out["#0/else_branch/e_out"], np.abs(x))
    report = debug(model, DebugOptions(taps=(deep,)), feeds={"c": np.array(False), "x": x})
    assert report.bodies["taps"][0]["executed"] is False and report.stats == []


# ------------------------------------------------------------------ names
def test_ambiguous_plain_name_lists_where_it_lives():
    with pytest.raises(NameNotFoundError) as e:
        select_taps(_if_model(), ["t"])
    assert "#0/then_branch/t" in str(e.value) and "#0/else_branch/t" in str(e.value)
    assert select_taps(_if_model(), ["e_out"]) == ["#0/else_branch/e_out"]
    assert select_taps(_if_model(), ["#0/else_branch/*"]) == [
        "#0/else_branch/t",
        "#0/else_branch/e_out",
    ]
    assert select_taps(_if_model(), [], ops=["ReduceSum"]) == ["#0/then_branch/s"]


def test_cli_ambiguous_and_unknown_body_names_are_exit_2(tmp_path):
    path = write(parse(IF_MODEL), tmp_path / "if.onnx")
    res = run_cli("debug", path, "--tap", "t", "-o", tmp_path / "o.onnx")
    assert res.status == 2 and "2 bodies" in res.stderr and "#0/then_branch/t" in res.stderr
    res = run_cli("debug", path, "--tap", "#0/then_branch/tt")
    assert res.status == 2 and "#0/then_branch/t" in res.stderr  # a close match
    res = run_cli("debug", path, "--tap", "e_outt")
    assert res.status == 2 and "did you mean `e_out`" in res.stderr  # unique: the plain name
    assert not (tmp_path / "o.onnx").exists()


def test_cli_save_keeps_every_iteration(tmp_path):
    path = write(parse(LOOP_MODEL), tmp_path / "loop.onnx")
    x = np.array([1.0, -3.0, 0.5], np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    res = run_cli(
        "debug",
        path,
        "--feeds",
        tmp_path / "feeds.npz",
        "--save",
        tmp_path / "t.npz",
        "-o",
        tmp_path / "tapped.onnx",
        "--json",
    )
    assert res.status == 0, res.stdout + res.stderr
    saved = np.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(saved["#2/body/h"], _loop_reference(x))
    tapped = surgeon.load(tmp_path / "tapped.onnx")
    assert "#2/body/h" in tapped.output_names
    again = run_cli("debug", path, "--feeds", tmp_path / "feeds.npz", "--ref", tmp_path / "t.npz")
    assert again.status == 0, again.stdout + again.stderr  # the saved taps pair as a reference


# An If inside a Loop taking the other branch at iteration 1: its branch tensors differ
# in shape between iterations (a value, or empty), which a scan output cannot stack.
SWITCHING = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[3] x) => (float[3] y) {
    trip = Constant <value = int64 {4}> ()
    cond = Constant <value = bool {1}> ()
    y = Loop (trip, cond, x) <body = body (int64 i, bool c, float[3] acc)
        => (bool c_out, float[3] acc_out) {
            c_out = Identity(c)
            one = Constant <value = int64 {1}> ()
            odd = Equal(i, one)
            acc_out = If (odd) <
                then_branch = h1 () => (float[3] a1) { n = ReduceSum <keepdims = 0> (acc)
                                                       a1 = Neg(acc) },
                else_branch = h2 () => (float[3] a2) { a2 = Identity(acc) }>
        }>
}"""


def test_taps_that_cannot_be_stacked_are_dropped_and_listed():
    model = Model(parse(SWITCHING))
    x = np.array([1.0, 2.0, -3.0], np.float32)
    report = debug(model, DebugOptions(), feeds={"x": x})
    assert report.passed and report.tap_check.passed
    dropped = {"#2/body/#3/then_branch/a1", "#2/body/#3/else_branch/a2"}
    assert dropped <= set(report.not_tappable)
    assert any("could not stack" in n for n in report.notes)
    odd = next(s for s in report.stats if s.name == "#2/body/odd")
    assert odd.shape == [4] and odd.max == 1  # [i == 1 for i in range(4)]
    # a scalar stacks (the other branch gives a placeholder scalar), but is not measured
    scalar = next(b for b in report.bodies["taps"] if b["name"] == "#2/body/#3/then_branch/n")
    assert scalar["not_executed"] == "branch taken in some iterations only"
    assert "#2/body/#3/then_branch/n" not in {s.name for s in report.stats}
    edited = tap(model, ["all"], feeds={"x": x})
    assert edited and dropped <= set(edited.details["not_tappable"])
    assert not dropped & set(edited.details["taps"])


def test_terminal_says_what_did_not_run_and_the_worst_iteration(tmp_path):
    path = write(parse(IF_MODEL), tmp_path / "if.onnx")
    np.savez(tmp_path / "f.npz", c=np.array(False), x=X)
    res = run_cli("debug", path, "--feeds", tmp_path / "f.npz", "--html", tmp_path / "r.html")
    assert res.status == 0, res.stdout + res.stderr
    text = " ".join(res.stdout.split())  # the console wraps at 100 columns
    assert "2 of 5 tapped tensors ran" in text
    assert "not executed (branch not taken, or no iteration): #0/then_branch/t," in text
    assert "#0/else_branch/e_out" in (tmp_path / "r.html").read_text()
    loop = write(parse(LOOP_MODEL), tmp_path / "loop.onnx")
    text = " ".join(run_cli("debug", loop).stdout.split())
    assert "worst iteration: #2/body/acc_out at iteration 3 (max abs)" in text


def test_names_that_collide_with_main_graph_tensors_are_made_unique():
    """A hostile model names main-graph tensors like a qualified body name and a branch
    marker: the taps get `#2` and the run still pairs every value with its tensor."""
    proto = parse(IF_MODEL.replace("    y = If (c)", "    r = Relu(x)\n    y = If (c)"))
    proto.graph.node[0].output[0] = "#1/then_branch/t"  # r, named like a body tap
    proto.graph.output.add(name="#1/then_branch/t").type.CopyFrom(proto.graph.output[0].type)
    # a tensor named like the If's branch marker (the If, named `#1`, moves to index 2)
    proto.graph.node.insert(1, onnx.helper.make_node("Not", ["c"], ["#1 branch taken"]))
    proto.graph.node[2].name = "#1"
    flag = proto.graph.output.add(name="#1 branch taken")
    flag.type.tensor_type.elem_type = onnx.TensorProto.BOOL
    model = Model(proto)
    names = select_taps(model, ["all"])
    assert "#1/then_branch/t#2" in names and "#1/then_branch/t" in names
    edited = tap(model, ["all"], feeds={"c": np.array(True), "x": X})
    assert edited
    out = run(edited.model, {"c": np.array(True), "x": X})
    np.testing.assert_array_equal(out["#1/then_branch/t#2"], X * W)
    np.testing.assert_array_equal(out["#1/then_branch/t"], np.maximum(X, 0))
    assert bool(out["#1 branch taken"]) is False  # the model's own tensor: Not(c)
    report = debug(model, DebugOptions(), feeds={"c": np.array(True), "x": X})
    assert report.passed
    executed = {b["name"]: b["executed"] for b in report.bodies["taps"]}
    assert executed["#1/then_branch/t#2"] and not executed["#1/else_branch/t"]


# A Loop body slice that grows with the iteration number: no scan output can stack it.
GROWING = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[5] x) => (float[5] y) {
    trip = Constant <value = int64 {3}> ()
    cond = Constant <value = bool {1}> ()
    y = Loop (trip, cond, x) <body = body (int64 i, bool c, float[5] acc)
        => (bool c_out, float[5] acc_out) {
            c_out = Identity(c)
            one = Constant <value = int64[1] {1}> ()
            zero = Constant <value = int64[1] {0}> ()
            i1 = Unsqueeze(i, zero)
            lim = Add(i1, one)
            part = Slice(x, zero, lim)
            total = ReduceSum <keepdims = 1> (part)
            acc_out = Add(acc, total)
        }>
}"""


def test_a_loop_tap_that_changes_shape_is_dropped_not_the_run():
    model = Model(parse(GROWING))
    x = np.arange(5, dtype=np.float32)
    report = debug(model, DebugOptions(), feeds={"x": x})
    assert report.passed and report.tap_check.passed
    assert "#2/body/part" in report.not_tappable
    measured = {s.name: s for s in report.stats}
    assert "#2/body/part" not in measured
    # the static ones stay: total = sum(x[: i + 1]) at every iteration
    total = measured["#2/body/total"]
    assert total.shape == [3, 1] and total.max == float(x[:3].sum())
    assert any("could not stack" in n for n in report.notes)
    edited = tap(model, ["all"], feeds={"x": x})
    assert edited and "#2/body/part" in edited.details["not_tappable"]
    out = run(edited.model, {"x": x})
    np.testing.assert_array_equal(out["#2/body/total"][:, 0], np.cumsum(x)[:3])


def test_inspect_names_lists_body_tensors_as_tap_takes_them(tmp_path):
    path = write(parse(IF_MODEL), tmp_path / "if.onnx")
    res = run_cli("inspect", path, "--names", "#0/else_branch/*", "--json")
    assert res.status == 0, res.stdout + res.stderr
    listed = {t["name"]: (t["op"], t["dtype"], t["shape"]) for t in res.json["names"]["tensors"]}
    assert listed == {
        "#0/else_branch/t": ("Sub", "float32", [2, 3]),
        "#0/else_branch/e_out": ("Relu", "float32", [2, 3]),
    }


def test_hostile_body_names_reach_the_terminal_escaped(tmp_path):
    proto = parse(IF_MODEL)
    proto.graph.node[0].name = "If\x07\u202e"
    for node in proto.graph.node[0].attribute[1].g.node:  # else_branch: t -> hostile
        node.input[:] = ["t\x1b[2J[bold]X" if x == "t" else x for x in node.input]
        node.output[:] = ["t\x1b[2J[bold]X" if x == "t" else x for x in node.output]
    path = write(proto, tmp_path / "hostile.onnx")
    np.savez(tmp_path / "f.npz", c=np.array(False), x=X)
    res = run_cli("debug", path, "--feeds", tmp_path / "f.npz")
    assert res.status == 0, res.stdout + res.stderr
    assert not any(c in res.stdout for c in "\x1b\x07\u202e")
    assert "If\\x07\\u202e/else_branch/t\\x1b[2J[bold]X" in res.stdout
    res = run_cli("debug", path, "--feeds", tmp_path / "f.npz", "--json")
    assert "If\x07\u202e/else_branch/t\x1b[2J[bold]X" in [t["name"] for t in res.json["taps"]]


def test_nan_born_in_a_branch_is_blamed_there_and_its_if_inherits_it():
    model = Model(parse(IF_MODEL.replace("t = Mul(x, w)", "t = Log(x)")))
    report = debug(model, DebugOptions(), feeds={"c": np.array(True), "x": X})
    assert not report.passed
    kinds = {x.tensor: x.kind for x in report.nonfinite}
    with np.errstate(invalid="ignore"):  # independent: numpy makes the NaN at the Log
        assert np.isnan(np.log(X)).any()
    assert kinds["#0/then_branch/t"] == "born"
    assert kinds["#0/then_branch/s"] == kinds["y"] == "inherited"
    assert [x.tensor for x in report.born] == ["#0/then_branch/t"]
    assert report.verdict().startswith("first NaN at `#0/then_branch/t`, produced by ")
