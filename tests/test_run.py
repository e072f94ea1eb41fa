"""`surgeon run` and `surgeon recipes`: the recipe runner, its failure paths, provenance."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, write

import surgeon
from surgeon.recipe_runner import load_recipe, parse_params
from surgeon.recipes import BUILTIN

GOOD = '''
"""Tap the first conv (a user recipe)."""
import surgeon

PARAMS = {"node": (str, "conv0", "node to tap"), "times": (int, 1, "how often")}

def recipe(models, node="conv0", times=1):
    result = None
    for _ in range(times):
        result = surgeon.tap(models[0], [node])
    return result
'''

BAD_EDIT = '''
"""An edit that changes the maths: verification must catch it."""
import numpy as np
import onnx
import onnx
import surgeon

def recipe(models):
    model = models[0]
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    w = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    edited = model.with_proto(proto)
    report = surgeon.verify(edited, model, tolerance=surgeon.EXACT)
    first = surgeon.record_edit(surgeon.Edited(edited, report, "bad-edit"))
    return surgeon.tap(first.model, ["conv0"])
'''

RAISES = '''
"""A recipe with a bug."""
def recipe(models):
    return {}["missing"]
'''


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_user_recipe_runs_and_records_provenance(cli, tmp_path):
    recipe = _write(tmp_path, "good.py", GOOD)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, "--param", "times=2", "--json")
    assert res.status == 0, res.stderr
    data = res.json
    assert data["schema"] == "surgeon.run/1" and data["passed"]
    assert [s["edit"] for s in data["steps"]] == ["tap", "tap"]
    assert all(s["report"]["tolerance"]["exact"] for s in data["steps"])
    history = surgeon.load(out).provenance
    assert [h["edit"] for h in history] == ["tap", "recipe:good.py"]
    assert history[-1]["params"] == {"times": 2}


def test_positional_key_value_params(cli, tmp_path):
    recipe = _write(tmp_path, "good.py", GOOD)
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "node=conv1", "-o", tmp_path / "o.onnx")
    assert res.status == 0, res.stderr
    assert "conv1" in res.stdout


def test_failed_verification_stops_and_writes_nothing(cli, tmp_path):
    recipe = _write(tmp_path, "bad.py", BAD_EDIT)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out)
    assert res.status == 1
    assert not out.exists()
    assert "step 1 (bad-edit) failed verification" in res.stdout.replace("\n", " ")
    # only the failing step ran: the tap after it never happened
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, "--json")
    assert [s["edit"] for s in res.json["steps"]] == ["bad-edit"]


def test_keep_going_records_and_writes_but_exits_1(cli, tmp_path):
    recipe = _write(tmp_path, "bad.py", BAD_EDIT)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, "--keep-going", "--json")
    assert res.status == 1
    assert [s["passed"] for s in res.json["steps"]] == [False, True]
    assert out.exists()


def test_recipe_that_raises_is_exit_2_without_traceback(cli, tmp_path):
    recipe = _write(tmp_path, "buggy.py", RAISES)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out)
    assert res.status == 2
    assert "recipe buggy.py raised KeyError" in res.stderr and "buggy.py:4" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "params, needle",
    [
        (["--param", "tims=2"], "unknown parameter `tims`; did you mean `times`?"),
        (["--param", "times=two"], "parameter `times` wants int, got `two`"),
        (["--param", "novalue"], "`novalue` is not key=value"),
    ],
)
def test_bad_params_exit_2_and_list_accepted(cli, tmp_path, params, needle):
    recipe = _write(tmp_path, "good.py", GOOD)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, *params)
    assert res.status == 2
    text = res.stderr.replace("\n", " ")
    assert needle in text
    assert "Accepted: node (str, default 'conv0')" in text
    assert not out.exists()


def test_required_param(tmp_path):
    label, module = load_recipe("split_model")
    with pytest.raises(surgeon.UsageError, match="`at` is required"):
        parse_params(module, label, [])
    assert parse_params(module, label, ["at=x"]) == {"at": "x"}


def test_unknown_recipe_suggests(cli, tmp_path):
    res = cli("run", "split_modle", SAMPLES / "two_conv.onnx", "-o", tmp_path / "o.onnx")
    assert res.status == 2 and "did you mean `split_model`" in res.stderr


def test_missing_recipe_file(cli, tmp_path):
    res = cli("run", tmp_path / "nope.py", SAMPLES / "two_conv.onnx", "-o", tmp_path / "o.onnx")
    assert res.status == 2 and "does not exist" in res.stderr


def test_model_recipe_needs_output(cli, tmp_path):
    recipe = _write(tmp_path, "good.py", GOOD)
    res = cli("run", recipe, SAMPLES / "two_conv.onnx")
    assert res.status == 2 and "-o OUT.onnx" in res.stderr


def test_output_may_not_overwrite_input(cli, samples):
    res = cli(
        "run",
        "split_model",
        samples / "tiny_yolo.onnx",
        "--param",
        "at=backbone/act2_out",
        "-o",
        samples / "tiny_yolo.onnx",
    )
    assert res.status == 2


def test_recipes_lists_every_builtin(cli):
    res = cli("recipes", "--json")
    assert res.status == 0, res.stderr
    names = [r["name"] for r in res.json["recipes"]]
    assert names == list(BUILTIN)
    assert all(r["summary"] for r in res.json["recipes"])
    text = cli("recipes").stdout
    assert "split_model" in text and "find_first_nan" in text


# ------------------------------------------------------------ the cookbook, on sample models
def test_split_model_parts_chain_back(cli, tmp_path):
    res = cli(
        "run",
        "split_model",
        SAMPLES / "tiny_yolo.onnx",
        "--param",
        "at=backbone/act2_out",
        "-o",
        tmp_path / "parts",
        "--json",
    )
    assert res.status == 0, res.stderr
    assert [s["edit"] for s in res.json["steps"]] == ["extract", "extract", "split-check"]
    assert res.json["outputs"] == ["after", "before"]
    before = surgeon.load(tmp_path / "parts" / "before.onnx")
    after = surgeon.load(tmp_path / "parts" / "after.onnx")
    assert before.output_names == ["backbone/act2_out"]
    assert after.input_names == ["backbone/act2_out"]
    # the detector's own head/* nodes are in the part after the cut
    assert any(n.name.startswith("head/") for n in after.proto.graph.node)
    assert not any(n.name.startswith("head/") for n in before.proto.graph.node)
    original = surgeon.load(SAMPLES / "tiny_yolo.onnx")
    feeds = surgeon.make_feeds(
        original, surgeon.FeedOptions(seed=3, shapes={"images": (2, 3, 64, 64)})
    )
    mid = surgeon.run(before, feeds)
    out = surgeon.run(after, mid)["output0"]
    assert np.array_equal(out, surgeon.run(original, feeds)["output0"])


def test_find_first_nan_recipe(cli):
    res = cli("run", "find_first_nan", SAMPLES / "tiny_yolo.onnx", "--json")
    assert res.status == 0, res.stderr
    assert res.json["reports"][0]["schema"] == "surgeon.debug/1"


def test_compare_layers_recipe(cli, tmp_path):
    res = cli(
        "run", "compare_layers", SAMPLES / "two_conv.onnx", SAMPLES / "two_conv.onnx", "--json"
    )
    assert res.status == 0, res.stderr
    assert res.json["reports"][0]["root_cause"] is None
    res = cli("run", "compare_layers", SAMPLES / "two_conv.onnx")
    assert res.status == 2 and "needs a reference" in res.stderr


CATCHES = '''
"""Catches the failed verification and carries on: the run must still fail, writing nothing."""
import onnx
import surgeon

def recipe(models):
    model = models[0]
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.initializer[0].raw_data = bytes(len(proto.graph.initializer[0].raw_data))
    edited = model.with_proto(proto)
    try:
        surgeon.record_edit(
            surgeon.Edited(edited, surgeon.verify(edited, model, tolerance=surgeon.EXACT), "zero-weights")
        )
    except surgeon.SurgeonError:
        pass
    return surgeon.tap(model, ["conv0"])
'''

BARE = '''
"""Returns a model edited behind surgeon's back: nothing verified it."""
import surgeon

def recipe(models):
    graph = models[0].to_graph()
    graph.nodes[0].name = "renamed"
    return surgeon.Model.from_graph(graph, base=models[0])
'''


@pytest.mark.parametrize("text", [CATCHES, BARE], ids=["caught-failure", "bare-model"])
def test_unverified_or_failed_results_are_never_written(cli, tmp_path, text):
    recipe = _write(tmp_path, "r.py", text)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, "--json")
    assert res.status == 1
    assert res.json["passed"] is False
    assert not out.exists()


def test_report_recipe_refuses_output(cli, tmp_path):
    res = cli("run", "find_first_nan", SAMPLES / "tiny_yolo.onnx", "-o", tmp_path / "x.onnx")
    assert res.status == 2 and "produces a report" in res.stderr


def test_split_model_with_two_inputs(cli, tmp_path):
    import onnx

    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] a, float[2, 3] b) => (y) { t = Relu(a)
     y = Add(t, b) }""")
    onnx.save(m, str(tmp_path / "two_in.onnx"))
    res = cli(
        "run",
        "split_model",
        tmp_path / "two_in.onnx",
        "--param",
        "at=t",
        "-o",
        tmp_path / "sp",
        "--json",
    )
    assert res.status == 0, res.stderr
    assert surgeon.load(tmp_path / "sp" / "before.onnx").input_names == ["a"]
    assert sorted(surgeon.load(tmp_path / "sp" / "after.onnx").input_names) == ["b", "t"]


NAN_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 8] x) => (float[2, 8] y) {
    a = Abs (x)
    b = Neg (a)
    one = Constant <value = float {1.0}> ()
    c = Sub (b, one)
    d = Sqrt (c)
    y = Add (d, x)
}"""


@pytest.mark.parametrize("keep_going", [False, True])
def test_find_first_nan_with_a_nan_prints_the_verdict_and_exits_1(cli, tmp_path, keep_going):
    path = write(parse(NAN_MODEL), tmp_path / "nan.onnx")
    args = ["run", "find_first_nan", path] + (["--keep-going"] if keep_going else [])
    res = cli(*args)
    assert res.status == 1, res.stderr
    text = " ".join(res.stdout.split())
    assert text.startswith("first NaN at `d`, produced by `#4` (Sqrt) from finite inputs")
    if keep_going:
        assert "1 of 1 step(s) found a problem" in text
    else:
        assert "FAIL: step 1 (check: debug) found a problem: first NaN at `d`" in text
    res = cli(*args, "--json")
    assert res.status == 1
    (step,) = res.json["steps"]
    assert step["kind"] == "check" and step["passed"] is False
    assert res.json["reports"][0]["first_anomaly"]["name"] == "d"


def test_compare_layers_with_a_divergence_exits_1(cli, tmp_path):
    from onnx import numpy_helper

    m = onnx.load(str(SAMPLES / "two_conv.onnx"))
    for t in m.graph.initializer:
        if t.name == "conv1.weight":
            a = numpy_helper.to_array(t).copy()
            a.flat[0] += 0.5
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    broken = write(m, tmp_path / "broken.onnx")
    res = cli("run", "compare_layers", broken, "--param", f"ref={SAMPLES / 'two_conv.onnx'}")
    assert res.status == 1, res.stderr
    text = " ".join(res.stdout.split())
    assert text.startswith("root cause: `conv1` (Conv)")
    assert "internal error" not in res.stderr
    res = cli("run", "compare_layers", broken, SAMPLES / "two_conv.onnx", "--keep-going")
    assert res.status == 1 and "1 of 1 step(s) found a problem" in " ".join(res.stdout.split())


RECORDS_CHECKS = '''
"""Records a failing check mid-run, then an edit: the check stops the run."""
import surgeon
from surgeon.recipe_runner import record_check

class Finding:
    def __bool__(self):
        return False
    def verdict(self):
        return "found a planted problem"
    def to_dict(self):
        return {"found": True}

def recipe(models):
    record_check(Finding(), "planted")
    return surgeon.tap(models[0], ["conv0"])
'''


def test_a_recipe_records_a_finding_as_a_check_step(cli, tmp_path):
    recipe = tmp_path / "finds.py"
    recipe.write_text(RECORDS_CHECKS)
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", tmp_path / "out.onnx")
    assert res.status == 1
    assert "step 1 (check: planted) found a problem: found a planted problem" in " ".join(
        res.stdout.split()
    )
    assert not (tmp_path / "out.onnx").exists()
    res = cli(
        "run",
        recipe,
        SAMPLES / "two_conv.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--keep-going",
        "--json",
    )
    assert res.status == 1
    assert [(s["kind"], s["passed"]) for s in res.json["steps"]] == [
        ("check", False),
        ("edit", True),
    ]


HANDBUILT_FAIL = '''
"""Returns a verified model under a failing report of its own."""
import surgeon

def recipe(models):
    good = surgeon.rename(models[0], {"in": "pix"})
    bad = surgeon.verify(models[0], models[0])
    bad.tensors[0].status = "mismatch"
    return surgeon.Edited(good.model, bad, "hand")
'''

MUTATED = '''
"""Changes a model after its verification."""
import surgeon

def recipe(models):
    edited = surgeon.rename(models[0], {"in": "pix"})
    del edited.model.proto.graph.node[-1]
    return edited
'''

WEIGHT_POKED = '''
"""Rewrites a weight of a verified model in place."""
import surgeon

def recipe(models):
    edited = surgeon.rename(models[0], {"in": "pix"})
    w = edited.model.proto.graph.initializer[0]
    w.raw_data = bytes(len(w.raw_data))
    return edited
'''

NOT_VERIFIED = '''
"""Saves an edit made with verification off."""
import surgeon

def recipe(models):
    return surgeon.rename(models[0], {"in": "pix"}, verify=False)
'''


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (HANDBUILT_FAIL, "returned with a failed verification (hand:"),
        (MUTATED, "changed after its verification in step 1 (rename)"),
        (WEIGHT_POKED, "changed after its verification in step 1 (rename)"),
        (NOT_VERIFIED, "step 1 (rename), which ran with verification off"),
    ],
    ids=["falsy-edited", "node-deleted", "weight-rewritten", "verify-off"],
)
def test_results_the_verification_does_not_vouch_for_are_not_written(cli, tmp_path, text, says):
    recipe = _write(tmp_path, "r.py", text)
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", out, "--json")
    assert res.status == 1
    assert res.json["passed"] is False
    assert says in res.json["error"]
    assert not out.exists()


def test_fingerprint_sees_structure_and_weights_not_provenance():
    from surgeon.recipe_steps import _WHOLE, fingerprint

    model = surgeon.load(SAMPLES / "two_conv.onnx")
    proto = model.proto
    before = fingerprint(proto)
    model.add_provenance("note", {})  # metadata only
    assert fingerprint(proto) == before
    proto.graph.node[0].attribute[0].ints[0] += 1
    after_attr = fingerprint(proto)
    assert after_attr != before
    # a large tensor (sampled, not hashed whole) rewritten with other values
    big = np.random.default_rng(0).standard_normal(_WHOLE // 2).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(big, "big"))
    with_big = fingerprint(proto)
    proto.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(big[::-1].copy(), "big"))
    assert fingerprint(proto) not in (with_big, after_attr)
