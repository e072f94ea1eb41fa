"""surgeon.precision edge cases: units onnxruntime refuses, subgraphs, unpaired inputs,
saved values as the reference, ties and each verdict."""

from __future__ import annotations

import json

import numpy as np
from conftest import parse

from surgeon.compare import Tolerance
from surgeon.model import Model
from surgeon.precision import analyse_precision, pair_tensors
from surgeon.runner import RunOptions, run

TOL = Tolerance(1e-3, 1e-3)


def values(model: Model, feeds: dict) -> dict:
    outs = [o for n in model.proto.graph.node for o in n.output if o]
    return {**feeds, **run(model, feeds, outputs=outs, options=RunOptions(optimization="disabled"))}


def feeds_for(shape=(2, 3), seed=0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


SIMPLE = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 3] x) => (y) {
    a = Relu (x)
    b = Neg (a)
    y = Abs (b)
}"""


def test_a_unit_onnxruntime_refuses_is_reported_and_the_rest_still_run():
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
        agraph (float[2, 3] x) => (y) {
            a = Relu (x)
            b = my.ops.Mystery (a)
            y = Neg (b)
        }"""
    )
    model = Model(proto)
    feeds = feeds_for()
    a = np.maximum(feeds["x"], 0)
    reference = {**feeds, "a": a, "b": a * 2, "y": -a * 2}
    report = analyse_precision(model, list(reference), reference, None, TOL)
    by_node = {u.node: u for u in report.run.units}
    assert by_node["Mystery->b"].status == "failed"
    assert "onnxruntime could not" in by_node["Mystery->b"].reason
    assert by_node["Relu->a"].severity.tier == "within"
    assert by_node["Neg->y"].severity.tier == "within"
    assert report.run.runs > 1  # the refused batch was split
    assert report.root_cause.verdict == "clean"
    json.dumps(report.to_dict())


def test_subgraph_nodes_are_skipped_with_a_reason():
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 3] x, bool c) => (y) {
            y = If (c) <
                then_branch = g1 () => (float[2, 3] t) { t = Relu (x) },
                else_branch = g2 () => (float[2, 3] e) { e = Neg (x) }
            >
        }"""
    )
    feeds = {**feeds_for(), "c": np.array(True)}
    reference = {**feeds, "y": np.maximum(feeds["x"], 0)}
    report = analyse_precision(Model(proto), list(reference), reference, None, TOL)
    (unit,) = report.run.units
    assert unit.status == "skipped" and "subgraph" in unit.reason
    assert report.root_cause.verdict == "unchecked"
    assert not report  # nothing checked is not clean


def test_an_input_with_no_reference_value_is_reported():
    model = Model(parse(SIMPLE))
    feeds = feeds_for()
    reference = {"b": -np.maximum(feeds["x"], 0)}  # neither x nor a has a value
    pairing = pair_tensors(model, reference)
    assert pairing.unpaired_inputs == {"Neg->b": ["a"], "Relu->a": ["x"]}
    report = analyse_precision(model, list(reference), reference, None, TOL)
    (unit,) = report.run.units
    assert unit.status == "skipped" and "`x`" in unit.reason
    # `a` had no value: its producer was taken into the unit, which then needs `x`
    assert unit.nodes == ["Relu->a", "Neg->b"]


def test_saved_values_pair_by_name_and_through_a_name_map():
    model = Model(parse(SIMPLE))
    feeds = feeds_for()
    mine = values(model, feeds)
    reference = {"x": feeds["x"], "relu_out": mine["a"], "b": mine["b"]}
    report = analyse_precision(
        model, list(reference), reference, mine, TOL, name_map={"relu_out": "a"}
    )
    pairs = report.pairing.pairs
    assert pairs["a"].reference == "relu_out" and pairs["a"].how == "name"
    assert {u.node for u in report.ranking} == {"Relu->a", "Neg->b"}
    assert report.root_cause.verdict == "clean"


def test_identical_nodes_tie_and_are_listed():
    proto = parse(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 3] x) => (p, q) {
            p = Sqrt (x)
            q = Sqrt (x)
        }"""
    )
    feeds = {"x": np.array([[1, 4, 9], [16, 25, 36]], np.float32)}
    reference = {
        **feeds,
        "p": np.full((2, 3), 2.0, np.float32),
        "q": np.full((2, 3), 2.0, np.float32),
    }
    report = analyse_precision(Model(proto), list(reference), reference, None, TOL)
    root = report.root_cause
    assert root.verdict == "found"
    assert root.unit.node == "Sqrt->p" and [u.node for u in root.ties] == ["Sqrt->q"]


def test_accumulated_error_without_a_bad_node():
    model = Model(parse(SIMPLE))
    feeds = feeds_for()
    reference = values(model, feeds)
    drifted = dict(reference)
    drifted["y"] = reference["y"] + 0.5  # the candidate's own output drifted
    report = analyse_precision(model, model, reference, drifted, TOL)
    root = report.root_cause
    assert root.verdict == "accumulated" and "1 cumulative error(s)" in root.message
    assert all(u.severity.tier == "within" for u in report.ranking)


def test_refused_same_name_pair_when_producers_differ():
    reference = Model(parse(SIMPLE))
    candidate = Model(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
            agraph (float[2, 3] x) => (y) {
                a = Sigmoid (x)
                b = Neg (a)
                y = Abs (b)
            }"""
        )
    )
    pairing = pair_tensors(candidate, reference)
    assert "a" not in pairing.pairs and "Sigmoid" in pairing.refused["a"]
    assert pairing.unpaired_inputs == {"Neg->b": ["a"]}
