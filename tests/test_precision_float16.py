"""surgeon.precision on float16 conversions: converter Casts pair, each node's own error
matches a run of that node alone, and the planted overflow is named in every node order."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse
from onnx import helper, numpy_helper

from surgeon.compare import Tolerance, compare_arrays
from surgeon.model import Model
from surgeon.precision import analyse_precision, pair_tensors
from surgeon.runner import RunOptions, run

# A LayerNorm-style block. With scale = 1e4 the squared deviation (`sq`) is ~1e8: finite
# in float32, Inf in float16 (max 65504). Everything before it fits float16.
FLOAT_MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 16] x) => (y) {{
    h = MatMul (x, w1)
    hb = Add (h, b1)
    scale = Constant <value = float {{{scale}}}> ()
    big = Mul (hb, scale)
    mean = ReduceMean <axes = [-1]> (big)
    dev = Sub (big, mean)
    sq = Mul (dev, dev)
    var = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {{1e-5}}> ()
    ve = Add (var, eps)
    std = Sqrt (ve)
    norm = Div (dev, std)
    y = MatMul (norm, w2)
}}"""


# Node names (the text syntax has none): output tensor -> node name.
NODE_NAMES = {
    "h": "mm1",
    "hb": "bias",
    "big": "scale_up",
    "mean": "mean",
    "dev": "centre",
    "sq": "square",
    "var": "variance",
    "ve": "add_eps",
    "std": "sqrt",
    "norm": "normalise",
    "y": "mm2",
}


def float_model(scale: float, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    proto = parse(FLOAT_MODEL.format(scale=scale))
    for node in proto.graph.node:
        node.name = NODE_NAMES.get(node.output[0], "")
    weights = {
        "w1": rng.standard_normal((16, 16)).astype(np.float32) * 0.25,
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((16, 8)).astype(np.float32) * 0.25,
    }
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    return proto


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy the way onnxconverter-common's converter (keep_io_types=True) makes
    it: float weights and constants in float16, a Cast `<input>_cast_to_<node>` after each
    float32 input, and at each output the producer's tensor renamed
    `<node>_cast_to_<output>` with a Cast back to float32 under the output's name."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == onnx.TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
    nodes = list(g.node)
    casts_in = []
    for vi in g.input:
        for node in nodes:
            if vi.name in node.input:
                cast = f"{vi.name}_cast_to_{node.name}"
                casts_in.append(
                    helper.make_node(
                        "Cast", [vi.name], [cast], name=cast, to=onnx.TensorProto.FLOAT16
                    )
                )
                node.input[:] = [cast if x == vi.name else x for x in node.input]
    casts_out = []
    for vi in g.output:
        for node in nodes:
            if vi.name in node.output:
                renamed = f"{node.name}_cast_to_{vi.name}"
                node.output[:] = [renamed if x == vi.name else x for x in node.output]
                casts_out.append(
                    helper.make_node(
                        "Cast", [renamed], [vi.name], name=renamed, to=onnx.TensorProto.FLOAT
                    )
                )
    del g.node[:]
    g.node.extend(casts_in + nodes + casts_out)
    return out


def random_orders(proto: onnx.ModelProto, count: int, seed: int) -> list[onnx.ModelProto]:
    """``count`` copies of ``proto`` with the nodes in random valid topological orders
    (Kahn's algorithm picking a random ready node each step)."""
    rng = np.random.default_rng(seed)
    nodes = list(proto.graph.node)
    made = {o for n in nodes for o in n.output}
    out = []
    for _ in range(count):
        known = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
        left, order = list(range(len(nodes))), []
        while left:
            ready = [
                i for i in left if all(x in known or x not in made for x in nodes[i].input if x)
            ]
            pick = ready[int(rng.integers(len(ready)))]
            left.remove(pick)
            order.append(pick)
            known.update(nodes[pick].output)
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        del copy.graph.node[:]
        copy.graph.node.extend(nodes[i] for i in order)
        out.append(copy)
    return out


def all_values(model: Model, feeds: dict) -> dict:
    outs = [o for n in model.proto.graph.node for o in n.output if o]
    values = run(model, feeds, outputs=outs, options=RunOptions(optimization="disabled"))
    return {**feeds, **values}


def analyse(candidate_proto, reference_proto, tolerance, seed=0):
    reference, candidate = Model(reference_proto), Model(candidate_proto)
    feeds = {"x": np.random.default_rng(seed).standard_normal((4, 16)).astype(np.float32)}
    return analyse_precision(
        candidate,
        reference,
        all_values(reference, feeds),
        all_values(candidate, feeds),
        tolerance,
    )


TOL = Tolerance(atol=1e-2, rtol=1e-2)


def test_converter_casts_pair_with_the_float32_tensors():
    reference = float_model(1e4)
    pairing = pair_tensors(Model(to_float16(reference)), Model(reference))
    assert pairing.pairs["x_cast_to_mm1"].how == "cast"
    assert pairing.pairs["x_cast_to_mm1"].reference == "x"
    assert pairing.pairs["mm2_cast_to_y"].reference == "y"  # the renamed producer output
    assert pairing.pairs["mm2_cast_to_y"].how == "cast"
    assert pairing.pairs["y"].how == "name"  # produced by a Cast now: a value carrier
    assert pairing.pairs["sq"].how == "name"
    assert not pairing.unpaired_inputs and not pairing.refused


def test_planted_overflow_is_named_in_every_topological_order():
    reference = float_model(1e4)
    candidate = to_float16(reference)
    named = set()
    for order in random_orders(candidate, 6, seed=1):
        report = analyse(order, reference, TOL)
        root = report.root_cause
        assert root.verdict == "found", root.message
        named.add(root.unit.node)
        assert root.unit.severity.tier == "non-finite"
        assert not root.ties
        # downstream nodes inherit: the variance reads an Inf it did not make
        variance = next(u for u in report.ranking if u.node == "variance")
        assert variance.severity.tier == "inherited" and variance.overflowed_inputs == ["sq"]
        # the candidate's own `sq` holds the Inf too (cumulative); nodes after it are
        # fine on their own (onnxruntime's CPU computes the float16 chain in float32 and
        # rounds only the exposed tensors, so the candidate's own outputs may recover)
        assert root.unit.cumulative.inf > 0
        normalise = next(u for u in report.ranking if u.node == "normalise")
        assert normalise.severity.tier == "within"
    assert named == {"square"}


def test_healthy_float16_model_has_no_root_cause():
    reference = float_model(1.0)
    report = analyse(to_float16(reference), reference, TOL)
    assert report.root_cause.verdict == "clean", report.root_cause.message
    assert report  # truthy when clean


def test_tight_tolerance_ranks_by_excess_not_order():
    # At 1e-5 every float16 node misses the tolerance; the ranking must not follow the
    # node order: two orders give the same ranking.
    reference = float_model(1.0)
    first, second = random_orders(to_float16(reference), 2, seed=3)
    tight = Tolerance(1e-5, 1e-5)
    a, b = analyse(first, reference, tight), analyse(second, reference, tight)
    assert [u.node for u in a.ranking] == [u.node for u in b.ranking]
    assert a.root_cause.verdict == "found"
    excess = [u.severity.excess for u in a.ranking if u.severity.tier == "beyond"]
    assert excess == sorted(excess, reverse=True)


def _one_node_run(node: onnx.NodeProto, inputs: dict, initializers: list) -> np.ndarray:
    """``node`` alone in a model, run by onnxruntime directly on ``inputs``."""
    graph = helper.make_graph(
        [node],
        "one",
        [
            helper.make_tensor_value_info(
                k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)
            )
            for k, v in inputs.items()
        ],
        [onnx.ValueInfoProto(name=node.output[0])],  # untyped: onnxruntime infers it
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    return session.run(None, inputs)[0]


@pytest.mark.parametrize("scale", [1e4, 1.0])
def test_isolated_error_equals_a_run_of_the_node_alone(scale):
    reference = float_model(scale)
    candidate = to_float16(reference)
    feeds = {"x": np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)}
    ref_values = all_values(Model(reference), feeds)
    report = analyse_precision(
        Model(candidate), Model(reference), ref_values, all_values(Model(candidate), feeds), TOL
    )
    inits = {t.name: t for t in candidate.graph.initializer}
    checked = 0
    for node in candidate.graph.node:
        unit = next((u for u in report.ranking if u.node == node.name), None)
        if unit is None or node.op_type == "Constant":
            continue
        assert unit.nodes == [node.name]
        inputs, used = {}, []
        for x in node.input:
            if x in inits:
                used.append(inits[x])
                continue
            ref = report.pairing.pairs[x].reference
            # the candidate's dtype there: float32 graph inputs, float16 everywhere else
            wanted = np.float32 if x in {v.name for v in candidate.graph.input} else np.float16
            with np.errstate(over="ignore"):
                inputs[x] = ref_values[ref].astype(wanted)
        constant = {
            n.output[0]: n for n in candidate.graph.node if n.op_type == "Constant"
        }  # constants the node reads were fed from the reference too
        for x in list(inputs):
            if x in constant:
                inputs[x] = ref_values[x].astype(np.float16)
        alone = _one_node_run(node, inputs, used)
        expected = ref_values[unit.outputs[0].reference]
        independent = compare_arrays(alone.astype(expected.dtype), expected, TOL)
        mine = unit.isolated
        assert (mine.max_abs, mine.max_rel, mine.mismatches) == (
            independent.max_abs,
            independent.max_rel,
            independent.mismatches,
        ), node.name
        checked += 1
    assert checked >= 10
