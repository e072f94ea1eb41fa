"""`surgeon blame`: the pass named for models where one fusion really changes the numbers,
checked against onnxruntime run directly; the bisection and the graph comparison on
their own; exit codes, JSON and every bad input."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse, run_cli, write
from onnx import helper, numpy_helper

from surgeon.compare import EXACT, Tolerance
from surgeon.errors import UsageError
from surgeon.loading import load
from surgeon.optimizer_blame import BLAME_SCHEMA, _smallest, blame
from surgeon.optimizer_blame_fusions import graph_changes
from surgeon.runner import RunOptions

WIDTH = 32
_NUMBERS = np.random.default_rng(3).uniform(0.5, 1.5, (2, WIDTH)).astype(np.float32)


def _floats(values) -> str:
    return ", ".join(repr(float(v)) for v in values)


# A LayerNorm written out op by op on values near 10000: onnxruntime's LayerNormFusionL1
# replaces it by one LayerNormalization kernel, whose float32 arithmetic loses digits
# the op-by-op form keeps (measured: max rel 6e-3 at this offset).
LAYER_NORM = f"""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, {WIDTH}] x) => (float[4, {WIDTH}] y)
  <float offset = {{10000.0}}, float two = {{2.0}}, float eps = {{1e-5}},
   float[{WIDTH}] gamma = {{{_floats(_NUMBERS[0])}}}, float[{WIDTH}] beta = {{{_floats(_NUMBERS[1])}}}> {{
  [shift] h = Add(x, offset)
  [mean] m = ReduceMean<axes=[-1]>(h)
  [center] d = Sub(h, m)
  [square] p = Pow(d, two)
  [variance] v = ReduceMean<axes=[-1]>(p)
  [add_eps] ve = Add(v, eps)
  [std] s = Sqrt(ve)
  [normalise] n = Div(d, s)
  [scale] gm = Mul(n, gamma)
  [bias] y = Add(gm, beta)
}}"""
LAYER_NORM_NODES = {
    "mean",
    "center",
    "square",
    "variance",
    "add_eps",
    "std",
    "normalise",
    "scale",
    "bias",
}

# MatMul then Add: MatMulAddFusion makes a Gemm of them, with the same numbers here.
MATMUL_ADD = f"""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[8, 4] x) => (float[8, 4] y)
  <float[4, 4] w = {{{_floats(_NUMBERS[0][:16])}}}, float[4] b = {{{_floats(_NUMBERS[1][:4])}}}> {{
  [matmul] t = MatMul(x, w)
  [add] y = Add(t, b)
}}"""


def _conv_bn() -> onnx.ModelProto:
    """Conv then BatchNormalization: ConvBNFusion folds the BN into the weights, which
    rounds differently (not bit-identical)."""
    rng = np.random.default_rng(0)
    channels = 8
    inits = {
        "w": rng.standard_normal((channels, 3, 3, 3)),
        "s": rng.uniform(0.5, 2, channels),
        "b": rng.standard_normal(channels),
        "m": rng.standard_normal(channels),
        "v": rng.uniform(0.01, 1, channels),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn"),
        ],
        "conv_bn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, channels, 16, 16])],
        [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_outputs(path, level, disabled=(), seed=0):
    """onnxruntime run directly (not through surgeon), on surgeon's seeded feed."""
    from surgeon.feeds import FeedOptions, make_feeds

    feeds = make_feeds(load(path), FeedOptions(seed=seed))
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    session = ort.InferenceSession(
        str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=set(disabled)
    )
    return session.run(None, feeds)[0]


def _within(a, b, tol: Tolerance) -> bool:
    if tol.exact:
        return a.tobytes() == b.tobytes()
    return bool(np.all(np.abs(a - b) <= tol.atol + tol.rtol * np.abs(b)))


@pytest.fixture
def layer_norm(tmp_path):
    return write(parse(LAYER_NORM), tmp_path / "layer_norm.onnx")


def test_layer_norm_fusion_is_named_and_verified_against_onnxruntime(layer_norm):
    G = ort.GraphOptimizationLevel
    reference = _ort_outputs(layer_norm, G.ORT_DISABLE_ALL)
    # The premise, independently: level all differs, and beyond the default tolerance.
    assert not _within(_ort_outputs(layer_norm, G.ORT_ENABLE_ALL), reference, Tolerance())

    report = blame(load(layer_norm))

    assert not report and report.differs
    names = [c.name for c in report.culprits]
    assert "LayerNormFusionL1" in names
    assert report.verified
    # onnxruntime itself, with exactly those passes disabled, matches the reference...
    fixed = _ort_outputs(layer_norm, G.ORT_ENABLE_ALL, names)
    assert _within(fixed, reference, Tolerance())
    # ...and the set is minimal: any one of them enabled again breaks it.
    for name in names:
        rest = [n for n in names if n != name]
        assert not _within(_ort_outputs(layer_norm, G.ORT_ENABLE_ALL, rest), reference, Tolerance())
    fusion = next(c for c in report.culprits if c.name == "LayerNormFusionL1").changes.fusions
    assert [n.op_type for f in fusion for n in f.nodes] == ["LayerNormalization"]
    replaced = {n.name for f in fusion for n in f.replaced}
    assert replaced == LAYER_NORM_NODES
    assert all(n.in_original for f in fusion for n in f.replaced)


def test_conv_bn_fold_is_named_as_a_rule_at_level_basic(tmp_path):
    path = write(_conv_bn(), tmp_path / "conv_bn.onnx")
    report = blame(load(path), tolerance=EXACT, options=RunOptions(optimization="basic"))
    assert report.differs and report.verified
    assert [(c.name, c.kind) for c in report.culprits] == [("ConvBNFusion", "rule")]
    assert report.applied == ["Level1_RuleBasedTransformer"]
    (fusion,) = report.culprits[0].changes.fusions
    assert {n.name for n in fusion.replaced} == {"conv", "bn"}
    G = ort.GraphOptimizationLevel
    assert _within(
        _ort_outputs(path, G.ORT_ENABLE_BASIC, ["ConvBNFusion"]),
        _ort_outputs(path, G.ORT_DISABLE_ALL),
        EXACT,
    )


def test_unchanged_outputs_pass_with_nothing_to_blame(tmp_path):
    path = write(parse(MATMUL_ADD), tmp_path / "matmul_add.onnx")
    report = blame(load(path))
    assert report and not report.differs
    assert report.culprits == [] and report.trials == []
    assert "nothing to blame" in report.summary()


def test_cli_names_the_pass_and_exits_1(layer_norm):
    result = run_cli("blame", layer_norm)
    assert result.status == 1, result.stderr
    assert "LayerNormFusionL1" in result.stdout
    assert result.stdout.startswith("FAIL") and "verified" in result.stdout
    assert result.stderr == ""  # no progress when not on a terminal


def test_cli_json_document(layer_norm):
    result = run_cli("blame", layer_norm, "--json", "--seed", "3")
    assert result.status == 1
    doc = result.json
    assert doc["schema"] == BLAME_SCHEMA
    assert doc["differs"] and not doc["passed"] and doc["verified"]
    assert doc["seed"] == 3 and doc["level"] == "all"
    assert "LayerNormFusionL1" in [c["name"] for c in doc["culprits"]]
    assert all(t["status"] == "ok" for t in doc["verification"])
    assert doc["trials"] and all("disabled" in t for t in doc["trials"])


def test_cli_exit_0_when_nothing_changes(tmp_path):
    path = write(parse(MATMUL_ADD), tmp_path / "matmul_add.onnx")
    result = run_cli("blame", path, "--json")
    assert result.status == 0
    assert result.json["culprits"] == [] and result.json["passed"]


def test_unexplained_difference_is_a_failure_without_culprits(layer_norm, monkeypatch):
    # onnxruntime lists no transformer (as a build without INFO logging would).
    monkeypatch.setattr("surgeon.optimizer_blame._applied", lambda log: [])
    report = blame(load(layer_norm))
    assert report.differs and not report.culprits and not report.verified
    assert "no pass to blame" in report.summary()
    assert any("nothing to bisect" in n for n in report.notes)


# --- the bisection on its own -------------------------------------------------------


def _counting(rule):
    calls = []

    def passes(disabled):
        calls.append(list(disabled))
        return rule(set(disabled))

    return passes, calls


@pytest.mark.parametrize("needed", [{"c"}, {"a"}, {"h"}, {"b", "g"}, {"a", "d", "h"}])
def test_smallest_finds_exactly_the_needed_names(needed):
    names = list("abcdefgh")
    passes, calls = _counting(lambda disabled: needed <= disabled)
    found = _smallest(passes, [], names)
    assert set(found) == needed
    # Brute force: no smaller subset passes.
    for size in range(len(found)):
        assert not any(needed <= set(s) for s in itertools.combinations(names, size))
    assert len(calls) <= len(needed) * 4 + 4  # O(k log n), not 2**n


def test_smallest_with_alternatives_returns_a_set_none_of_whose_names_can_go():
    # Disabling x and y together, or z alone, is enough: the search finds one of the two
    # ways, locally minimal (the smallest overall is not promised).
    passes, _ = _counting(lambda disabled: {"x", "y"} <= disabled or "z" in disabled)
    found = _smallest(passes, [], ["x", "y", "z"])
    assert passes(found)
    assert sorted(found) in (["x", "y"], ["z"])
    assert not any(passes([n for n in found if n != name]) for name in found)


# --- the graph comparison on its own -----------------------------------------------


def test_graph_changes_groups_replaced_nodes_under_the_fused_node():
    without = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (float[2] y) {
      [a] t = Relu(x)
      [b] u = Neg(t)
      [c] v = Abs(u)
      [dead] z = Exp(t)
      [d] y = Sigmoid(v)
    }""").graph
    with_pass = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (float[2] y) {
      [a] t = Relu(x)
      [fused] v = NegAbs(t)
      [d] y = Sigmoid(v)
    }""").graph
    changes = graph_changes(without, with_pass, {"a", "b", "c", "d", "dead"})
    (fusion,) = changes.fusions
    assert [n.name for n in fusion.nodes] == ["fused"]
    assert [(n.name, n.op_type, n.in_original) for n in fusion.replaced] == [
        ("b", "Neg", True),
        ("c", "Abs", True),
    ]
    assert [n.name for n in changes.removed] == ["dead"]


def test_graph_changes_keeps_a_layout_change_together():
    without = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (float[2] y) {
      [a] t = Relu(x)
      [b] y = Neg(t)
    }""").graph
    with_pass = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (float[2] y) {
      [in] xr = Reorder(x)
      [a2] tr = Relu(xr)
      [b2] yr = Neg(tr)
      [out] y = ReorderBack(yr)
    }""").graph
    (fusion,) = graph_changes(without, with_pass, {"a", "b"}).fusions
    assert [n.name for n in fusion.nodes] == ["in", "a2", "b2", "out"]
    assert [n.name for n in fusion.replaced] == ["a", "b"]


# --- errors ---------------------------------------------------------------------------


def test_level_disabled_is_refused_by_the_api(layer_norm):
    with pytest.raises(UsageError, match="reference level"):
        blame(load(layer_norm), options=RunOptions(optimization="disabled"))


def test_unknown_level_is_a_usage_error(layer_norm):
    result = run_cli("blame", layer_norm, "--level", "disabled")
    assert result.status == 2
    # argparse writes through the consoles main() was given (not sys.stderr)
    assert "argument --level: invalid choice: 'disabled'" in result.stderr


def test_feeds_with_an_unknown_input_exit_2(layer_norm, tmp_path):
    npz = tmp_path / "feeds.npz"
    np.savez(npz, z=np.zeros((4, WIDTH), np.float32))
    result = run_cli("blame", layer_norm, "--feeds", npz)
    assert result.status == 2
    message = " ".join(result.stderr.split())  # the console folds long lines
    assert "has `z`, which is not an input of layer_norm.onnx" in message


def test_feeds_of_the_wrong_shape_exit_2(layer_norm, tmp_path):
    npz = tmp_path / "feeds.npz"
    np.savez(npz, x=np.zeros((3, 3), np.float32))
    result = run_cli("blame", layer_norm, "--feeds", npz, "--json")
    assert result.status == 2
    assert result.json["schema"] == "surgeon.error/1"


def test_negative_tolerance_exit_2(layer_norm):
    result = run_cli("blame", layer_norm, "--atol", "-1")
    assert result.status == 2
    assert "negative" in result.stderr


def test_missing_model_exit_2(tmp_path):
    result = run_cli("blame", tmp_path / "nope.onnx")
    assert result.status == 2
