"""The edit contract: every edit copies, changes, records provenance once, verifies, and
returns a frozen result; recording recipe steps is the runner's, not a constructor's."""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
import onnx
import pytest
from conftest import parse

import surgeon
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.extract import extract
from surgeon.edits.merge import merge
from surgeon.edits.rename import rename
from surgeon.edits.shapes import reshape_io
from surgeon.edits.tap import tap
from surgeon.model import Model
from surgeon.recipe_steps import RECORDER, Recorder

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (y) {
    a = Relu(x)
    b = Sigmoid(a)
    y = Add(a, b)
}
"""
TAIL = """
<ir_version: 8, opset_import: ["" : 17]>
tail (float[N, 4] y) => (z) {
    z = Exp(y)
}
"""


def model() -> Model:
    return Model(parse(TEXT))


# Every edit, as (name, call): each must keep the contract.
EDITS = {
    "tap": lambda m: tap(m, ["a"]),
    "extract": lambda m: extract(m, ["a"], ["y"]),
    "rename": lambda m: rename(m, {"y": "out"}),
    "merge": lambda m: merge(m, Model(parse(TAIL))),
    "reshape_io": lambda m: reshape_io(m, {"x": "Bx4"}),
}


@pytest.mark.parametrize("name", EDITS)
def test_every_edit_keeps_the_contract(name):
    m = model()
    before = m.proto.SerializeToString()
    result = EDITS[name](m)
    assert isinstance(result, Edited) and result, result.report.summary()
    # the input is untouched, and the result is not the input
    assert m.proto.SerializeToString() == before
    assert result.model.proto is not m.proto
    # one provenance record, the edit's own, appended once
    records = result.model.provenance
    assert [r["edit"] for r in records][-1:] == [result.edit]
    assert sum(r["edit"] == result.edit for r in records) == 1
    # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.report = None  # type: ignore[misc]


def _break_relu(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"


def test_a_change_that_breaks_the_values_gives_a_failed_frozen_result(tmp_path):
    m = model()
    before = m.proto.SerializeToString()
    result = apply_edit(
        m,
        "broken",
        {"why": "test"},
        _break_relu,
        lambda edited: Correspondence("broken: same outputs"),
        label="broken",
    )
    assert not result and result.report is not None and not result.report.passed
    assert result.report.candidate == f"{m.name} (broken)"
    assert [r["edit"] for r in result.model.provenance] == ["broken"]
    assert m.proto.SerializeToString() == before
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.model = m  # type: ignore[misc]


def test_a_skipped_check_leaves_no_report_and_runs_nothing():
    asked = []
    result = apply_edit(
        model(),
        "noop",
        {},
        lambda proto: None,
        lambda edited: asked.append(edited) or Correspondence("never"),
        check=Check(enabled=False),
    )
    assert result.report is None and result and asked == []


def test_a_change_without_copy_must_build_a_new_model():
    m = model()
    with pytest.raises(TypeError):
        apply_edit(m, "x", {}, lambda proto: proto, lambda e: Correspondence("x"), copy=False)


# ---------------------------------------------------------------------- recording
def test_an_edited_built_by_hand_records_nothing():
    recorder = Recorder()
    token = RECORDER.set(recorder)
    try:
        m = model()
        Edited(m, None, "by-hand")
        assert recorder.steps == []
        surgeon.record_edit(Edited(m, None, "recorded"))
        tap(m, ["a"])
    finally:
        RECORDER.reset(token)
    assert [s.edit for s in recorder.steps] == ["recorded", "tap"]


def test_a_failed_edit_stops_a_recording_run_unless_it_keeps_going():
    m = model()

    def broken():
        return apply_edit(m, "broken", {}, _break_relu, lambda e: Correspondence("t"))

    for keep_going, raises in ((False, True), (True, False)):
        recorder = Recorder(keep_going)
        token = RECORDER.set(recorder)
        try:
            if raises:
                with pytest.raises(surgeon.VerificationFailed):
                    broken()
            else:
                assert not broken()
        finally:
            RECORDER.reset(token)
        assert [(s.edit, s.passed) for s in recorder.steps] == [("broken", False)]


RECIPE = '''
"""Breaks the model through the contract, then taps: the run stops at the first step."""
import surgeon
from surgeon.edits.contract import Correspondence, apply_edit

def recipe(models):
    def change(proto):
        for node in proto.graph.node:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
    broken = apply_edit(models[0], "broken", {}, change, lambda e: Correspondence("t"))
    return surgeon.tap(broken.model, ["a"])
'''


def test_surgeon_run_stops_on_a_failed_contract_step(tmp_path, cli):
    path = tmp_path / "m.onnx"
    onnx.save(parse(TEXT), path)
    recipe = tmp_path / "broken.py"
    recipe.write_text(textwrap.dedent(RECIPE))
    out = tmp_path / "out.onnx"
    res = cli("run", recipe, path, "-o", out, "--json")
    assert res.status == 1 and not out.exists()
    assert [(s["edit"], s["passed"]) for s in res.json["steps"]] == [("broken", False)]
    res = cli("run", recipe, path, "-o", out, "--json", "--keep-going")
    assert res.status == 1  # (--keep-going still writes the outputs: see test_run)
    assert [(s["edit"], s["passed"]) for s in res.json["steps"]] == [
        ("broken", False),
        ("tap", True),
    ]


def test_build_nms_says_it_built_a_model():
    built = surgeon.build_nms("yolov8", 3, max_det=5)
    assert isinstance(built, surgeon.Built) and isinstance(built, Model)
    assert built.spec["classes"] == 3 and built.provenance[-1]["edit"] == "nms"


def test_values_are_unchanged_by_a_passing_edit():
    # an independent check of what the contract's verification claims
    m = model()
    result = rename(m, {"y": "out"})
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    a = np.maximum(x, 0)
    expected = a + 1 / (1 + np.exp(-a))
    got = surgeon.run(result.model, {"x": x})["out"]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
