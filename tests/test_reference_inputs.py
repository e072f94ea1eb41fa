"""`debug --ref`: a reference model with inputs the model lacks, and root-cause verdicts
that claim only what the comparison shows (inputs without a reference value)."""

from __future__ import annotations

import numpy as np
from conftest import parse, write

from surgeon.debugging import DebugOptions, debug
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.loading import load

# The candidate holds the scale as a constant; the reference takes it as an input (a
# sample rate, a temperature): the reference has one more input.
CANDIDATE = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    scale = Constant <value = float {2.0}> ()
    a = Relu (x)
    y = Mul (a, scale)
}"""
REFERENCE = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x, float scale) => (y) {
    a = Relu (x)
    y = Mul (a, scale)
}"""


def _pair(tmp_path):
    return write(parse(CANDIDATE), tmp_path / "cand.onnx"), write(
        parse(REFERENCE), tmp_path / "ref.onnx"
    )


def _x():
    return np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


# ------------------------------------------------------------ a reference's own inputs
def test_reference_input_fed_from_inputs_file(cli, tmp_path):
    cand, ref = _pair(tmp_path)
    np.savez(tmp_path / "feeds.npz", x=_x(), scale=np.array(2.0, np.float32))
    res = cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz", "--json")
    assert res.status == 0, res.stdout + res.stderr
    assert res.json["reference_feeds"] == {
        "x": "model input `x`",
        "scale": "feeds file feeds.npz",
    }
    assert "all 3 compared tensors match" in res.json["verdict"]
    text = cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz").stdout
    assert "scale <- feeds file feeds.npz" in text.replace("\n", " ")


def test_reference_input_fed_from_inputs_file_wrong_value_diverges(cli, tmp_path):
    cand, ref = _pair(tmp_path)
    x = _x()
    np.savez(tmp_path / "feeds.npz", x=x, scale=np.array(3.0, np.float32))
    res = cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz", "--json")
    assert res.status == 1
    y = {row["name"]: row for row in res.json["comparison"]}["y"]
    assert np.isclose(y["max_abs"], np.abs(np.maximum(x, 0)).max())  # |2a - 3a| = |a|


def test_reference_input_without_value_is_random_by_the_seed_rule(cli, tmp_path):
    cand, ref = _pair(tmp_path)
    np.savez(tmp_path / "feeds.npz", x=_x())
    res = cli(
        "debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz", "--seed", "3", "--json"
    )
    assert res.status == 1  # a random scale is not 2
    assert res.json["reference_feeds"]["scale"] == "random (seed 3)"
    assert any("`scale`" in n and "random" in n for n in res.json["notes"])
    # The same value `make_feeds` gives the reference on its own with that seed.
    scale = make_feeds(load(ref), FeedOptions(seed=3))["scale"]
    y = {row["name"]: row for row in res.json["comparison"]}["y"]
    a = np.maximum(_x(), 0)
    assert np.isclose(y["max_abs"], np.abs(a * 2 - a * scale).max(), rtol=1e-5)


def test_reference_input_without_inputs_file(tmp_path):
    cand, ref = _pair(tmp_path)
    report = debug(load(cand), DebugOptions(reference=load(ref)))
    assert report.reference_feeds["scale"] == "random (seed 0)"
    assert report.reference_feeds["x"] == "model input `x`"


def test_reference_input_with_wrong_dtype_is_an_error(cli, tmp_path):
    cand, ref = _pair(tmp_path)
    np.savez(tmp_path / "feeds.npz", x=_x(), scale=np.array(2, np.int64))
    res = cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz")
    assert res.status == 2
    assert "`scale` in" in res.stderr and "int64" in res.stderr and "float32" in res.stderr


def test_key_of_neither_model_is_still_refused(cli, tmp_path):
    cand, ref = _pair(tmp_path)
    np.savez(tmp_path / "feeds.npz", x=_x(), scael=np.array(2.0, np.float32))
    res = cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz")
    assert res.status == 2
    err = " ".join(res.stderr.split())
    assert "`scael`, which is not an input of cand.onnx (nor of the reference)" in err
    assert "`scale`" in err  # the close match among the reference's own inputs


def test_reference_key_is_not_accepted_without_a_reference_model(cli, tmp_path):
    cand, _ = _pair(tmp_path)
    np.savez(tmp_path / "feeds.npz", x=_x(), scale=np.array(2.0, np.float32))
    res = cli("debug", cand, "--feeds", tmp_path / "feeds.npz")
    assert res.status == 2 and "`scale`, which is not an input" in " ".join(res.stderr.split())


def test_reference_failing_on_random_input_says_so(cli, tmp_path):
    # Reshape to a shape given by an input: a random shape cannot run.
    cand = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    s = Constant <value = int64[1] {8}> ()
    y = Reshape (x, s)
}"""),
        tmp_path / "cand.onnx",
    )
    ref = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x, int64[1] s) => (y) {
    y = Reshape (x, s)
}"""),
        tmp_path / "ref.onnx",
    )
    res = cli("debug", cand, "--ref", ref)
    assert res.status == 2
    err = res.stderr.replace("\n", " ")
    assert "random values for its input(s) `s`" in err and "--feeds" in err
    np.savez(tmp_path / "feeds.npz", x=_x(), s=np.array([8], np.int64))
    assert cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz").status == 0


# ------------------------------------------------------------ what a root cause shows
# c and d come first in graph order; d's input c has no reference value below.
BRANCHES = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    c = Abs (x)
    d = Sigmoid (c)
    a = Relu (x)
    b = Neg (a)
    e = Add (b, c)
    y = Add (d, e)
}"""


def _acts(x):
    c = np.abs(x)
    d = 1 / (1 + np.exp(-c))
    a = np.maximum(x, 0)
    b = -a
    return {"c": c, "d": d, "a": a, "b": b, "e": b + c, "y": d + b + c}


def _npz(tmp_path, keys, wrong):
    x = _x()
    acts = _acts(x)
    for k in wrong:
        acts[k] = acts[k] + 1.0
    path = tmp_path / "acts.npz"
    np.savez(path, x=x, **{k: acts[k].astype(np.float32) for k in keys})
    return path


def test_candidate_with_compared_inputs_ranks_above_one_without(cli, tmp_path):
    model = write(parse(BRANCHES), tmp_path / "m.onnx")
    acts = _npz(tmp_path, ["d", "a", "b"], wrong=["d", "b"])  # c was not saved
    res = cli("debug", model, "--ref", acts, "--json")
    assert res.status == 1
    root = res.json["root_cause"]
    assert root["name"] == "b"  # after d in graph order, but its input was compared
    assert root["matched_inputs"] == ["a"] and root["uncompared_inputs"] == []
    # judged by its own error: run on the reference's values at its inputs
    verdict = res.json["verdict"].replace("\n", " ")
    assert "`b` diverges" in verdict and "run on the reference's values at its inputs" in verdict
    assert res.json["isolated_verdict"] == "found"
    other = res.json["other_root_causes"]
    assert [r["name"] for r in other] == ["d"]
    assert other[0]["uncompared_inputs"] == ["c"] and other[0]["matched_inputs"] == []


def test_root_whose_inputs_were_not_compared_says_so(cli, tmp_path):
    model = write(parse(BRANCHES), tmp_path / "m.onnx")
    acts = _npz(tmp_path, ["d"], wrong=["d"])
    res = cli("debug", model, "--ref", acts, "--json")
    verdict = res.json["verdict"]
    assert "while all its inputs match" not in verdict
    # c's producer was run with d on the reference's x: the verdict says so
    assert (
        "its input(s) `c` had no reference value and were computed with it by `Abs->c`" in verdict
    )
    assert res.json["uncompared_inputs"] == ["c"]
    text = " ".join(cli("debug", model, "--ref", acts).stdout.split())
    assert "inputs match" not in text  # neither the verdict nor a note contradicts it
    assert "had no reference value" in text
    html = tmp_path / "r.html"
    assert cli("debug", model, "--ref", acts, "--html", html).status == 1
    assert "inputs match" not in html.read_text()


def test_root_with_some_inputs_compared_names_the_others(cli, tmp_path):
    model = write(parse(BRANCHES), tmp_path / "m.onnx")
    acts = _npz(tmp_path, ["b", "e"], wrong=["e"])  # e = Add(b, c): b compared, c not
    res = cli("debug", model, "--ref", acts, "--json")
    assert res.json["root_cause"]["name"] == "e"
    assert "its input(s) `c` had no reference value" in res.json["verdict"]
    assert res.json["uncompared_inputs"] == ["c"]


def test_weights_of_another_reference_model_are_not_claimed(tmp_path):
    model = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    w = Constant <value = float {2.0}> ()
    y = Mul (x, w)
}"""),
        tmp_path / "m.onnx",
    )
    ref = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    w = Constant <value = float {3.0}> ()
    y = Mul (x, w)
}"""),
        tmp_path / "ref.onnx",
    )
    report = debug(load(model), DebugOptions(reference=load(ref), taps=("y",)))
    rc = report.root_cause
    assert rc.diff.name == "y"
    assert rc.matched_inputs == ["x"]  # the graph input: the same feed on both sides
    assert rc.uncompared_inputs == []  # the weight: neither claimed nor missing
    # its own error, run on the reference's value of x with this model's weight
    assert "run on the reference's values at its inputs" in report.verdict()
    assert "had no reference value" not in report.verdict()
    assert "all its inputs match" not in report.verdict()
