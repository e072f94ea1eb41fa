"""surgeon.torch: export + check, tracing pitfalls, capture and layer-wise comparison.

Skipped without torch (CI installs the [torch] extra). Most tests use the TorchScript
exporter (tens of milliseconds); the dynamo exporter (seconds) runs once, in a
module-scoped fixture.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, run_cli
from onnx import numpy_helper

torch = pytest.importorskip("torch")

import onnxruntime as ort  # noqa: E402

import surgeon  # noqa: E402
import surgeon.torch as st  # noqa: E402
from surgeon.compare import Tolerance, compare_arrays  # noqa: E402
from surgeon.errors import OutputPathError, SurgeonError, UsageError  # noqa: E402
from surgeon.origin import node_origin, tensor_origin  # noqa: E402
from surgeon.runner import run  # noqa: E402

HW = {"x": {2: "H", 3: "W"}, "output": {2: "H", 3: "W"}}


class TwoConv(torch.nn.Module):
    """The mission's example: conv0 3->8, relu, conv1 8->4, 3x3 kernels, padding 1."""

    def __init__(self):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv1(torch.relu(self.conv0(x)))


def line_of(function, text: str) -> int:
    lines, start = inspect.getsourcelines(function)
    return start + next(i for i, line in enumerate(lines) if text in line)


CONV1_LINE = line_of(TwoConv.forward, "self.conv1(")


def two_conv() -> TwoConv:
    torch.manual_seed(0)
    return TwoConv().eval()


def example(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def ort_run(path, x: np.ndarray) -> np.ndarray:
    """A plain onnxruntime run, independent of surgeon's runner."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def dynamo_export(tmp_path_factory):
    """The one dynamo export of this file (several seconds)."""
    path = tmp_path_factory.mktemp("dynamo") / "two_conv.onnx"
    module = two_conv()
    check = st.export(module, (example(1, 3, 16, 16),), path, dynamic_axes=HW)
    return module, check


# ---------------------------------------------------------------------- export + check
def test_two_conv_dynamic_hw_passes_at_several_sizes(tmp_path):
    module = two_conv()
    path = tmp_path / "two_conv.onnx"
    check = st.export(
        module,
        (example(1, 3, 16, 16),),
        path,
        dynamic_axes=HW,
        exporter="torchscript",
        sizes={"H": [8, 24, 33], "W": [12, 40]},
    )
    assert check, check.summary()
    assert check.path == path and path.is_file()
    assert check.input_names == ["x"] and check.output_names == ["output"]
    labels = [r.label for r in check.runs]
    assert labels == ["export shape", "H=8", "H=24", "H=33", "W=12", "W=40", "H=8, W=12"]
    assert all(r.report and r.report.passed for r in check.runs)
    assert check.runs[3].shapes == {"x": [1, 3, 33, 16]}
    assert not check.errors
    loaded = surgeon.load(path)
    assert loaded.inputs[0].shape == (1, 3, "H", "W")
    assert loaded.provenance[-1]["edit"] == "torch.export"
    # Independent reference: a plain onnxruntime run against the module, at a size the
    # check did not try.
    x = example(1, 3, 20, 28)
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(ort_run(path, x.numpy()), expected, atol=1e-5, rtol=1e-4)
    data = check.to_dict()
    assert data["passed"] is True and data["exporter"] == "torchscript"
    assert data["dynamic_axes"] == {"x": {"2": "H", "3": "W"}, "output": {"2": "H", "3": "W"}}
    assert {"runs", "pitfalls", "export_seconds", "check_seconds", "output_map"} <= set(data)


class ViewFromShape(torch.nn.Module):
    def forward(self, x):
        n = int(x.shape[2]) * int(x.shape[3])  # Python ints: the tracer bakes them
        return x.view(x.shape[0], x.shape[1], n) * 2


def test_shape_ints_in_view_are_flagged_at_another_size(tmp_path):
    path = tmp_path / "view.onnx"
    check = st.export(
        ViewFromShape(),
        (example(1, 3, 8, 12),),
        path,
        dynamic_axes={"x": {2: "H", 3: "W"}},
        exporter="torchscript",
    )
    assert not check
    assert check.runs[0].label == "export shape" and check.runs[0].passed
    failed = [p for p in check.errors if p.kind == "axis-failed"]
    assert len(failed) == 1
    pitfall = failed[0]
    assert pitfall.node == "/Reshape"
    # The baked constant and its meaning are named, and the line that made it.
    assert "96 = H*W (8*12)" in pitfall.message
    assert "H=16" in pitfall.message and "W=24" in pitfall.message
    view_line = line_of(ViewFromShape.forward, "x.view(")
    assert (
        pitfall.origin == f"the top-level module (ViewFromShape), test_torch_bridge.py:{view_line}"
    )
    assert any(p.kind == "tracer-warning" for p in check.pitfalls)
    assert "FAIL" in check.summary()
    # A failed check writes nothing; keep_failed writes it on purpose.
    assert check.path is None and not path.exists()
    assert "not written" in check.notes[0]
    kept = st.export(
        ViewFromShape(),
        (example(1, 3, 8, 12),),
        path,
        dynamic_axes={"x": {2: "H", 3: "W"}},
        exporter="torchscript",
        keep_failed=True,
    )
    assert not kept and kept.path == path and path.is_file()


class ViewWidth(torch.nn.Module):
    def forward(self, x):
        return x.view(1, -1, int(x.shape[3])) + 1  # runs at any size, wrong shape


def test_wrong_shape_at_another_size_names_the_baked_constant():
    check = st.export(
        ViewWidth(), (example(1, 3, 8, 12),), dynamic_axes={"x": [2, 3]}, exporter="torchscript"
    )
    shape = [p for p in check.errors if p.kind == "axis-shape"]
    assert len(shape) == 1
    assert "has shape [1, 48, 12] where PyTorch gives [1, 24, 24]" in shape[0].message
    assert "12 = x_dim3 at export" in shape[0].message
    assert shape[0].node == "/Reshape"


class Detector(torch.nn.Module):
    def __init__(self, label=True):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 6, 1)
        self.label = label

    def forward(self, x):
        y = self.head(x)
        out = {"boxes": y[:, :4], "scores": y[:, 4:].sigmoid()}
        if self.label:
            out["label"] = "cat"
        return out


def test_dict_output_lost_keys_are_reported():
    check = st.export(Detector(), (example(1, 3, 8, 8),), exporter="torchscript")
    assert not check
    lost = [p for p in check.errors if p.kind == "lost-output"]
    assert len(lost) == 1 and "`label` is a str ('cat')" in lost[0].message
    flattened = next(p for p in check.pitfalls if p.kind == "dict-output")
    assert flattened.severity == "warning"
    assert "`boxes` -> `boxes`, `scores` -> `scores`" in flattened.message
    # The tensors themselves were compared, by position.
    assert check.output_map == {"boxes": "boxes", "scores": "scores"}
    assert check.runs[0].report.passed


def test_dict_keys_versus_user_output_names():
    torch.manual_seed(0)
    check = st.export(
        Detector(label=False),
        (example(1, 3, 8, 8),),
        output_names=["out0", "out1"],
        exporter="torchscript",
    )
    assert check  # only a warning: every tensor is there and matches
    flattened = next(p for p in check.pitfalls if p.kind == "dict-output")
    assert "`boxes` -> `out0`, `scores` -> `out1`" in flattened.message


class Scaled(torch.nn.Module):
    def forward(self, scale, x, mode):
        y = x * scale if mode == "scale" else x
        return y, [x + 1, (x + 2,)]


def test_argument_and_nested_output_pitfalls():
    """TorchScript turns a Python number into an input (named, and fed by the check);
    a string is baked; nested outputs are flattened."""
    check = st.export(Scaled(), (0.5, example(2, 3), "scale"), exporter="torchscript")
    assert check, check.summary()
    kinds = {p.kind: p for p in check.pitfalls}
    assert "argument `scale` is a Python number (0.5)" in kinds["number-input"].message
    assert "ONNX input `scale` (float64)" in kinds["number-input"].message
    assert "argument `mode` is a str ('scale')" in kinds["baked-argument"].message
    assert "`output1.1.0` -> `output1.1.0`" in kinds["nested-output"].message
    assert check.input_names == ["scale", "x"]
    # Without the number (1.0 instead of 0.5) the ONNX output would differ: it was fed.
    assert check.runs[0].report.passed


class FloatOutput(torch.nn.Module):
    def forward(self, x):
        return x + 1, 3.5


def test_exporter_failure_lists_the_pitfalls_found_first():
    with pytest.raises(SurgeonError) as err:
        st.export(FloatOutput(), (example(2),), exporter="torchscript")
    text = str(err.value)
    assert "torch.onnx.export (torchscript) failed on FloatOutput" in text
    assert "`output1` is a Python number (3.5)" in text


def test_export_usage_errors(tmp_path):
    module = two_conv()
    x = (example(1, 3, 8, 8),)
    with pytest.raises(UsageError, match=r"`X`.*did you mean `x`"):
        st.export(module, x, dynamic_axes={"X": {2: "H"}, "x": {3: "W"}}, exporter="torchscript")
    with pytest.raises(UsageError, match="axis 4.*rank 4"):
        st.export(module, x, dynamic_axes={"x": {4: "H"}}, exporter="torchscript")
    with pytest.raises(UsageError, match="unknown exporter `jit`"):
        st.export(module, x, exporter="jit")
    with pytest.raises(UsageError, match="sizes names dim `Q`"):
        st.export(module, x, dynamic_axes={"x": {2: "H"}}, sizes={"Q": [4]}, exporter="torchscript")
    with pytest.raises(UsageError, match="input_names gives 2 name"):
        st.export(module, x, input_names=["a", "b"], exporter="torchscript")
    with pytest.raises(OutputPathError, match="does not exist"):
        st.export(module, x, tmp_path / "missing" / "m.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_training_mode_is_restored_and_reported():
    module = TwoConv()  # training mode, as constructed
    check = st.export(module, (example(1, 3, 8, 8),), exporter="torchscript")
    assert module.training
    assert check and check.pitfalls[0].kind == "training-mode"


# ---------------------------------------------------------------------- reports speak PyTorch
def test_torchscript_export_names_module_class_and_line():
    check = st.export(two_conv(), (example(1, 3, 8, 8),), exporter="torchscript")
    origin = node_origin(check.model, "/conv1/Conv")
    assert origin.describe() == f"`conv1` (Conv2d), test_torch_bridge.py:{CONV1_LINE}"
    # The stacks moved into metadata: no bulky doc_string left.
    assert all(not n.doc_string for n in check.model.proto.graph.node)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plain_torchscript_export_still_names_the_module(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(two_conv(), (example(1, 3, 8, 8),), str(path), dynamo=False)
    model = surgeon.load(path)
    assert node_origin(model, "/conv1/Conv").describe() == "`conv1`"


def test_dynamo_export_passes_and_names_module(dynamo_export):
    _, check = dynamo_export
    assert check, check.summary()
    assert check.exporter == "dynamo"
    assert len(check.runs) == 4 and all(r.passed for r in check.runs)
    node = check.model.producers()["output"].name
    assert node == "node_conv2d_1"
    assert node_origin(check.model, node).describe() == (
        f"`conv1` (Conv2d), test_torch_bridge.py:{CONV1_LINE}"
    )
    # ... from the file alone.
    assert node_origin(surgeon.load(check.path), node).module == "conv1"


# ---------------------------------------------------------------------- capture
def perturbed(model, weight: str, tmp_path):
    """The exported model with one weight edited: the deliberately wrong layer."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for t in proto.graph.initializer:
        if t.name == weight:
            w = numpy_helper.to_array(t).copy()
            w[0, 0] += 0.25
            t.CopyFrom(numpy_helper.from_array(w, t.name))
            break
    else:
        raise AssertionError(f"no initializer {weight}")
    path = tmp_path / "wrong.onnx"
    onnx.save(proto, str(path))
    return surgeon.load(path), path


def first_divergence(model, capture) -> str | None:
    """Layer-wise comparison in topological order, written independently of `debug`."""
    tensors = [o for n in model.proto.graph.node for o in n.output if o in capture.arrays()]
    values = run(model, capture.inputs, outputs=tensors)
    for t in tensors:
        d = compare_arrays(values[t], capture.arrays()[t], Tolerance(atol=1e-4, rtol=1e-4))
        if not d.passed:
            return t
    return None


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_wrong_layer_is_located_with_its_module_name(exporter, dynamo_export, tmp_path):
    if exporter == "dynamo":
        module, check = dynamo_export
    else:
        module = two_conv()
        check = st.export(module, (example(1, 3, 16, 16),), dynamic_axes=HW, exporter=exporter)
    x = example(1, 3, 16, 16)
    acts = st.capture(module, (x,), onnx_model=check.model, path=tmp_path / "acts.npz")
    conv1_out = check.model.producers()["output"].output[0]
    assert acts.matched == {"conv0": check.model.proto.graph.node[0].output[0], "conv1": conv1_out}
    assert sorted(np.load(acts.path).files) == sorted(["x", "output", acts.matched["conv0"]])
    # The unedited export matches the captured activations everywhere ...
    assert first_divergence(check.model, acts) is None
    # ... the edited one first diverges at conv1's output, which names `conv1`.
    wrong, wrong_path = perturbed(check.model, "conv1.weight", tmp_path)
    assert first_divergence(wrong, acts) == conv1_out
    origin = tensor_origin(wrong, conv1_out)
    assert origin.module == "conv1" and origin.module_class == "Conv2d"
    # The same through the CLI: `surgeon debug --ref acts.npz`.
    result = run_cli("debug", wrong_path, "--ref", acts.path, "--json")
    assert result.status == 1, result.stderr
    root = result.json["root_cause"]
    assert root["node"] == check.model.producers()["output"].name
    assert "`conv1` (Conv2d)" in root["origin"]
    assert f"test_torch_bridge.py:{CONV1_LINE}" in root["origin"]


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x)))) + x


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = torch.nn.Sequential(Block(), Block())
        self.act = torch.nn.SiLU()
        self.heads = torch.nn.ModuleDict({"cls": torch.nn.Conv2d(4, 2, 1)})

    def forward(self, x):
        y = self.act(self.stem(x))
        y = self.act(self.blocks(y))
        return self.heads["cls"](y)


def test_capture_matches_nested_repeated_and_folded_modules(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics to fold
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = example(1, 3, 8, 8)
    check = st.export(net, (x,), exporter="torchscript")
    acts = st.capture(net, x, onnx_model=check.model)
    assert acts.matched["act"] == "/act/Mul_output_0"
    assert acts.matched["act@1"] == "/act_1/Mul_output_0"
    assert acts.matched["blocks"] == acts.matched["blocks.1"] == "/blocks/blocks.1/Add_output_0"
    assert acts.matched["heads.cls"] == "output"  # ModuleDict name absent from node names
    # TorchScript folds BatchNorm into the Conv and keeps the Conv's name: the tensor
    # holds the BatchNorm's output, so it is matched to the BatchNorm.
    assert acts.matched["blocks.0.bn"] == "/blocks/blocks.0/conv/Conv_output_0"
    assert "folded `blocks.0.bn`" in acts.unmatched["blocks.0.conv"]
    assert "returns its input unchanged" in acts.unmatched["blocks.0.drop"]
    # Every match holds the same values in onnxruntime (an independent plain run).
    session_outputs = list(dict.fromkeys(acts.matched.values()))
    values = run(check.model, acts.inputs, outputs=session_outputs)
    for key, tensor in acts.matched.items():
        np.testing.assert_allclose(values[tensor], acts.activations[key], atol=1e-5, rtol=1e-4)


class Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.split = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.split(x).chunk(2, dim=1)


def test_capture_without_a_model_and_errors(tmp_path):
    acts = st.capture(Pair(), example(1, 3, 4, 4), path=tmp_path / "acts.npz")
    assert sorted(np.load(acts.path).files) == ["output0", "output1", "split", "x"]
    assert acts.classes == {"split": "Conv2d"}
    with pytest.raises(OutputPathError, match=r"\.npz"):
        st.capture(Pair(), example(1, 3, 4, 4), path=tmp_path / "acts.json")
    other = st.export(two_conv(), (example(1, 3, 4, 4),), exporter="torchscript")
    with pytest.raises(SurgeonError, match="does not look like an export of Pair"):
        st.capture(Pair(), example(1, 3, 4, 4), onnx_model=other.model)
    assert not (tmp_path / "acts.json").exists()


# ---------------------------------------------------------------------- recipe, rendering
def test_recipe_exports_checks_and_compares(tmp_path):
    out, acts = tmp_path / "two_conv_dynamic.onnx", tmp_path / "acts.npz"
    sample = SAMPLES / "two_conv.onnx"
    result = run_cli(
        "run",
        "torch_export_check",
        sample,
        f"module={SAMPLES / 'two_conv.py'}:TwoConv",
        "exporter=torchscript",
        f"acts={acts}",
        "-o",
        out,
        "--json",
    )
    assert result.status == 0, result.stderr
    check, layers = result.json["reports"]
    assert "reproduces two_conv.onnx" in [s["edit"] for s in result.json["steps"]]
    assert check["passed"] and check["exporter"] == "torchscript"
    assert [r["label"] for r in check["runs"]] == [
        "export shape",
        "H=17",
        "H=64",
        "W=17",
        "W=64",
        "H=17, W=17",
    ]
    assert layers["passed"] and layers["root_cause"] is None
    assert {c["name"] for c in layers["comparison"]} >= {"/conv0/Conv_output_0", "out"}
    # The export took the sample's weights and I/O names: it reproduces the sample.
    exported = surgeon.load(out)
    assert exported.input_names == ["in"] and exported.inputs[0].shape == (1, 3, "H", "W")
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 30)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, x), ort_run(sample, x), atol=1e-5, rtol=1e-4)
    assert sorted(np.load(acts).files) == ["/conv0/Conv_output_0", "in", "out"]


def test_render_export_check():
    import io

    from rich.console import Console

    from surgeon.report.torch_export import render_export_check

    check = st.export(
        ViewFromShape(), (example(1, 3, 8, 12),), dynamic_axes={"x": [2, 3]}, exporter="torchscript"
    )
    buf = io.StringIO()
    render_export_check(Console(file=buf, width=120, color_system=None), check)
    text = buf.getvalue()
    assert text.startswith("FAIL: 1 problem(s) in the torchscript export")
    assert "onnxruntime failed" in text and "x: 1x3x16x12" in text
    assert "[axis-failed]" in text and "PyTorch: the top-level module (ViewFromShape)" in text


def test_an_export_with_its_weights_beside_it_keeps_them(monkeypatch):
    # Above 2 GB torch writes the weights next to the model, in surgeon's scratch folder,
    # which is gone when export returns: the model must hold them (the exporter is made
    # to write them beside it here, at any size).
    real = torch.onnx.export

    def beside(module, args, path, **kwargs):
        real(module, args, path, **kwargs)
        proto = onnx.load(path)
        onnx.save(proto, path, save_as_external_data=True, location="w.bin", size_threshold=0)

    monkeypatch.setattr(torch.onnx, "export", beside)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.Conv2d(64, 64, 3)).eval()
    check = st.export(module, (example(1, 3, 8, 8),), exporter="torchscript")
    assert check, check.summary()
    model = check.model
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.proto.graph.initializer
    )
    x = example(1, 3, 8, 8)
    got = run(model, {model.input_names[0]: x.numpy()})[model.output_names[0]]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
