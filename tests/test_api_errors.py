"""The Python API is the CLI's twin: every user error is a SurgeonError, and its message
does not send a Python user to a command-line flag."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
from conftest import parse

import surgeon
from surgeon.arguments import MODEL_PARAMETERS, PATH_PARAMETERS

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4] x) => (y) {
    h = Relu (x)
    y = Neg (h)
}"""

# A flag spelled for the command line: `--name` or `-o`. "(--inplace on the command
# line)" after the API's own spelling is fine; a bare flag is not.
_FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*|-o\b)")
_CLI_ASIDE = re.compile(r"\([^()]*on the command line\)")


def _cli_flags(error: surgeon.SurgeonError) -> list[str]:
    return _FLAG.findall(_CLI_ASIDE.sub("", str(error)))


@pytest.fixture(scope="module")
def model():
    return surgeon.Model(parse(TEXT))


@pytest.fixture(scope="module")
def edited(model):
    return surgeon.rename(model, {"y": "z"}, verify=False)


def _valid_calls(model, tmp_path):
    """A working call of every public function that takes a model: name -> (args, kwargs)."""
    return {
        "save": ((model, tmp_path / "out.onnx"), {}),
        "verify": ((model, model), {}),
        "make_feeds": ((model,), {}),
        "run": ((model, {"x": np.ones((1, 4), np.float32)}), {}),
        "describe": ((model,), {}),
        "tap": ((model, ["h"]), {}),
        "debug": ((model,), {}),
        "merge": ((model, model), {"io_map": {"y": "x"}, "prefix2": "b/"}),
        "extract": ((model, ["h"], ["y"]), {}),
        "rename": ((model, {"y": "z"}), {}),
        "reshape_io": ((model, {"x": "N,4"}), {}),
        "fold": ((model,), {}),
        "convert": ((model, 11), {}),
        "edit_nodes": ((model, [surgeon.BypassNode("h")]), {}),
        "rewrite": ((model, ["topk"]), {}),
        "check_dynamic": ((model,), {}),
        "declared_vs_actual": ((model, {}), {}),
        "node_origin": ((model, "n"), {}),
        "match_activations": ((model, []), {}),
        "build_nms": (("yolov8", 3), {"detector": None}),
        "run_recipe": (("r", None, [model], {}), {}),
        "blame": ((model,), {}),
        "plan_fp16": ((model,), {"tolerance": surgeon.Tolerance(atol=1e-2, rtol=1e-2)}),
        # a model with no Q/DQ is refused as a SurgeonError, which these tests accept;
        # what they check is how the model arguments are read
        "suggest_exclusions": ((model, model), {}),
    }


def _call_with(name, args, kwargs, parameter, value):
    """Call ``surgeon.<name>`` as given, with ``parameter`` replaced by ``value``."""
    function = getattr(surgeon, name)
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.arguments[parameter] = value
    return function(*bound.args, **bound.kwargs)


def _public_functions():
    names = []
    for name in surgeon.__all__:
        value = getattr(surgeon, name)
        if callable(value) and not isinstance(value, type):
            names.append(name)
    return names


def test_the_table_knows_every_public_function_that_takes_a_model(model, tmp_path):
    calls = _valid_calls(model, tmp_path)
    assert set(MODEL_PARAMETERS) <= set(calls)
    for name in _public_functions():
        signature = inspect.signature(getattr(surgeon, name))
        model_like = [p for p in signature.parameters if p in ("model", "models", "detector")]
        if model_like:
            assert name in MODEL_PARAMETERS, name


@pytest.mark.parametrize("name", _public_functions())
@pytest.mark.parametrize(
    "args", [(), (5,), (None,), ("missing.onnx",), (5, 5), (None,) * 4, ("a", "b", "c")]
)
def test_any_wrong_call_is_a_surgeon_error(name, args):
    function = getattr(surgeon, name)
    try:
        function(*args)
    except surgeon.SurgeonError as error:
        assert not _cli_flags(error), str(error)
    # anything else (TypeError, AttributeError, KeyError, ...) fails the test


@pytest.mark.parametrize(
    ("name", "parameter"),
    [(name, p) for name, params in MODEL_PARAMETERS.items() for p in params],
)
@pytest.mark.parametrize("bad", [5, None, "missing.onnx", b"model.onnx", object()])
def test_a_model_parameter_given_anything_else_names_itself(name, parameter, bad, model, tmp_path):
    args, kwargs = _valid_calls(model, tmp_path)[name]
    kind = MODEL_PARAMETERS[name][parameter]
    if kind == "optional" and bad is None:
        return
    if kind == "models":
        bad = [bad]
    with pytest.raises(surgeon.SurgeonError) as caught:
        _call_with(name, args, kwargs, parameter, bad)
    assert f"`{parameter}" in str(caught.value) or "missing.onnx" in str(caught.value)
    assert not _cli_flags(caught.value)


@pytest.mark.parametrize("name", sorted(set(MODEL_PARAMETERS) - {"save", "build_nms"}))
def test_a_path_or_an_edited_result_is_taken_for_a_model(name, model, edited, tmp_path):
    args, kwargs = _valid_calls(model, tmp_path)[name]
    path = surgeon.save(model, tmp_path / "m.onnx")
    parameter = next(iter(MODEL_PARAMETERS[name]))
    for value in (str(path), path, edited, model.proto):
        given = [value] if MODEL_PARAMETERS[name][parameter] == "models" else value
        if name == "run_recipe":
            continue  # its module argument is a real recipe; the coercion is tested above
        try:
            _call_with(name, args, kwargs, parameter, given)
        except surgeon.SurgeonError as error:
            # a path's or Edited's model may differ (rename's z) but never by type
            assert "must be" not in error.message, error


def test_the_three_reported_calls(model, edited, tmp_path):
    """surgeon.save(edited), tap(path, ...) and verify(m, path) from the issue."""
    with pytest.raises(surgeon.UsageError, match="missing a required argument: 'path'"):
        surgeon.save(edited)
    path = surgeon.save(edited, tmp_path / "e.onnx")  # an Edited is saved as its model
    assert surgeon.load(path).output_names == ["z"]
    tapped = surgeon.tap(str(path), ["h"])
    assert "h" in tapped.model.output_names and tapped.passed
    assert surgeon.verify(surgeon.load(path), str(path)).passed


def test_save_wants_a_model_not_a_path(tmp_path, model):
    path = surgeon.save(model, tmp_path / "m.onnx")
    with pytest.raises(surgeon.UsageError, match="not a path") as caught:
        surgeon.save(str(path), tmp_path / "copy.onnx")
    assert "surgeon.save(model, path)" in caught.value.hint
    with pytest.raises(surgeon.UsageError, match="`path` must be a path"):
        surgeon.save(model, model)


def test_load_of_a_model_says_it_is_loaded(model):
    with pytest.raises(surgeon.UsageError, match="already loaded"):
        surgeon.load(model)


def test_overwriting_the_input_names_the_argument_not_the_flag(tmp_path, model):
    path = surgeon.save(model, tmp_path / "m.onnx")
    loaded = surgeon.load(path)
    with pytest.raises(surgeon.OutputPathError) as caught:
        surgeon.save(loaded, path)
    assert "inplace=True" in str(caught.value)
    assert "with -o" not in str(caught.value)
    assert not _cli_flags(caught.value)
    surgeon.save(loaded, path, inplace=True)  # following the hint works


def test_an_invalid_model_proto_is_a_load_error(model):
    broken = parse(TEXT)
    del broken.opset_import[:]
    with pytest.raises(surgeon.ModelLoadError, match="ModelProto given as `model`"):
        surgeon.describe(broken)


@pytest.mark.parametrize(
    ("name", "parameter"),
    [(name, p) for name, params in PATH_PARAMETERS.items() for p in params],
)
@pytest.mark.parametrize("bad", [5, None, b"model.onnx", ""])
def test_a_path_parameter_given_anything_else_names_itself(name, parameter, bad, model, tmp_path):
    calls = {
        **_valid_calls(model, tmp_path),
        "load": (("m.onnx",), {}),
        "load_recipe": (("x",), {}),
    }
    args, kwargs = calls[name]
    with pytest.raises(surgeon.UsageError, match=f"`{parameter}`"):
        _call_with(name, args, kwargs, parameter, bad)
