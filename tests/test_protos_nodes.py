"""surgeon.protos' node helpers: fill_node builds the node onnx.helper.make_node builds,
and copy_without_nodes keeps everything of a model but its main graph's nodes (and the
initializers left out)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from surgeon.protos import copy_without_nodes, fill_node


@pytest.mark.parametrize(
    "op, inputs, attributes",
    [
        ("Cast", ["x"], {"to": onnx.TensorProto.DOUBLE}),
        ("ReduceSum", ["x", ""], {"keepdims": 0, "noop_with_empty_axes": 1}),
        ("Concat", ["a", "b", "c"], {"axis": -1}),
        ("Abs", ["x"], {}),
    ],
)
def test_fill_node_equals_make_node(op, inputs, attributes):
    graph = onnx.GraphProto()
    filled = fill_node(graph.node.add(), op, inputs, "out", **attributes)
    assert filled == helper.make_node(op, inputs, ["out"], name="out", **attributes)
    assert graph.node[0] == filled


@pytest.mark.parametrize("value", [1.5, True, [1, 2], "s"])
def test_fill_node_refuses_attributes_other_than_integers(value):
    with pytest.raises(TypeError, match="integer attributes only"):
        fill_node(onnx.NodeProto(), "Cast", ["x"], "y", to=value)


def test_copy_without_nodes_keeps_the_rest_and_leaves_out_named_initializers():
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            t = Add(x, w)
            y = Mul(t, v)
        }"""
    )
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.ones(2, np.float32), "w"),
            numpy_helper.from_array(np.full(2, 2, np.float32), "v"),
        ]
    )
    model.metadata_props.add(key="k", value="v")
    copy = copy_without_nodes(model, {"v"})
    assert not copy.graph.node
    assert [t.name for t in copy.graph.initializer] == ["w"]
    assert copy.graph.input == model.graph.input and copy.graph.output == model.graph.output
    assert copy.opset_import == model.opset_import and copy.metadata_props == model.metadata_props
    assert copy.ir_version == model.ir_version and copy.graph.name == model.graph.name
    assert len(model.graph.node) == 2 and len(model.graph.initializer) == 2  # untouched
