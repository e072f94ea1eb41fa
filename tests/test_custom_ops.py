"""Models with operators from custom domains.

They load, inspect, extract and rename (the graph work needs no runtime). Whatever must
run them says clearly that onnxruntime needs the library implementing the domain, passed
with --custom-op-library; such a library is loaded only on that explicit flag.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli, write
from onnx import TensorProto, helper

import surgeon
from surgeon import fastops
from surgeon.cli import COMMANDS
from surgeon.errors import RuntimeFailure

CUSTOM = """<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
agraph (float[2, 3] x) => (y) {
    a = Relu(x)
    b = com.acme.FancyGelu <alpha = 0.5> (a)
    y = Neg(b)
}"""


def _custom(tmp_path, *, declare_b: bool = True):
    proto = parse(CUSTOM)
    if declare_b:  # exporters of custom ops usually declare the op's output type
        proto.graph.value_info.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]))
    return write(proto, tmp_path / "custom.onnx")


def _text(result) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_loads_and_inspects(tmp_path):
    path = _custom(tmp_path)
    model = surgeon.load(path)
    assert [n.domain for n in model.proto.graph.node] == ["", "com.acme", ""]
    result = run_cli("inspect", path, "--json")
    assert result.status == 0, result.stderr
    info = result.json
    assert "com.acme" in info["custom_domains"]
    assert info["op_types"]["com.acme::FancyGelu"] == 1
    result = run_cli("inspect", path)
    assert result.status == 0 and "com.acme" in result.stdout


def test_extract_and_rename_work_without_a_runtime(tmp_path):
    model = surgeon.load(_custom(tmp_path))
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -0.25, 0.0]], np.float32)

    before = surgeon.extract(model, ["x"], ["a"], verify=False)
    assert [n.op_type for n in before.model.proto.graph.node] == ["Relu"]
    got = surgeon.run(before.model, {"x": x})["a"]  # standard ops only: runs anywhere
    assert np.array_equal(got, np.maximum(x, 0))

    custom_part = surgeon.extract(model, ["a"], ["b"], verify=False)
    node = custom_part.model.proto.graph.node[0]
    assert (node.domain, node.op_type) == ("com.acme", "FancyGelu")
    assert node.attribute[0].f == 0.5
    assert ("com.acme", 1) in [(o.domain, o.version) for o in custom_part.model.proto.opset_import]
    assert custom_part.details["outputs"][0]["dtype"] == "float32"

    after = surgeon.extract(model, ["b"], ["y"], verify=False)
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(surgeon.run(after.model, {"b": b})["y"], -b)

    renamed = surgeon.rename(model, {"y": "z", "a": "relu_out"}, verify=False)
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in renamed.model.proto.graph.node]
    assert nodes == [
        ("Relu", ["x"], ["relu_out"]),
        ("FancyGelu", ["relu_out"], ["b"]),
        ("Neg", ["b"], ["z"]),
    ]
    assert model.output_names == ["y"]  # the input model is untouched


def test_library_error_names_the_domain_and_the_flag():
    model = surgeon.Model(parse(CUSTOM))
    with pytest.raises(RuntimeFailure) as e:
        surgeon.run(model, {"x": np.zeros((2, 3), np.float32)})
    assert "com.acme" in str(e.value) and "--custom-op-library" in str(e.value)


# Every command that must run the model, with an output path where it writes one.
RUNNING = {
    "debug": ["debug", "{M}", "-o", "{OUT}"],
    "diff": ["diff", "{M}", "{M}"],
    "extract": ["extract", "{M}", "--inputs", "x", "--outputs", "a", "-o", "{OUT}"],
    "rename": ["rename", "{M}", "--map", "y=z", "-o", "{OUT}"],
    "reshape-io": ["reshape-io", "{M}", "--dims", "x:Nx3", "-o", "{OUT}"],
    "check-dynamic": ["check-dynamic", "{M}"],
}


@pytest.mark.parametrize("command", [c for c in RUNNING if c in COMMANDS])
def test_running_without_the_library_is_exit_2_with_the_flag_named(tmp_path, command):
    path = _custom(tmp_path)
    out = tmp_path / "out.onnx"
    argv = [a.format(M=path, OUT=out) for a in RUNNING[command]]
    for extra in ([], ["--json"]):
        result = run_cli(*argv, *extra)
        text = _text(result)
        assert result.status == 2, text
        assert "--custom-op-library" in text and "com.acme" in text
        assert "Traceback" not in text
        assert not out.exists()


def test_missing_or_broken_library_is_exit_2(tmp_path):
    path = _custom(tmp_path)
    result = run_cli("diff", path, path, "--custom-op-library", tmp_path / "nope.so")
    assert result.status == 2 and "does not exist" in _text(result)
    fake = tmp_path / "fake.so"
    fake.write_text("not a shared library")
    result = run_cli("debug", path, "--custom-op-library", fake)
    assert result.status == 2 and "cannot load custom op library" in _text(result)
    assert "Traceback" not in _text(result)


def test_library_is_loaded_only_on_the_explicit_flag(tmp_path, monkeypatch):
    """Record every library onnxruntime is asked to load."""
    import onnxruntime

    loaded: list[str] = []

    class Recording(onnxruntime.SessionOptions):
        def register_custom_ops_library(self, path):
            loaded.append(path)  # not really loaded: the file is a placeholder

    monkeypatch.setattr(onnxruntime, "SessionOptions", Recording)
    plain = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 3] x) => (y) { y = Relu(x) }"""),
        tmp_path / "plain.onnx",
    )
    for argv in (["debug", plain], ["diff", plain, plain], ["inspect", plain]):
        assert run_cli(*argv).status == 0
    # (surgeon's own kernels are loaded for the models surgeon builds: see fastops)
    own = fastops.library()
    assert [p for p in loaded if p != own] == []
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF")
    assert run_cli("diff", plain, plain, "--custom-op-library", lib).status == 0
    assert {p for p in loaded if p != own} == {str(lib)}


def _extensions_library() -> str | None:
    if importlib.util.find_spec("onnxruntime_extensions") is None:
        return None
    from onnxruntime_extensions import get_library_path

    return get_library_path()


@pytest.mark.skipif(_extensions_library() is None, reason="onnxruntime-extensions not installed")
def test_a_real_library_makes_every_command_work(tmp_path):
    """onnxruntime-extensions implements ai.onnx.contrib.Inverse (a matrix inverse)."""
    lib = _extensions_library()
    path = write(
        parse("""<ir_version: 8, opset_import: ["" : 17, "ai.onnx.contrib" : 1]>
        agraph (float[3, 3] x) => (y) {
            a = Relu(x)
            b = ai.onnx.contrib.Inverse(a)
            y = Neg(b)
        }"""),
        tmp_path / "inv.onnx",
    )
    x = np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.5, 0.0, 3.0]], np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    flag = ["--custom-op-library", lib]
    assert run_cli("debug", path, *flag).status == 0
    assert run_cli("diff", path, path, "--exact", *flag).status == 0
    sub = tmp_path / "sub.onnx"
    assert run_cli("extract", path, "--inputs", "a", "--outputs", "b", "-o", sub, *flag).status == 0
    assert run_cli("rename", path, "--map", "y=z", "-o", tmp_path / "r.onnx", *flag).status == 0
    options = surgeon.RunOptions(custom_op_libraries=(lib,))
    got = surgeon.run(surgeon.load(sub), {"a": x}, options=options)["b"]
    np.testing.assert_allclose(got, np.linalg.inv(x), rtol=1e-5, atol=1e-6)
    assert onnx.load(str(sub)).graph.node[0].domain == "ai.onnx.contrib"


RENAME_RECIPE = '''
"""Renames y to z (the recipe passes no onnxruntime options of its own)."""
import surgeon

MODELS = ("model",)
OUTPUTS = ("renamed",)

def recipe(models):
    return surgeon.rename(models[0], {"y": "z"})
'''


def test_run_passes_its_runtime_options_to_the_recipes_edits(tmp_path, monkeypatch):
    """`surgeon run --custom-op-library/--optimization` reach the verification of the
    edits a recipe makes without options of its own."""
    import onnxruntime

    recipe = tmp_path / "ren.py"
    recipe.write_text(RENAME_RECIPE)
    path = _custom(tmp_path)
    out = tmp_path / "out.onnx"
    result = run_cli("run", recipe, path, "-o", out)
    assert result.status == 2 and "--custom-op-library" in _text(result)
    assert not out.exists()

    loaded: list[str] = []
    levels: list = []

    class Recording(onnxruntime.SessionOptions):
        def register_custom_ops_library(self, path):
            loaded.append(path)  # not really loaded: the file is a placeholder

    real_session = onnxruntime.InferenceSession

    def session(model, sess_options=None, **kwargs):
        levels.append(sess_options.graph_optimization_level)
        return real_session(model, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(onnxruntime, "SessionOptions", Recording)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    plain = write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 3] x) => (y) { y = Relu(x) }"""),
        tmp_path / "plain.onnx",
    )
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF")
    argv = ["run", recipe, plain, "-o", out, "--custom-op-library", lib, "--optimization", "all"]
    result = run_cli(*argv)
    assert result.status == 0, result.stderr
    assert {p for p in loaded if p != fastops.library()} == {str(lib)}
    assert levels and set(levels) == {onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL}


@pytest.mark.skipif(_extensions_library() is None, reason="onnxruntime-extensions not installed")
def test_a_real_library_makes_run_work(tmp_path):
    recipe = tmp_path / "ren.py"
    recipe.write_text(RENAME_RECIPE)
    path = write(
        parse("""<ir_version: 8, opset_import: ["" : 17, "ai.onnx.contrib" : 1]>
        agraph (float[3, 3] x) => (y) { b = ai.onnx.contrib.Inverse(x)
                                        y = Neg(b) }"""),
        tmp_path / "inv.onnx",
    )
    out = tmp_path / "out.onnx"
    lib = _extensions_library()
    result = run_cli("run", recipe, path, "-o", out, "--custom-op-library", lib, "--json")
    assert result.status == 0, result.stderr
    assert result.json["steps"][0]["passed"] and surgeon.load(out).output_names == ["z"]
