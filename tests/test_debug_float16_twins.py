"""debug --ref with float16 references: each unit is compared with the reference's own
node re-run on the same stored values (its twin, surgeon.precision.isolated.plan_twin),
not with the reference's stored tensor, which onnxruntime may have computed from
unrounded float16 inputs (its CPU runs float16 chains in float32). Identical float16
models then blame no node, a planted change is still found, and the merged run and the
values path agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx import numpy_helper
from test_debug_in_graph import _both, _normalise
from test_precision_float16 import float_model, to_float16

import surgeon.precision.isolated as isolated
from surgeon.compare import Tolerance
from surgeon.debugging.results import DebugOptions
from surgeon.loading import load
from surgeon.precision.pairing import pair_tensors

H = '<ir_version: 8, opset_import: ["" : 13]>\n'
MEAN_ADD = (
    H
    + """g (float[2, 3, 4] x) => (float16[2, 3, 4] t) {
        h = Cast<to = 10>(x)
        r = ReduceMean<axes = [2], keepdims = 1>(h)
        t = Add(h, r)
    }"""
)


def _options(tmp_path, reference, x, tolerance=Tolerance()):
    ref = write(reference, tmp_path / "ref.onnx")
    np.savez(tmp_path / "feeds.npz", x=x)
    options = DebugOptions(reference=str(ref), tolerance=tolerance)
    return dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
    )


def _own_errors(report) -> dict[str, tuple[int, float]]:
    return {u.node: (u.isolated.mismatches, u.isolated.max_abs) for u in report.precision.ranking}


@pytest.mark.parametrize("seed", range(4))
def test_identical_float16_models_have_no_own_error_on_either_path(tmp_path, seed):
    model = parse(MEAN_ADD)
    cand = write(model, tmp_path / "cand.onnx")
    x = np.random.default_rng(seed).standard_normal((2, 3, 4)).astype(np.float32)
    fast, slow = _both(cand, _options(tmp_path, model, x))
    for report in (fast, slow):
        assert report.root_cause is None
        assert report.precision.root_cause.verdict == "clean"
        assert all(e == (0, 0.0) for e in _own_errors(report).values()), _own_errors(report)
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())


def test_identical_converted_float16_models_have_no_own_error(tmp_path):
    # A converter's float16 model (Casts at the inputs and outputs, float16 weights)
    # against itself: every unit, the float32 output Cast reading a float16 chain too.
    reference = to_float16(float_model(1.0))
    cand = write(reference, tmp_path / "cand.onnx")
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    fast, slow = _both(cand, _options(tmp_path, reference, x, Tolerance(1e-3, 1e-3)))
    for report in (fast, slow):
        errors = _own_errors(report)
        assert len(errors) >= 10
        assert all(e == (0, 0.0) for e in errors.values()), errors
    assert _normalise(fast.to_dict()) == _normalise(slow.to_dict())


def test_a_planted_float16_change_is_still_the_root_cause(tmp_path):
    reference = to_float16(float_model(1.0))
    candidate = onnx.ModelProto()
    candidate.CopyFrom(reference)
    for t in candidate.graph.initializer:
        if t.name == "b1":
            b = numpy_helper.to_array(t).copy()
            b[3] += np.float16(0.5)
            t.CopyFrom(numpy_helper.from_array(b, "b1"))
    cand = write(candidate, tmp_path / "cand.onnx")
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    fast, slow = _both(cand, _options(tmp_path, reference, x, Tolerance(1e-3, 1e-3)))
    for report in (fast, slow):
        assert report.root_cause is not None and report.root_cause.node == "bias"
        mismatches, max_abs = _own_errors(report)["bias"]
        assert mismatches == 4 and max_abs == 0.5  # b1[3] + 0.5, one column of 4 rows
        others = {n: e for n, e in _own_errors(report).items() if n != "bias"}
        assert all(e == (0, 0.0) for e in others.values()), others
    # (Not every last bit equal: in the merged run the unit and its twin read the float16
    # values onnxruntime hands them, possibly unrounded; the values path reads the stored
    # ones. Both compare the two nodes on the same inputs.)
    assert fast.precision.root_cause.verdict == slow.precision.root_cause.verdict == "found"


def _unit_of(model, reference, output):
    pairing = pair_tensors(model, reference)
    units, _ = isolated.plan_units(model, pairing, lambda t: t in pairing.pairs)
    (unit,) = [u for u in units if output in u.outputs]
    return unit, pairing


def test_a_twin_reads_only_the_units_stored_inputs_and_reference_weights(tmp_path):
    model = load(write(parse(MEAN_ADD), tmp_path / "m.onnx"))
    unit, pairing = _unit_of(model, model, "t")
    same = {t: ("float16", "float16") for t in unit.feeds}
    twin = isolated.plan_twin(unit, "t", pairing, same, pairing.reference_model.producers())
    assert twin is not None and twin.node.op_type == "Add" and twin.output == "t"
    assert set(twin.feeds) == {"h", "r"} and twin.initializers == ()
    # a feed cast to another dtype (a float32 candidate against a float16 reference):
    # the unit reads other values than the reference's node did, no twin
    cast = {t: ("float16", "float32") for t in unit.feeds}
    assert isolated.plan_twin(unit, "t", pairing, cast, pairing.reference_model.producers()) is None
    # only float32 inputs: nothing the reference's run can have read unrounded
    wide = {t: ("float32", "float32") for t in unit.feeds}
    assert isolated.plan_twin(unit, "t", pairing, wide, pairing.reference_model.producers()) is None


def test_no_twin_when_the_references_node_reads_something_else(tmp_path):
    # The reference computes `t` from a tensor the candidate's unit is not fed.
    candidate = load(write(parse(MEAN_ADD), tmp_path / "c.onnx"))
    other = parse(
        H
        + """g (float[2, 3, 4] x) => (float16[2, 3, 4] t) {
            h = Cast<to = 10>(x)
            r = ReduceMean<axes = [2], keepdims = 1>(h)
            n = Neg(r)
            q = Neg(n)
            t = Add(h, q)
        }"""
    )
    reference = load(write(other, tmp_path / "r.onnx"))
    unit, pairing = _unit_of(candidate, reference, "t")
    same = {t: ("float16", "float16") for t in unit.feeds}
    assert isolated.plan_twin(unit, "t", pairing, same, pairing.reference_model.producers()) is None


def test_a_twin_onnxruntime_refuses_keeps_the_stored_reference(tmp_path, monkeypatch):
    # The twins' batch fails: every unit is compared with the stored tensor, as before.
    model = parse(MEAN_ADD)
    cand = write(model, tmp_path / "cand.onnx")
    x = np.random.default_rng(18).standard_normal((2, 3, 4)).astype(np.float32)
    real = isolated._run_batches

    def refusing(candidate, units, *args):
        if units and isinstance(units[0], isolated._TwinUnit):
            return {j: "refused (simulated)" for j in range(len(units))}
        return real(candidate, units, *args)

    monkeypatch.setattr(isolated, "_run_batches", refusing)
    options = dataclasses.replace(_options(tmp_path, model, x), keep_values=True)
    from surgeon.debugging import debug

    report = debug(load(cand), options)
    assert report.mode == "values"
    # the stored tensor: onnxruntime's unrounded ReduceMean shows as Add's own error
    assert _own_errors(report)["Add->t"][0] > 0


@pytest.mark.parametrize("kernels", [True, False])
def test_the_rounding_guard_hands_a_node_the_stored_float16_tensor(kernels):
    # A Sub -> guard -> Mul chain: Mul reads Sub's output rounded to float16, as a fetch
    # (or the isolated run's feed) gives it; the probe's choice is checked independently.
    from onnx import TensorProto, helper

    from surgeon import fastops
    from surgeon.debugging.in_graph_compare import rounding_guard
    from surgeon.model import Model
    from surgeon.runner import RunOptions, run

    stored = ((fastops.DOMAIN, fastops.STORED),)
    # with the kernel library, its Stored node (one copy, not two strided Transposes)
    assert (rounding_guard() == stored) == fastops.available()
    assert rounding_guard(kernels=False) != stored  # for a model without the library
    chain = rounding_guard(kernels=kernels)
    assert chain in (stored, (("", "Identity"),), (("", "Transpose"), ("", "Transpose")))
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((3, 5, 7)).astype(np.float16) for _ in range(2))
    nodes = [helper.make_node("Sub", ["a", "b"], ["g0"])]
    nodes += [
        helper.make_node(op, [f"g{j}"], [f"g{j + 1}"], domain=domain)
        for j, (domain, op) in enumerate(chain)
    ]
    nodes.append(helper.make_node("Mul", [f"g{len(chain)}", f"g{len(chain)}"], ["y"]))
    half = TensorProto.FLOAT16
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, half, [3, 5, 7]) for n in "ab"],
        [helper.make_tensor_value_info("y", half, [3, 5, 7])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(fastops.DOMAIN, 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    got = run(Model(proto), {"a": a, "b": b}, options=RunOptions(optimization="disabled"))["y"]
    rounded = (a.astype(np.float32) - b.astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(got, (rounded.astype(np.float32) ** 2).astype(np.float16))
