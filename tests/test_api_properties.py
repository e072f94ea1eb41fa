"""Property: no wrong-typed argument to any public ``surgeon.<name>`` escapes as a
Python error. Whatever hypothesis puts in one parameter of an otherwise working call
(ints, floats, None, dicts, strings, lists of ints, bare objects), the call succeeds or
raises a SurgeonError; a TypeError, ValueError, AttributeError or KeyError fails."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from conftest import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import surgeon

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (y) {
    h = Relu (x)
    y = Neg (h)
}"""

# Result types: surgeon builds them, a user reads them. They are not inputs to check.
RESULTS = {"DiffReport", "TensorDiff", "DebugReport", "Edited", "Built", "TensorInfo"}

# Integers: negative ones, small ones, and ones beyond 64 bits. Not 10**9: a count that
# large is a valid request for a huge model (build_nms(max_det=10**9) asks for 24 GB of
# padding), a resource question, not a wrong type.
WRONG = st.one_of(
    st.integers(-(2**70), -1),
    st.integers(0, 1000),
    st.sampled_from([2**63, 2**70, -(2**63) - 1]),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
    st.dictionaries(st.integers(), st.text(max_size=3), max_size=2),
    st.builds(object),
    st.tuples(st.text(max_size=3), st.integers()),
)


@pytest.fixture(scope="module")
def model():
    proto = parse(TEXT)
    for index, node in enumerate(proto.graph.node):
        node.name = f"n{index}"
    return surgeon.Model(proto)


def _valid_calls(model, folder):
    """One working call of every public callable: name -> (args, kwargs)."""
    x = np.ones((1, 4), np.float32)
    recipe_file = folder / "noop.py"
    recipe_file.write_text(
        '"""A recipe that renames y."""\nimport surgeon\n\n\n'
        'def recipe(models):\n    return surgeon.rename(models[0], {"y": "z"})\n'
    )
    recipe = surgeon.load_recipe(str(recipe_file))[1]
    return {
        "Model": ((model.proto,), {}),
        "load": ((str(folder / "m.onnx"),), {}),
        "save": ((model, folder / "out.onnx"), {}),
        "verify": ((model, model), {}),
        "Chain": (([model],), {}),
        "Tolerance": ((), {"atol": 1e-3, "rtol": 1e-3}),
        "compare_arrays": ((x, x), {}),
        "FeedOptions": ((), {"seed": 1, "shapes": {"x": (1, 4)}}),
        "make_feeds": ((model,), {}),
        "RunOptions": ((), {"optimization": "basic"}),
        "run": ((model, {"x": x}), {}),
        "describe": ((model,), {}),
        "tap": ((model, ["h"]), {}),
        "debug": ((model,), {}),
        "DebugOptions": ((), {"taps": ("h",)}),
        "load_recipe": ((str(recipe_file),), {}),
        "run_recipe": (("r", recipe, [model], {}), {}),
        "record_check": ((surgeon.verify(model, model),), {}),
        "record_edit": ((surgeon.rename(model, {"y": "z"}, verify=False),), {}),
        "build_nms": (("yolov8", 3), {}),
        "merge": ((model, model), {"io_map": {"y": "x"}, "prefix2": "b/"}),
        "extract": ((model, ["h"], ["y"]), {}),
        "rename": ((model, {"y": "z"}), {}),
        "reshape_io": ((model, {"x": "N,4"}), {}),
        "check_dynamic": ((model,), {}),
        "declared_vs_actual": ((model, {}), {}),
        "node_origin": ((model, "n0"), {}),
        "match_activations": ((model, []), {}),
        "blame": ((model,), {}),
        "fold": ((model,), {}),
        "convert": ((model, 13), {}),
        "edit_nodes": ((model, [surgeon.BypassNode("n0")]), {}),
        "SetAttribute": (("n0", "alpha", 0.5), {}),
        "RemoveAttribute": (("n0", "alpha"), {}),
        "ReplaceInitializer": (("w", x), {}),
        "BypassNode": (("n0",), {}),
        "DeleteNode": (("n0",), {}),
        "InsertNode": (("h", "Relu"), {"attributes": {}, "extra_inputs": ()}),
        "ChangeOpType": (("n0", "Sigmoid"), {}),
        "rewrite": ((_topk_model(), ["topk"]), {}),
        "plan_fp16": ((model,), {"tolerance": surgeon.Tolerance(atol=1e-2, rtol=1e-2)}),
        "suggest_exclusions": (_quantized_pair(folder), {}),
    }


def _topk_model():
    """A model with a TopK for the rewrite's working call."""
    return surgeon.Model(
        parse(
            """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (v, i) {
    k = Constant <value = int64[1] {2}> ()
    v, i = TopK (x, k)
}"""
        )
    )


def _quantized_pair(folder):
    """(int8 QDQ model, its float model): a healthy MLP through quantize_static."""
    from test_precision_qdq import float_model, quantize

    original = float_model(None)
    return surgeon.Model(quantize(original, folder)), surgeon.Model(original)


def _callables():
    names = []
    for name in surgeon.__all__:
        value = getattr(surgeon, name)
        if name in RESULTS or not callable(value):
            continue
        if isinstance(value, type) and issubclass(value, BaseException):
            continue
        names.append(name)
    return names


def _cases():
    cases = []
    for name in _callables():
        signature = inspect.signature(getattr(surgeon, name))
        for parameter in signature.parameters.values():
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                cases.append((name, parameter.name))
    return cases


def test_every_public_callable_has_a_working_call(model, tmp_path):
    surgeon.save(model, tmp_path / "m.onnx")
    calls = _valid_calls(model, tmp_path)
    assert set(_callables()) <= set(calls), set(_callables()) - set(calls)
    for name in _callables():
        args, kwargs = calls[name]
        getattr(surgeon, name)(*args, **kwargs)  # no error at all


@pytest.mark.parametrize(("name", "parameter"), _cases())
def test_a_wrong_value_in_any_parameter_is_a_surgeon_error_or_works(
    name, parameter, model, tmp_path_factory, monkeypatch
):
    folder = tmp_path_factory.mktemp(name)
    monkeypatch.chdir(folder)  # a random text given as a path is written here, not in the repo
    surgeon.save(model, folder / "m.onnx")
    args, kwargs = _valid_calls(model, folder)[name]
    function = getattr(surgeon, name)
    signature = inspect.signature(function)

    @settings(
        max_examples=int(os.environ.get("SURGEON_API_EXAMPLES", "12")),
        derandomize="SURGEON_API_EXAMPLES" not in os.environ,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(WRONG)
    def check(value):
        bound = signature.bind(*args, **kwargs)
        bound.arguments[parameter] = value
        try:
            function(*bound.args, **bound.kwargs)
        except surgeon.SurgeonError:
            pass
        # TypeError, ValueError, AttributeError, KeyError...: the test fails

    check()


@pytest.mark.parametrize("name", ["tap", "extract", "DebugOptions"])
def test_a_string_is_one_name_never_its_letters(name, model):
    if name == "tap":
        assert surgeon.tap(model, "h").model.output_names == ["y", "h"]
        assert surgeon.tap(model, "all").passed
    elif name == "extract":
        assert surgeon.extract(model, "h", "y").model.output_names == ["y"]
    else:
        assert surgeon.DebugOptions(taps="h").taps == ("h",)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda m: surgeon.tap(m, 3), "`names` must be a sequence of str, not int"),
        (lambda m: surgeon.rename(m, {1: 2}), "`mapping` must be a mapping of str to str"),
        (lambda m: surgeon.rename(m, "a=b"), "not str"),
        (lambda m: surgeon.reshape_io(m, {"x": 5}), "the value of 'x' is int"),
        (lambda m: surgeon.check_dynamic(m, sizes=5), "`sizes` must be a mapping"),
        (lambda m: surgeon.check_dynamic(m, feed_options="x"), "must be a FeedOptions"),
        (lambda m: surgeon.run(m, 3), "`feeds` must be a mapping"),
        (lambda m: surgeon.debug(m, 3), "`options` must be a DebugOptions"),
        (lambda m: surgeon.node_origin(m, 3), "`node_name` must be a str"),
        (lambda m: surgeon.Tolerance(atol="a"), "Tolerance(): `atol` must be a number"),
        (lambda m: surgeon.FeedOptions(seed="a"), "`seed` must be an int, not str"),
        (lambda m: surgeon.FeedOptions(shapes="a"), "`shapes` must be a mapping"),
        (lambda m: surgeon.DebugOptions(tap=("h",)), "did you mean `taps`"),
        (lambda m: surgeon.merge(m, m, map={}), "did you mean `io_map`"),
    ],
)
def test_the_reported_wrong_calls_name_parameter_given_and_expected(call, expected, model):
    with pytest.raises(surgeon.UsageError) as caught:
        call(model)
    assert expected in str(caught.value)
