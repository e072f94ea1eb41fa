"""The CLI edge: help without heavy imports, exit codes, error rendering."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


def test_help_does_not_import_onnxruntime_or_rich():
    code = (
        "import sys\n"
        "from surgeon.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('onnxruntime', 'rich') if m in sys.modules]\n"
        "print('HEAVY', bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "HEAVY []" in out
    assert "inspect" in out and "diff" in out


def test_every_command_help_is_light():
    from surgeon.cli import COMMANDS

    for name in COMMANDS:
        code = (
            "import sys\nfrom surgeon.cli import main\n"
            f"status = main([{name!r}, '--help'])\n"
            "print('HEAVY', [m for m in ('onnxruntime', 'rich') if m in sys.modules], status)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
        assert "HEAVY [] 0" in out, (name, out)


def test_a_command_builds_only_its_own_parser():
    # `surgeon debug ...` imports no other command's module.
    code = (
        "import sys\nfrom surgeon.cli import main\n"
        "main(['debug', '--help'])\n"
        "print('OTHERS', [m for m in sys.modules if m.startswith('surgeon.commands.')"
        " and m.rsplit('.', 1)[1] not in ('debug', '_common')])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "OTHERS []" in out, out


def test_python_dash_m_works():
    res = subprocess.run(
        [sys.executable, "-m", "surgeon", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0 and "surgeon" in res.stdout


def test_no_command_is_usage_error(cli):
    assert cli().status == 2


def test_unknown_option_is_usage_error(cli):
    res = cli("inspect", "--no-such-flag", "x.onnx")
    assert res.status == 2
    assert "unrecognized arguments" in res.stderr  # the given err console, not sys.stderr


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["debgu", "m.onnx"], "did you mean `debug`?"),
        (["debug", "m.onnx", "--tapp", "x"], "`--tapp`: did you mean `--tap`"),
        (["debug", "m.onnx", "--tap=x", "--jsn"], "`--jsn`: did you mean `--json`?"),
        (["inspect", "m.onnx", "--nmaes"], "`--nmaes`: did you mean `--names`"),
    ],
)
def test_a_mistyped_command_or_option_gets_close_matches(cli, argv, hint):
    res = cli(*argv)
    assert res.status == 2 and hint in res.stderr and "Traceback" not in res.stderr
    res = cli(*argv, "--json")
    assert res.status == 2 and hint in res.json["message"]


def test_nothing_close_is_no_hint(cli):
    res = cli("zzzz")
    assert res.status == 2 and "invalid choice" in res.stderr and "did you mean" not in res.stderr


def test_error_is_one_paragraph_without_traceback(cli, tmp_path):
    res = cli("inspect", tmp_path / "missing.onnx")
    assert res.status == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ")
    assert "no such file" in res.stderr


def test_error_as_json(cli, tmp_path):
    res = cli("inspect", tmp_path / "missing.onnx", "--json")
    assert res.status == 2
    assert res.json["schema"] == "surgeon.error/1"
    assert res.json["exit_code"] == 2


def test_builtin_recipes_work_from_a_source_checkout():
    # `python -m surgeon` in the repository imports surgeon/ from the checkout, where the
    # cookbook is the top-level recipes/ folder rather than surgeon/recipes.
    res = subprocess.run(
        [sys.executable, "-m", "surgeon", "recipes", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert '"split_model"' in res.stdout


def test_usage_error_with_json_is_also_a_json_document(cli, capsys):
    import json

    res = cli("diff", "only_one.onnx", "--json")
    assert res.status == 2
    doc = json.loads(res.stdout)
    assert doc["schema"] == "surgeon.error/1" and doc["exit_code"] == 2
    assert "required" in doc["message"]


def test_a_name_mapped_twice_is_an_error(cli, tmp_path):
    from conftest import SAMPLES

    res = cli(
        "rename",
        SAMPLES / "tiny_yolo.onnx",
        "--map",
        "images=a",
        "--map",
        "images=b",
        "-o",
        tmp_path / "o.onnx",
    )
    assert res.status == 2 and "mapped twice" in res.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_json_mode_does_not_import_rich_and_prints_only_json(tmp_path):
    # Scripts parse stdout: one JSON document, nothing else, and no rich import cost.
    import json

    from conftest import SAMPLES

    code = (
        "import sys\nfrom surgeon.cli import main\n"
        f"status = main(['debug', {str(SAMPLES / 'two_conv.onnx')!r}, '--json', '--shape', 'H=8', '--shape', 'W=8'])\n"
        "sys.stderr.write('RICH %s STATUS %s' % ('rich' in sys.modules, status))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "RICH False STATUS 0" in res.stderr, res.stderr
    assert json.loads(res.stdout)["schema"] == "surgeon.debug/1"
    bad = subprocess.run(
        [sys.executable, "-m", "surgeon", "inspect", str(tmp_path / "missing.onnx"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and json.loads(bad.stdout)["exit_code"] == 2
    assert bad.stderr.startswith("error: ")


def test_console_script_output_is_never_lost():
    # Regression: a process-wide stdout redirect in one thread once swallowed the CLI's
    # output at random; run the real entry point several times, piped.
    from conftest import SAMPLES

    for _ in range(4):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "surgeon",
                "diff",
                str(SAMPLES / "tiny_yolo.onnx"),
                str(SAMPLES / "tiny_yolo.onnx"),
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0 and res.stdout.startswith("{"), res.stdout + res.stderr
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "surgeon",
                "diff",
                str(SAMPLES / "tiny_yolo.onnx"),
                str(SAMPLES / "tiny_yolo.onnx"),
            ],
            capture_output=True,
            text=True,
        )
        assert "PASS" in res.stdout, res.stdout + res.stderr
