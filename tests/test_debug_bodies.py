"""``debug --ref`` inside If/Loop bodies: a weight planted inside a body is named as the
root cause (the node inside the body, and the iteration inside a Loop), not the If or
Loop node that holds it."""

from __future__ import annotations

import numpy as np
from conftest import parse, run_cli, write

# A named If (as exporters name them) on the sample rate; each branch is a small network
# whose weights are Constant nodes (as in the real voice-activity model) or body
# initializers.
IF_NET = """<ir_version: 8, opset_import: ["" : 17]>
agraph (int64 sr, float[1, 4] x) => (float[1, 2] y) {{
    sixteen = Constant <value = int64 {{16000}}> ()
    is16 = Equal(sr, sixteen)
    y = If <then_branch = g1 () => (float[1, 2] t_out) {{
            w1 = Constant <value = float[4, 3] w1 {{{w1}}}> ()
            h = MatMul(x, w1)
            r = Relu(h)
            w2 = Constant <value = float[3, 2] w2 {{0.5, -1.0, 1.5, 0.25, -0.5, 2.0}}> ()
            t_out = MatMul(r, w2)
        }},
        else_branch = g2 () => (float[1, 2] e_out) <float[4, 2] v = {{{v}}}> {{
            e_out = MatMul(x, v)
        }}> (is16)
}}"""
W1 = [0.1 * k - 0.5 for k in range(12)]
V = [0.2 * k - 0.7 for k in range(8)]


def _if_net(w1=W1, v=V) -> str:
    return IF_NET.format(w1=", ".join(f"{a:.3f}" for a in w1), v=", ".join(f"{a:.3f}" for a in v))


def _write_pair(tmp_path, good_text, bad_text):
    import onnx

    good, bad = parse(good_text), parse(bad_text)
    for proto in (good, bad):
        proto.graph.node[2].name = "If_0"  # named as exporters name it (the parser does not)
        onnx.checker.check_model(proto)
    return write(good, tmp_path / "good.onnx"), write(bad, tmp_path / "bad.onnx")


def _feeds(tmp_path, sr: int):
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    path = tmp_path / f"feeds{sr}.npz"
    np.savez(path, sr=np.array(sr, np.int64), x=x)
    return path


def test_weight_changed_inside_the_if_branch_is_the_root_cause(tmp_path):
    bad_w1 = list(W1)
    bad_w1[4] += 0.75  # one weight of the then-branch's first MatMul
    good, bad = _write_pair(tmp_path, _if_net(), _if_net(w1=bad_w1))
    res = run_cli("debug", bad, "--ref", good, "--feeds", _feeds(tmp_path, 16000), "--json")
    assert res.status == 1, res.stdout + res.stderr
    d = res.json
    root = d["bodies"]["root_cause"]
    assert root["where"] == "If_0/then_branch" and root["op"] == "Constant"
    assert root["name"] == "If_0/then_branch/w1"
    assert d["root_cause"]["node"] == "If_0/then_branch/#0"
    assert d["verdict"].startswith("root cause: `If_0/then_branch/#0` (Constant) inside `If_0`")
    assert any("not run in isolation" in n for n in d["notes"])
    # the terminal says the same
    text = run_cli("debug", bad, "--ref", good, "--feeds", _feeds(tmp_path, 16000))
    assert text.status == 1 and "inside `If_0`" in text.stdout

    # the else branch ran: nothing differs, and the then-branch taps were not executed
    res = run_cli("debug", bad, "--ref", good, "--feeds", _feeds(tmp_path, 8000), "--json")
    assert res.status == 0, res.stdout + res.stderr
    not_run = {b["name"] for b in res.json["bodies"]["taps"] if not b["executed"]}
    assert "If_0/then_branch/h" in not_run
    assert all("then_branch" not in layer["name"] for layer in res.json["comparison"])


def test_body_initializer_changed_names_the_node_that_reads_it(tmp_path):
    bad_v = list(V)
    bad_v[3] -= 1.0
    good, bad = _write_pair(tmp_path, _if_net(), _if_net(v=bad_v))
    res = run_cli("debug", bad, "--ref", good, "--feeds", _feeds(tmp_path, 8000), "--json")
    assert res.status == 1, res.stdout + res.stderr
    root = res.json["bodies"]["root_cause"]
    assert root["name"] == "If_0/else_branch/e_out" and root["op"] == "MatMul"
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    good_y = x @ np.array(V, np.float32).reshape(4, 2)
    bad_y = x @ np.array(bad_v, np.float32).reshape(4, 2)
    layer = next(c for c in res.json["comparison"] if c["name"] == "If_0/else_branch/e_out")
    assert abs(layer["max_abs"] - float(np.abs(bad_y - good_y).max())) < 1e-6


# A Loop whose body raises a body weight to the power of the iteration number: at
# iteration 0 any weight gives 1, so a changed weight shows from iteration 1 on.
LOOP_NET = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[3] x) => (float[3] y) {{
    trip = Constant <value = int64 {{4}}> ()
    cond = Constant <value = bool {{1}}> ()
    y = Loop (trip, cond, x) <body = body (int64 i, bool c, float[3] acc)
        => (bool c_out, float[3] acc_out) <float[3] w = {{{w}}}> {{
            c_out = Identity(c)
            i_f = Cast <to = 1> (i)
            p = Pow(w, i_f)
            acc_out = Mul(acc, p)
        }}>
}}"""


def test_root_cause_in_a_loop_names_the_iteration(tmp_path):
    import onnx

    good = parse(LOOP_NET.format(w="1.0, 0.5, 2.0"))
    bad = parse(LOOP_NET.format(w="1.0, 0.75, 2.0"))
    good.graph.node[2].name = bad.graph.node[2].name = "Loop_0"
    onnx.checker.check_model(bad)
    good_path, bad_path = write(good, tmp_path / "good.onnx"), write(bad, tmp_path / "bad.onnx")
    res = run_cli("debug", bad_path, "--ref", good_path, "--json")
    assert res.status == 1, res.stdout + res.stderr
    root = res.json["bodies"]["root_cause"]
    assert root["name"] == "Loop_0/body/p" and root["op"] == "Pow"
    # independent: numpy's powers differ first at i = 1
    w_good, w_bad = np.array([1.0, 0.5, 2.0]), np.array([1.0, 0.75, 2.0])
    first = next(i for i in range(4) if not np.allclose(w_good**i, w_bad**i))
    assert root["iteration"] == [first] == [1]
    assert ", iteration 1:" in res.json["verdict"]

    # the same against the tapped values saved from the good model
    saved = tmp_path / "good_taps.npz"
    ok = run_cli("debug", good_path, "--save", saved)
    assert ok.status == 0, ok.stdout + ok.stderr
    res = run_cli("debug", bad_path, "--ref", saved, "--json")
    assert res.status == 1 and res.json["bodies"]["root_cause"]["iteration"] == [1]


# A Scan whose state starts at zero: a changed body weight shows from iteration 1 on.
SCAN_NET = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2] s0, float[5, 2] xs) => (float[2] s, float[5, 2] ys) {{
    s, ys = Scan <num_scan_inputs = 1, body = body (float[2] s_in, float[2] row)
        => (float[2] s_out, float[2] y) <float[2] half = {{{half}}}> {{
            d = Mul(s_in, half)
            s_out = Add(d, row)
            y = Identity(s_out)
        }}> (s0, xs)
}}"""


def test_root_cause_in_a_scan_names_the_node_and_iteration(tmp_path):
    good = write(parse(SCAN_NET.format(half="0.5, 0.5")), tmp_path / "good.onnx")
    bad = write(parse(SCAN_NET.format(half="0.5, 0.8")), tmp_path / "bad.onnx")
    xs = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    np.savez(tmp_path / "f.npz", s0=np.zeros(2, np.float32), xs=xs)
    res = run_cli("debug", bad, "--ref", good, "--feeds", tmp_path / "f.npz", "--json")
    assert res.status == 1, res.stdout + res.stderr
    root = res.json["bodies"]["root_cause"]
    assert root["name"] == "#0/body/d" and root["op"] == "Mul"

    # independent: the two recurrences in numpy first differ at step 1 (d = 0 at step 0)
    def steps(half):
        s, out = np.zeros(2, np.float32), []
        for row in xs:
            d = s * np.float32(half)
            out.append(d)
            s = d + row
        return np.stack(out)

    differs = ~np.isclose(steps([0.5, 0.5]), steps([0.5, 0.8]), rtol=1e-4, atol=1e-4)
    assert root["iteration"] == [int(np.argwhere(differs.any(axis=1))[0][0])] == [1]


def test_a_body_difference_that_does_not_reach_the_outputs_is_shown_not_blamed(tmp_path):
    dead = "            unused = Constant <value = float[2] u {{{u}}}> ()\n            h = MatMul"
    good_text = _if_net().replace("            h = MatMul", dead.format(u="1.0, 2.0"))
    bad_text = _if_net().replace("            h = MatMul", dead.format(u="1.0, 2.5"))
    good, bad = _write_pair(tmp_path, good_text, bad_text)
    res = run_cli("debug", bad, "--ref", good, "--feeds", _feeds(tmp_path, 16000), "--json")
    assert res.status == 0, res.stdout + res.stderr
    assert res.json["verdict"].startswith("outputs within tolerance (`y` compared); no failure")
    assert res.json["bodies"]["root_cause"]["name"] == "If_0/then_branch/unused"
