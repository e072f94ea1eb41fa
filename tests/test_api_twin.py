"""The API's twins of the CLI (issue 13, item 4): ``surgeon.blame`` is a function that
takes a model or a path like the others."""

from __future__ import annotations

import importlib

import pytest
from conftest import parse

import surgeon

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4] x) => (y) {
    h = Relu (x)
    y = Neg (h)
}"""


@pytest.fixture(scope="module")
def model():
    return surgeon.Model(parse(TEXT))


def test_blame_is_the_function_even_after_its_module_is_imported(model, tmp_path):
    importlib.import_module("surgeon.optimizer_blame")
    assert callable(surgeon.blame) and not isinstance(surgeon.blame, type(surgeon))
    path = surgeon.save(model, tmp_path / "m.onnx")
    report = surgeon.blame(str(path), "basic")
    assert report.level == "basic" and report.passed
    assert surgeon.blame(model).level == "all"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda m: surgeon.blame(3), "`model` must be"),
        (lambda m: surgeon.blame(m, 3), "`level` must be a str or None, not int"),
        (lambda m: surgeon.blame(m, "disabled"), "it is the reference level"),
        (lambda m: surgeon.blame(m, "fast"), "unknown optimisation level `fast`"),
        (
            lambda m: surgeon.blame(m, "basic", options=surgeon.RunOptions(optimization="all")),
            "two levels to examine",
        ),
    ],
)
def test_blame_wrong_calls_are_surgeon_errors(call, expected, model):
    with pytest.raises(surgeon.SurgeonError, match=expected):
        call(model)


def test_check_dynamic_takes_the_seed_once(model):
    """feed_options is the one place for the seed and the feed bound."""
    with pytest.raises(surgeon.UsageError, match="unknown keyword argument `seed`"):
        surgeon.check_dynamic(model, seed=3)
    with pytest.raises(surgeon.UsageError, match="`max_feed_bytes`"):
        surgeon.check_dynamic(model, max_feed_bytes=10)
    assert surgeon.check_dynamic(model, feed_options=surgeon.FeedOptions(seed=3)).seed == 3


def test_graph_facts_see_a_tensor_renamed_in_place():
    """Renaming a tensor in model.proto by hand must not leave stale producers behind."""
    proto = parse(TEXT)
    model = surgeon.Model(proto)
    assert surgeon.extract(model, ["h"], ["y"]).passed  # facts computed and cached
    proto.graph.node[0].output[0] = "hidden"
    proto.graph.node[1].input[0] = "hidden"
    cut = surgeon.extract(model, ["hidden"], ["y"])
    assert cut.passed and cut.model.input_names == ["hidden"]
    with pytest.raises(surgeon.NameNotFoundError, match="`h`"):
        surgeon.extract(model, ["h"], ["y"])
