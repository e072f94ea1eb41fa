"""Graph facts against independent references: producers and consumers, topological
order on a shuffled graph, outer reads of nested bodies, and onnxruntime's typing."""

from __future__ import annotations

import onnx
import onnxruntime as ort
from conftest import parse
from onnx import TensorProto, helper

from surgeon.graph_facts import (
    graph_facts,
    inferred_infos,
    outer_reads,
    subgraph_reads,
)
from surgeon.model import Model
from surgeon.runner import RunOptions, Session, runtime_infos

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 3] x) => (y) {
    a = Relu(x)
    b = Neg(a)
    c = Exp(a)
    d = Add(b, c)
    e = Abs(d)
    y = Mul(e, a)
}
"""


def _valid_order(graph: onnx.GraphProto, order: list[int]) -> bool:
    """Every node comes after the producers of what it reads (the reference check)."""
    where = {i: k for k, i in enumerate(order)}
    made = {o: i for i, n in enumerate(graph.node) for o in n.output}
    return sorted(order) == list(range(len(graph.node))) and all(
        where[made[x]] < where[i] for i, n in enumerate(graph.node) for x in n.input if x in made
    )


def test_producers_and_consumers():
    m = Model(parse(CHAIN))
    facts = graph_facts(m)
    names = {i: n.output[0] for i, n in enumerate(m.proto.graph.node)}
    assert {t: names[i] for t, i in facts.producers.items()} == {t: t for t in "abcdey"}
    assert [names[i] for i in facts.consumers["a"]] == ["b", "c", "y"]
    assert m.producers()["d"].op_type == "Add"
    assert graph_facts(m) is facts  # cached


def test_topological_order_is_valid_on_a_shuffled_graph():
    import random

    proto = parse(CHAIN)
    nodes = list(proto.graph.node)
    for seed in range(20):
        random.Random(seed).shuffle(nodes)
        shuffled = onnx.ModelProto()
        shuffled.CopyFrom(proto)
        del shuffled.graph.node[:]
        shuffled.graph.node.extend(nodes)
        facts = graph_facts(Model(shuffled))
        order = facts.node_order()
        assert _valid_order(shuffled.graph, order)
        tensors = facts.tensor_order()
        assert sorted(tensors) == sorted("abcdey") and tensors.index("a") < tensors.index("d")


def test_a_sorted_graph_keeps_its_node_order():
    m = Model(parse(CHAIN))
    assert graph_facts(m).node_order() == list(range(6))


def _nested_model() -> onnx.ModelProto:
    # main: If(cond) whose then-branch holds a Loop whose body reads `w` (two levels
    # out) and its own `i`; the else-branch reads `v` and shadows `w` with a local one.
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["carry", "w"], ["carry_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carry", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carry_out", TensorProto.FLOAT, [2]),
        ],
    )
    then_branch = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["t_out"], body=loop_body)],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Neg", ["v"], ["w"]),  # a local `w` shadows the outer one
            helper.make_node("Add", ["w", "x"], ["e_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x0"], ["x"]),
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch
            ),
        ],
        "main",
        [
            helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outer_reads_of_nested_if_and_loop_bodies():
    proto = _nested_model()
    if_node = proto.graph.node[1]
    branches = {a.name: a.g for a in if_node.attribute}
    then_branch, else_branch = branches["then_branch"], branches["else_branch"]
    loop_body = then_branch.node[0].attribute[0].g
    assert outer_reads(loop_body) == ["w"]
    assert outer_reads(then_branch) == ["n", "x", "w"]
    assert outer_reads(else_branch) == ["v", "x"]  # its `w` is local
    assert sorted(subgraph_reads(if_node)) == ["n", "v", "w", "x"]
    facts = graph_facts(Model(proto))
    assert facts.reads(1)[0] == "cond" and set(facts.reads(1)) == {"cond", "n", "v", "w", "x"}
    assert [proto.graph.node[i].op_type for i in facts.consumers["x"]] == ["If"]
    # a body's read is a dependency: If comes after Relu even when listed first
    del proto.graph.node[:]
    proto.graph.node.extend([if_node, _nested_model().graph.node[0]])
    assert graph_facts(Model(proto)).node_order() == [1, 0]


def test_runner_typing_equals_onnxruntime_session_outputs():
    m = Model(parse(CHAIN))
    names = ["a", "d"]
    typed = Session(m, extra_outputs=names, options=RunOptions("disabled")).output_types()
    proto = onnx.ModelProto()
    proto.CopyFrom(m.proto)
    for n in names:
        proto.graph.output.add(name=n)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = {o.name: (o.type, o.shape) for o in ref.get_outputs()}
    assert set(typed) == set(expected) == {"y", "a", "d"}
    for name, (kind, shape) in expected.items():
        assert kind == "tensor(float)" and typed[name].dtype == "float32"
        assert list(typed[name].shape) == shape
    assert runtime_infos(m, ["d"]) == {"d": typed["d"]}


def test_inference_of_the_skeleton_types_intermediate_tensors():
    infos = inferred_infos(Model(parse(CHAIN)))
    assert infos["d"].dtype == "float32" and infos["d"].shape == (2, 3)
