"""surgeon.origin: PyTorch module paths and source lines from the ONNX file alone.

No torch here: the models are written by hand with the dynamo exporter's node metadata
(keys verified on torch 2.13.0 exports) or TorchScript-style node names.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse
from onnx import numpy_helper

import surgeon
from surgeon.errors import NameNotFoundError
from surgeon.model import Model
from surgeon.origin import (
    DYNAMO_CLASSES,
    DYNAMO_SCOPES,
    DYNAMO_STACK,
    SURGEON_CLASS,
    SURGEON_MODULE,
    SURGEON_SOURCE,
    match_activations,
    node_origin,
    origins,
    tensor_origin,
)

TWO_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, H, W] x) => (float[1, 4, H, W] y) {
    [NAME0] a = Conv <pads = [1, 1, 1, 1]> (x, w0)
    [NAME1] b = Relu (a)
    [NAME2] y = Conv <pads = [1, 1, 1, 1]> (b, w1)
}
"""


def with_weights(proto: onnx.ModelProto) -> Model:
    rng = np.random.default_rng(0)
    for name, shape in (("w0", (8, 3, 3, 3)), ("w1", (4, 8, 3, 3))):
        proto.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    return Model(proto)


def two_conv(names=("node_conv2d", "node_relu", "node_conv2d_1")) -> Model:
    text = TWO_CONV
    for i, n in enumerate(names):
        text = text.replace(f"[NAME{i}]", f'["{n}"]')
    return with_weights(parse(text))


DYNAMO_STACK_CONV1 = (
    'File "/home/me/project/model.py", line 5, in forward\n'
    "    return self.conv1(torch.relu(self.conv0(x)))\n"
    '  File "/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py", line 565, in forward\n'
    "    return self._conv_forward(input, self.weight, self.bias)"
)


def add_props(node: onnx.NodeProto, **props: str) -> None:
    for k, v in props.items():
        node.metadata_props.add(key=k, value=v)


def dynamo_two_conv() -> Model:
    """What torch 2.13's dynamo exporter writes for the two-conv module."""
    model = two_conv()
    conv0, relu, conv1 = model.proto.graph.node
    add_props(
        conv0,
        **{
            DYNAMO_SCOPES: "['', 'conv0', 'conv2d']",
            DYNAMO_CLASSES: "['model.TwoConv', 'torch.nn.modules.conv.Conv2d', 'aten.conv2d.default']",
            DYNAMO_STACK: DYNAMO_STACK_CONV1.replace("conv1", "conv0"),
        },
    )
    add_props(
        relu,
        **{
            DYNAMO_SCOPES: "['', 'relu']",
            DYNAMO_CLASSES: "['model.TwoConv', 'aten.relu.default']",
            DYNAMO_STACK: 'File "/home/me/project/model.py", line 5, in forward\n    return x',
        },
    )
    add_props(
        conv1,
        **{
            DYNAMO_SCOPES: "['', 'conv1', 'conv2d_1']",
            DYNAMO_CLASSES: "['model.TwoConv', 'torch.nn.modules.conv.Conv2d', 'aten.conv2d.default']",
            DYNAMO_STACK: DYNAMO_STACK_CONV1,
        },
    )
    return model


# ---------------------------------------------------------------------- node_origin
def test_dynamo_metadata_names_module_class_and_user_line():
    model = dynamo_two_conv()
    origin = node_origin(model, "node_conv2d_1")
    assert origin.module == "conv1"
    assert origin.module_class == "Conv2d"
    # The innermost frame outside torch: the user's line, not torch/nn/modules/conv.py.
    assert (origin.file, origin.line) == ("/home/me/project/model.py", 5)
    assert origin.code == "return self.conv1(torch.relu(self.conv0(x)))"
    assert origin.exporter == "dynamo"
    assert origin.describe() == "`conv1` (Conv2d), model.py:5"
    # A node at the top level (a functional op in forward) names the root module.
    assert (
        node_origin(model, "node_relu").describe() == "the top-level module (TwoConv), model.py:5"
    )
    assert origin.to_dict()["description"] == origin.describe()


def test_dynamo_nested_scopes_give_the_full_module_path():
    model = two_conv()
    add_props(
        model.proto.graph.node[0],
        **{
            DYNAMO_SCOPES: "['', 'backbone', 'backbone.0', 'backbone.0.bn', '_native_batch_norm']",
            DYNAMO_CLASSES: "['m.Net', 'torch.nn.modules.container.Sequential', 'm.Block', "
            "'torch.nn.modules.batchnorm.BatchNorm2d', 'aten._native_batch_norm_legit_no_training.default']",
        },
    )
    origin = node_origin(model, "node_conv2d")
    assert origin.module == "backbone.0.bn"
    assert origin.module_class == "BatchNorm2d"
    assert origin.scopes == ("backbone", "backbone.0", "backbone.0.bn")
    assert origin.file is None
    assert origin.describe() == "`backbone.0.bn` (BatchNorm2d)"


@pytest.mark.parametrize(
    ("name", "op", "module", "call"),
    [
        ("/conv0/Conv", "Conv", "conv0", 0),
        ("/Relu", "Relu", "", 0),
        ("/backbone/backbone.0/conv/Conv", "Conv", "backbone.0.conv", 0),
        # Sequential children repeat the parent's name: deep -> deep.0 -> deep.0.0.
        ("/a/deep/deep.0/deep.0.0/Relu", "Relu", "a.deep.0.0", 0),
        ("/head/Constant_3", "Constant", "head", 0),
    ],
)
def test_torchscript_names(name, op, module, call):
    model = Model(
        onnx.helper.make_model(
            onnx.helper.make_graph(
                [onnx.helper.make_node(op, ["x"] if op != "Constant" else [], ["y"], name=name)],
                "g",
                [],
                [],
            )
        )
    )
    origin = node_origin(model, name)
    assert origin is not None
    assert (origin.module, origin.call, origin.exporter) == (module, call, "torchscript")
    assert origin.module_class is None


def test_torchscript_repeated_calls_and_real_suffixes():
    """`act_1` is the second call of `act` when `act` exists; `b_1` alone is a real name."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] z) {
        ["/act/Relu"] a = Relu (x)
        ["/act_1/Relu"] b = Relu (a)
        ["/b_1/Relu"] z = Relu (b)
    }
    """
    model = Model(parse(text))
    second = node_origin(model, "/act_1/Relu")
    assert (second.module, second.call) == ("act", 1)
    assert second.describe() == "`act` (call 2)"
    assert node_origin(model, "/b_1/Relu").module == "b_1"


def test_torchscript_doc_string_stack_gives_the_line():
    model = two_conv(("/conv0/Conv", "/Relu", "/conv1/Conv"))
    model.proto.graph.node[2].doc_string = (
        "/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py(560): _conv_forward\n"
        "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py(1768): _slow_forward\n"
        "/home/me/model.py(9): forward\n"
    )
    assert node_origin(model, "/conv1/Conv").describe() == "`conv1`, model.py:9"


def test_surgeon_metadata_wins_over_the_name():
    model = two_conv(("/a/conv/Conv", "/Relu", "/conv1/Conv"))
    add_props(
        model.proto.graph.node[0],
        **{SURGEON_MODULE: "enc.a.conv", SURGEON_CLASS: "Conv2d", SURGEON_SOURCE: "/x/net.py:12"},
    )
    origin = node_origin(model, "/a/conv/Conv")
    assert origin.module == "enc.a.conv"
    assert origin.describe() == "`enc.a.conv` (Conv2d), net.py:12"


def test_nodes_without_traces_and_unknown_names():
    model = two_conv(("conv_0", "Relu_1", "/conv1/Gemm"))  # last: op type does not match
    assert node_origin(model, "conv_0") is None
    assert node_origin(model, "/conv1/Gemm") is None
    assert origins(model) == {}
    with pytest.raises(NameNotFoundError) as err:
        node_origin(model, "conv0")
    assert "conv_0" in str(err.value)


def test_origin_survives_a_graph_edit_and_works_by_tensor():
    model = dynamo_two_conv()
    edited = Model.from_graph(model.to_graph(), base=model)
    assert node_origin(edited, "node_conv2d_1").describe() == "`conv1` (Conv2d), model.py:5"
    assert tensor_origin(edited, "y").module == "conv1"
    assert tensor_origin(edited, "x") is None
    assert surgeon.node_origin.__wrapped__ is node_origin  # public name


# ---------------------------------------------------------------------- matching
def test_match_dynamo_and_torchscript_two_conv():
    dynamo = dynamo_two_conv()
    assert dict(match_activations(dynamo, ["conv0", "conv1"])) == {"conv0": "a", "conv1": "y"}
    ts = two_conv(("/conv0/Conv", "/Relu", "/conv1/Conv"))
    match = match_activations(ts, ["conv0", "conv1", "relu", ""])
    assert dict(match) == {"conv0": "a", "conv1": "y"}
    assert match.kinds == {"relu": "no-nodes", "": "root"}
    assert "folded" in match.unmatched["relu"]


def test_match_containers_and_dropped_container_names():
    """A container's output is its last child's; `enc` (ModuleDict, never called) is not
    in TorchScript names, so `/a/conv/Conv` resolves to the key `enc.a.conv`."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] z) {
        ["/backbone/backbone.0/Relu"] a = Relu (x)
        ["/backbone/backbone.1/Sigmoid"] b = Sigmoid (a)
        ["/a/conv/Neg"] c = Neg (b)
        ["/Abs"] z = Abs (c)
    }
    """
    model = Model(parse(text))
    keys = ["backbone.0", "backbone.1", "backbone", "enc.a.conv", "enc.a"]
    match = match_activations(model, keys)
    assert dict(match) == {
        "backbone.0": "a",
        "backbone.1": "b",
        "backbone": "b",
        "enc.a.conv": "c",
        "enc.a": "c",
    }


def test_match_repeated_calls():
    # TorchScript tells calls apart by name.
    ts = Model(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] z) {
            ["/act/Relu"] a = Relu (x)
            ["/Neg"] b = Neg (a)
            ["/act_1/Relu"] z = Relu (b)
        }
        """)
    )
    assert dict(match_activations(ts, ["act", "act@1"])) == {"act": "a", "act@1": "z"}
    # dynamo does not: the module's nodes are split into connected groups, in order.
    dyn = Model(
        parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] z) {
            ["node_sig"] s = Sigmoid (x)
            ["node_silu"] a = Mul (x, s)
            ["node_neg"] b = Neg (a)
            ["node_sig_1"] s1 = Sigmoid (b)
            ["node_silu_1"] z = Mul (b, s1)
        }
        """)
    )
    for node in dyn.proto.graph.node:
        scope = "['', 'neg']" if node.name == "node_neg" else "['', 'act', 'silu']"
        add_props(node, **{DYNAMO_SCOPES: scope})
    assert dict(match_activations(dyn, ["act", "act@1"])) == {"act": "a", "act@1": "z"}
    # Three calls recorded but two groups of nodes: refuse to guess.
    match = match_activations(dyn, ["act", "act@1", "act@2"])
    assert dict(match) == {}
    assert set(match.kinds.values()) == {"calls"}


def test_match_without_metadata_says_so():
    model = two_conv(("conv_0", "relu_0", "conv_1"))
    match = match_activations(model, ["conv0"])
    assert dict(match) == {}
    assert match.kinds == {"conv0": "no-metadata"}


def test_surgeon_torch_imports_without_torch_and_says_how_to_install(tmp_path):
    """`import surgeon.torch` works without torch; using it (or the recipe) raises a
    SurgeonError with the install command, and the recipe exits 2 writing nothing."""
    out = tmp_path / "out.onnx"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import surgeon.torch as st, surgeon.origin\n"
        "from surgeon.errors import SurgeonError\n"
        "try:\n"
        "    st.export(object(), ())\n"
        "except SurgeonError as e:\n"
        "    print('ERR', e)\n"
        "from surgeon.cli import main\n"
        f"status = main(['run', 'torch_export_check', {str(SAMPLES / 'two_conv.onnx')!r}, "
        f"'module={SAMPLES / 'two_conv.py'}:TwoConv', '-o', {str(out)!r}])\n"
        "print('STATUS', status)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    hint = "install the [torch] extra: pip install torch==2.13.0 onnxscript"
    assert f"ERR PyTorch is not installed, and surgeon.torch needs it\n{hint}" in res.stdout
    assert "STATUS 2" in res.stdout
    assert "needs PyTorch" in res.stdout + res.stderr and hint in res.stdout + res.stderr
    assert not out.exists()
