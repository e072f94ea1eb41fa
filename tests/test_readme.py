"""The README stays true: its recipe file runs, its commands exist, its test command is CI's."""

from __future__ import annotations

import re

from conftest import ROOT, SAMPLES

from surgeon.cli import COMMANDS

README = (ROOT / "README.md").read_text()


def test_readme_recipe_runs(cli, tmp_path):
    block = README.split("A complete recipe file")[1].split("```python")[1].split("```")[0]
    recipe = tmp_path / "my_recipe.py"
    recipe.write_text(block)
    res = cli(
        "run",
        recipe,
        SAMPLES / "tiny_yolo.onnx",
        "--param",
        "node=backbone/conv1",
        "-o",
        tmp_path / "head.onnx",
    )
    assert res.status == 0, res.stderr
    assert "PASS: recipe my_recipe.py: 2 step(s), every verification passed" in res.stdout


def test_readme_tours_every_command():
    for name in COMMANDS:
        assert re.search(rf"`surgeon {re.escape(name)}\b", README), (
            f"README has no tour of `surgeon {name}`"
        )


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "test-command" in ci


def test_readme_names_every_top_level_json_key(cli, tmp_path):
    # Each key these documents write is named in the README (a new user's tour found
    # undocumented ones).
    runs = {
        "inspect": ["inspect", SAMPLES / "tiny_yolo.onnx"],
        "debug": ["debug", SAMPLES / "tiny_yolo.onnx", "--ref", SAMPLES / "tiny_yolo.onnx"],
        "debug --tap": ["debug", SAMPLES / "if_model.onnx"],
        "diff": ["diff", SAMPLES / "two_conv.onnx", SAMPLES / "two_conv.onnx"],
        "fp16": ["fp16", SAMPLES / "two_conv.onnx", "-o", tmp_path / "half.onnx", "--atol", "1"],
        "blame": ["blame", SAMPLES / "two_conv.onnx"],
        "check-dynamic": ["check-dynamic", SAMPLES / "tiny_yolo.onnx"],
        "extract": [
            "extract",
            SAMPLES / "two_conv.onnx",
            "--outputs",
            "conv0_out",
            "-o",
            tmp_path / "e.onnx",
        ],
        "recipes": ["recipes"],
    }
    missing = {}
    for label, argv in runs.items():
        doc = cli(*argv, "--json").json
        missing[label] = [k for k in doc if f"`{k}`" not in README]
    assert not any(missing.values()), missing
