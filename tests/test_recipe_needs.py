"""Recipes declare what they take (MODELS) and write (OUTPUTS); the runner checks both
before any work, and `surgeon recipes` shows them (issue 13, item 5)."""

from __future__ import annotations

import textwrap

import pytest
from conftest import SAMPLES

import surgeon


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or starting onnxruntime (the work) fails the test."""
    import surgeon.commands.run
    import surgeon.runner

    def refuse(*a, **k):
        raise AssertionError("work started before the check")

    monkeypatch.setattr(surgeon.runner.Session, "__init__", refuse)
    monkeypatch.setattr("surgeon.loading.load", refuse)


def _text(res) -> str:
    return " ".join(res.stderr.split())


@pytest.mark.parametrize("count", [0, 2])
def test_torch_export_check_says_what_it_takes(cli, tmp_path, no_work, count):
    """Old code exported a built-in demo module whatever model it was given; now it takes
    exactly the ONNX model exported from the module named with module=."""
    models = [SAMPLES / "two_conv.onnx"] * count
    res = cli("run", "torch_export_check", *models, "-o", tmp_path / "out.onnx")
    assert res.status == 2
    text = _text(res)
    assert f"recipe torch_export_check takes 1 model, got {'none' if count == 0 else 2}" in text
    assert "--param module=path.py:Class" in text
    assert not (tmp_path / "out.onnx").exists()


def test_torch_export_check_requires_the_module(cli, tmp_path, no_work):
    res = cli("run", "torch_export_check", SAMPLES / "two_conv.onnx", "-o", tmp_path / "o.onnx")
    assert res.status == 2 and "parameter `module` is required" in _text(res)


def test_model_count_is_checked_before_the_model_is_read(cli, tmp_path):
    """A model that does not exist is not even opened: the count is wrong first."""
    missing = tmp_path / "missing.onnx"
    res = cli("run", "split_model", missing, missing, "at=t", "-o", tmp_path / "parts")
    assert res.status == 2 and "recipe split_model takes 1 model, got 2" in _text(res)
    res = cli("run", "split_model", "at=t", "-o", tmp_path / "parts")
    assert res.status == 2 and "takes 1 model, got none" in _text(res)
    res = cli("run", "compare_layers", missing, missing, missing)
    assert res.status == 2
    assert "takes 1 or 2 models (model, reference?), got 3" in _text(res)


def test_split_model_to_one_file_is_refused_before_the_work(cli, tmp_path, no_work):
    res = cli("run", "split_model", SAMPLES / "tiny_yolo.onnx", "at=t", "-o", tmp_path / "x.onnx")
    assert res.status == 2
    text = _text(res)
    assert "writes 2 models (before, after)" in text
    assert "parts/before.onnx and parts/after.onnx" in text


def test_split_model_without_output_names_its_files(cli, no_work):
    res = cli("run", "split_model", SAMPLES / "tiny_yolo.onnx", "at=t")
    assert res.status == 2
    assert "-o FOLDER/ (it gets FOLDER/before.onnx and FOLDER/after.onnx)" in _text(res)


def test_declared_outputs_are_planned_before_the_work(cli, samples, monkeypatch):
    """-o FOLDER/ whose FOLDER/after.onnx is the input model: refused before the recipe
    runs (old code found it only after the work, when writing)."""
    import surgeon.recipe_runner

    parts = samples / "parts"
    parts.mkdir()
    model = parts / "after.onnx"
    model.write_bytes((samples / "tiny_yolo.onnx").read_bytes())
    before = model.read_bytes()

    def refuse(*a, **k):
        raise AssertionError("the recipe ran before the outputs were checked")

    monkeypatch.setattr(surgeon.recipe_runner, "run_recipe", refuse)
    res = cli("run", "split_model", model, "--param", "at=backbone/act2_out", "-o", parts)
    assert res.status == 2
    assert "refusing to overwrite an input model" in _text(res)
    assert "after.onnx" in _text(res)
    assert model.read_bytes() == before and sorted(p.name for p in parts.iterdir()) == [
        "after.onnx"
    ]


NO_MODEL = '''
"""Takes no model: it only reports."""
MODELS = 0
OUTPUTS = ()

class Found:
    passed = True
    def __bool__(self):
        return True
    def to_dict(self):
        return {"found": 0}
    def summary(self):
        return "nothing found"

def recipe(models):
    assert models == []
    return Found()
'''


def test_a_recipe_that_takes_no_model(cli, tmp_path):
    recipe = _write(tmp_path, "r.py", NO_MODEL)
    res = cli("run", recipe, "--json")
    assert res.status == 0, res.stderr
    res = cli("run", recipe, SAMPLES / "two_conv.onnx")
    assert res.status == 2 and "takes no model, got 1" in _text(res)


WRONG_OUTPUTS = '''
"""Declares one output and returns another."""
import surgeon

OUTPUTS = ("tapped",)

def recipe(models):
    return {"other": surgeon.tap(models[0], ["conv0"])}
'''


def test_a_recipe_must_return_what_it_declares(cli, tmp_path):
    recipe = _write(tmp_path, "r.py", WRONG_OUTPUTS)
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", tmp_path / "out")
    assert res.status == 2
    assert "declares OUTPUTS tapped but returned other" in _text(res)
    assert not (tmp_path / "out").exists()


def test_a_single_declared_output_names_the_result(cli, tmp_path):
    res = cli("run", "cut_backbone", SAMPLES / "tiny_yolo.onnx", "-o", tmp_path / "bb", "--json")
    assert res.status == 0, res.stderr
    assert res.json["outputs"] == ["backbone"] and (tmp_path / "bb" / "backbone.onnx").is_file()


@pytest.mark.parametrize(
    "line, needle",
    [
        ('MODELS = "two"', "MODELS must be a count or a tuple of names"),
        ('MODELS = ("ref?", "model")', "required model after an optional one"),
        ('OUTPUTS = ("a/b",)', "OUTPUTS must be a tuple of distinct plain file names"),
        ('OUTPUTS = ("a", "a")', "OUTPUTS must be a tuple of distinct plain file names"),
    ],
)
def test_bad_declarations_are_reported(cli, tmp_path, line, needle):
    recipe = _write(tmp_path, "r.py", f'"""Bad."""\n{line}\n\ndef recipe(models):\n    pass\n')
    res = cli("run", recipe, SAMPLES / "two_conv.onnx", "-o", tmp_path / "o.onnx")
    assert res.status == 2 and needle in _text(res)


def test_recipes_lists_what_each_takes_and_writes(cli):
    res = cli("recipes", "--json")
    assert res.status == 0, res.stderr
    rows = {r["name"]: r for r in res.json["recipes"]}
    assert rows["split_model"]["outputs"] == ["before", "after"]
    assert rows["split_model"]["models"] == [{"name": "model", "required": True}]
    assert rows["compare_layers"]["models"][1] == {"name": "reference", "required": False}
    assert rows["find_first_nan"]["outputs"] == []
    torch_row = rows["torch_export_check"]
    assert torch_row["takes"] == "1 model" and torch_row["params"]["module"]["required"]
    assert "module=path.py:Class" in torch_row["models_help"]
    assert all(r["outputs"] is not None and r["models"] is not None for r in rows.values())
    text = cli("recipes").stdout
    assert "before.onnx," in text and "after.onnx" in text and "a report (no -o)" in text
    assert "(model," in text and "reference?)" in text


# ------------------------------------------------------------------ torch_export_check
def test_torch_export_check_module_errors(cli, tmp_path):
    pytest.importorskip("torch")
    model = SAMPLES / "two_conv.onnx"
    out = tmp_path / "o.onnx"
    cases = [
        ("module=two_conv.py", "is not path.py:name"),
        (f"module={tmp_path / 'nope.py'}:Net", "does not exist"),
        (f"module={SAMPLES / 'two_conv.py'}:TwoConf", "did you mean `TwoConv`"),
    ]
    for param, needle in cases:
        res = cli("run", "torch_export_check", model, param, "-o", out)
        assert res.status == 2, (param, res.stderr)
        assert needle in _text(res), param
    assert not out.exists()


OTHER_NET = '''
"""Same layers, other attribute names: the model's weights cannot be loaded into it."""
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3, padding=1)
    )
'''


def test_torch_export_check_fails_when_the_module_is_not_the_model(cli, tmp_path):
    """The export must reproduce the given model: a module with other weights is exit 1,
    saying why, and nothing is written."""
    pytest.importorskip("torch")
    net = _write(tmp_path, "net.py", OTHER_NET)
    out = tmp_path / "o.onnx"
    res = cli(
        "run",
        "torch_export_check",
        SAMPLES / "two_conv.onnx",
        f"module={net}:build",
        "exporter=torchscript",
        "sizes=17",
        "-o",
        out,
    )
    assert res.status == 1, res.stderr
    text = _text(res) + " ".join(res.stdout.split())
    assert "does not reproduce two_conv.onnx" in text
    assert "with its own weights" in text
    assert not out.exists()
    assert surgeon  # the package imports without torch at module level
