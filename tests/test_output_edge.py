"""The CLI's output edge: argparse writes to the given consoles, every command ends in one
render dispatch and returns an ExitStatus, every --json document is valid JSON, and
JSON and error documents are written in one place (surgeon.jsonout)."""

from __future__ import annotations

import ast
import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, parse, run_cli, write
from rich.console import Console

from surgeon.cli import COMMANDS, main
from surgeon.errors import ExitStatus, NameNotFoundError, SurgeonError, UsageError
from surgeon.jsonout import dumps, error_document, write_json

SURGEON = ROOT / "surgeon"

FIRST = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] x) => (float[N, 4] y) {
    h = Relu(x)
    y = Add(h, x)
}
"""
SECOND = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 4] y) => (float[N, 4] z) {
    z = Neg(y)
}
"""


def _named(text: str) -> onnx.ModelProto:
    model = parse(text)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    return model


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    return {
        "first": write(_named(FIRST), tmp_path / "first.onnx"),
        "second": write(_named(SECOND), tmp_path / "second.onnx"),
        "tmp": tmp_path,
    }


# One command line per command; the whole table is run in both output modes.
# (Option names follow the shared vocabulary; update them here when it changes.)
COMMAND_LINES = {
    "debug": lambda m: ["debug", m["first"]],
    "inspect": lambda m: ["inspect", m["first"]],
    "diff": lambda m: ["diff", m["first"], m["first"]],
    "extract": lambda m: ["extract", m["first"], "--inputs", "x", "--outputs", "h"],
    "rename": lambda m: ["rename", m["first"], "--prefix", "p_"],
    "reshape-io": lambda m: ["reshape-io", m["first"], "--dims", "x:Bx4"],
    "check-dynamic": lambda m: ["check-dynamic", m["first"]],
    "nms": lambda m: ["nms", "--layout", "yolov8", "--classes", "2", "-o", m["tmp"] / "n.onnx"],
    "merge": lambda m: ["merge", m["first"], m["second"]],
    "run": lambda m: [
        "run",
        "rename_for_deployment",
        m["first"],
        "prefix=p_",
        "-o",
        m["tmp"] / "r.onnx",
    ],
    "recipes": lambda m: ["recipes"],
    "blame": lambda m: ["blame", m["first"]],
    "fp16": lambda m: ["fp16", m["first"]],
    "fold": lambda m: ["fold", m["first"]],
    "convert": lambda m: ["convert", m["first"], "--opset", "13"],
    "edit": lambda m: ["edit", m["first"], "--bypass", "n0"],
    "rewrite": lambda m: ["rewrite", "--list"],
}


def test_every_command_has_a_command_line_here():
    assert set(COMMAND_LINES) == set(COMMANDS)


@pytest.fixture
def spy(monkeypatch):
    """Records what each command module's run() returned (main's own view of it)."""
    import importlib

    returned = []
    for module_name in COMMANDS.values():
        module = importlib.import_module(module_name)
        original = module.run

        def recording(args, ctx, _original=original):
            value = _original(args, ctx)
            returned.append(value)
            return value

        monkeypatch.setattr(module, "run", recording)
    return returned


def _refuse(token: str):
    raise AssertionError(f"{token} is not JSON")


def _no_nan_tokens(text: str) -> bool:
    """The text parses as strict JSON: no NaN, Infinity or -Infinity token anywhere."""
    json.loads(text, parse_constant=_refuse)
    return True


@pytest.mark.parametrize("command", sorted(COMMAND_LINES))
def test_every_command_returns_an_exit_status_and_a_valid_json_document(command, models, spy):
    argv = COMMAND_LINES[command](models)
    res = run_cli(*argv, "--json")
    assert res.status == ExitStatus.SUCCESS, res.stdout + res.stderr
    assert len(spy) == 1 and type(spy[0]) is ExitStatus
    assert _no_nan_tokens(res.stdout)
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict) and str(doc["schema"]).startswith("surgeon.")
    assert doc["schema"] != "surgeon.error/1"
    if "passed" in doc:
        assert doc["passed"] is True

    spy.clear()  # the same command for a person: the same status, through the renderer
    if command == "nms":
        (models["tmp"] / "n.onnx").unlink()
    if command == "run":
        (models["tmp"] / "r.onnx").unlink()
    shown = run_cli(*argv)
    assert shown.status == res.status, shown.stdout + shown.stderr
    assert len(spy) == 1 and type(spy[0]) is ExitStatus
    assert shown.stdout.strip() and not shown.stdout.lstrip().startswith("{")


def test_a_failed_verification_is_exit_status_1_in_both_modes(tmp_path, spy):
    a = write(parse(FIRST), tmp_path / "a.onnx")
    b = write(parse(FIRST.replace("Add(h, x)", "Sub(h, x)")), tmp_path / "b.onnx")
    for extra in ((), ("--json",)):
        spy.clear()
        res = run_cli("diff", a, b, *extra)
        assert res.status == ExitStatus.VERIFICATION_FAILED
        assert spy == [ExitStatus.VERIFICATION_FAILED] and type(spy[0]) is ExitStatus


def test_a_command_that_returns_a_bare_int_is_a_bug(monkeypatch, models):
    import surgeon.commands.inspect as inspect_command

    monkeypatch.setattr(inspect_command, "run", lambda args, ctx: 0)
    res = run_cli("inspect", models["first"])
    assert res.status == ExitStatus.INTERNAL_ERROR
    assert "not an ExitStatus" in res.stderr


# --- argparse writes through the consoles main was given ---------------------------


def _consoles():
    out, err = io.StringIO(), io.StringIO()
    return out, err, Console(file=out, width=100), Console(file=err, width=100)


@pytest.mark.parametrize(
    "argv, status, where, text",
    [
        (["--help"], 0, "out", "usage: surgeon"),
        (["diff", "--help"], 0, "out", "usage: surgeon diff"),
        (["--version"], 0, "out", "surgeon "),
        ([], 2, "out", "usage: surgeon"),  # no command: the help, and exit 2
        (["--no-such-flag"], 2, "err", "unrecognized arguments: --no-such-flag"),
        (["inspect"], 2, "err", "the following arguments are required"),
        (["no-such-command"], 2, "err", "invalid choice"),
    ],
)
def test_argparse_writes_to_the_given_consoles(argv, status, where, text, capsys):
    out, err, console, err_console = _consoles()
    assert main(argv, console, err_console) == status
    written = {"out": out.getvalue(), "err": err.getvalue()}
    assert text in written[where]
    other = written["err" if where == "out" else "out"]
    assert other == ""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing went around the consoles


def test_a_usage_error_shows_the_command_usage_on_the_err_console():
    out, err, console, err_console = _consoles()
    assert main(["diff", "only_one.onnx"], console, err_console) == ExitStatus.BAD_INPUT
    assert err.getvalue().startswith("usage: surgeon diff")
    assert out.getvalue() == ""


def test_a_usage_error_with_json_is_an_error_document_on_the_out_console(capsys):
    out, err, console, err_console = _consoles()
    assert main(["diff", "only_one.onnx", "--json"], console, err_console) == 2
    doc = json.loads(out.getvalue())
    assert doc == error_document_of_usage(doc["message"])
    assert "the following arguments are required" in err.getvalue()
    assert capsys.readouterr().out == ""


def error_document_of_usage(message: str) -> dict:
    return {
        "schema": "surgeon.error/1",
        "error": "UsageError",
        "message": message,
        "problems": [],
        "hint": "Run `surgeon COMMAND --help` for the options.",
        "suggestions": [],
        "exit_code": 2,
    }


def test_a_usage_error_escapes_control_characters():
    out, err, console, err_console = _consoles()
    assert main(["inspect", "m.onnx", "--x\x1b[2J"], console, err_console) == 2
    assert "\x1b" not in err.getvalue() and "\\x1b[2J" in err.getvalue()


def test_main_without_consoles_uses_the_process_streams(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("surgeon ")


# --- JSON writing --------------------------------------------------------------------


def _written(data) -> str:
    buffer = io.StringIO()
    write_json(buffer, data)
    return buffer.getvalue()


def test_json_numbers_numpy_and_non_finite_values():
    text = _written(
        {
            "nan": math.nan,
            "inf": math.inf,
            "ninf": -math.inf,
            "f32": np.float32(0.5),
            "i64": np.int64(7),
            "bool": np.bool_(True),
            "array": np.arange(3, dtype=np.int32),
            "nan_array": np.array([1.0, np.nan, np.inf]),
            "status": ExitStatus.VERIFICATION_FAILED,
            "path": Path("a/b.onnx"),
            "tuple": (1, 2),
            "set": {"b", "a"},
            "nested": [{"x": np.float64("nan")}],
        }
    )
    assert text.endswith("\n") and _no_nan_tokens(text)
    assert json.loads(text) == {
        "nan": None,
        "inf": "inf",
        "ninf": "-inf",
        "f32": 0.5,
        "i64": 7,
        "bool": True,
        "array": [0, 1, 2],
        "nan_array": [1.0, None, "inf"],
        "status": 1,
        "path": str(Path("a/b.onnx")),
        "tuple": [1, 2],
        "set": ["a", "b"],
        "nested": [{"x": None}],
    }


def test_json_objects_with_to_dict_are_written_as_their_dict():
    class Result:
        def to_dict(self):
            return {"schema": "surgeon.test/1", "value": np.float32(2.0)}

    assert json.loads(_written({"result": Result()})) == {
        "result": {"schema": "surgeon.test/1", "value": 2.0}
    }


def test_json_keeps_names_that_are_not_utf8_exact_and_writes_ascii():
    surrogate = b"bad\xff.onnx".decode("utf-8", "surrogateescape")
    names = {"lone": surrogate, "script": "模型/輸出", "bytes": b"raw\xfe", "ctl": "a\x1bb"}
    text = _written(names)
    text.encode("ascii")  # whatever the stream's encoding, the document can be written
    back = json.loads(text)
    assert back["lone"] == surrogate and back["script"] == "模型/輸出"
    assert back["ctl"] == "a\x1bb"  # exact: escaping is the terminal's business
    assert back["bytes"].encode("utf-8", "surrogateescape") == b"raw\xfe"


def test_json_keys_become_strings():
    assert json.loads(dumps({1: "a", (2, 3): "b", np.int64(4): "c"})) == {
        "1": "a",
        "[2, 3]": "b",
        "4": "c",
    }


def test_the_error_document_has_every_key():
    error = NameNotFoundError(
        "no tensor `a`", name="a", suggestions=["b"], problems=["p"], hint="h"
    )
    assert error_document(error) == {
        "schema": "surgeon.error/1",
        "error": "NameNotFoundError",
        "message": "no tensor `a`",
        "problems": ["p"],
        "hint": "h",
        "suggestions": ["b"],
        "exit_code": 2,
    }
    assert error_document(UsageError("x"))["suggestions"] == []


def test_an_internal_error_is_a_json_document_too(monkeypatch, models):
    import surgeon.commands.inspect as inspect_command

    def broken(args, ctx):
        raise KeyError("bug")

    monkeypatch.setattr(inspect_command, "run", broken)
    for consoles in (True, False):
        if consoles:
            res = run_cli("inspect", models["first"], "--json")
            status, out = res.status, res.stdout
        else:
            buffer = io.StringIO()
            monkeypatch.setattr("sys.stdout", buffer)
            monkeypatch.setattr("sys.stderr", io.StringIO())
            status, out = main(["inspect", str(models["first"]), "--json"]), buffer.getvalue()
        assert status == ExitStatus.INTERNAL_ERROR
        doc = json.loads(out)
        assert doc["error"] == "InternalError" and doc["exit_code"] == 3
        assert doc["message"] == "KeyError: 'bug'"


# --- one place for JSON --------------------------------------------------------------


def _modules():
    for path in sorted(SURGEON.rglob("*.py")):
        if "recipes" in path.relative_to(SURGEON).parts:
            continue  # the cookbook symlink: recipes are users' code
        yield path


# Provenance records are data stored inside a model, not output.
JSON_DUMPS_ALLOWED = {"jsonout.py", "model.py", "edits/merge.py"}


def test_only_jsonout_serialises_json():
    offenders = []
    for path in _modules():
        rel = path.relative_to(SURGEON).as_posix()
        if rel in JSON_DUMPS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("dumps", "dump")
                and isinstance(node.value, ast.Name)
                and node.value.id == "json"
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_the_error_document_is_built_in_one_place():
    offenders = [
        path.relative_to(SURGEON).as_posix()
        for path in _modules()
        if "surgeon.error/1" in path.read_text(encoding="utf-8") and path.name != "jsonout.py"
    ]
    assert offenders == []


def test_the_render_table_resolves():
    import importlib

    from surgeon.report.dispatch import RENDERERS, render

    for class_name, target in RENDERERS.items():
        module_name, _, name = class_name.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        assert isinstance(cls, type), class_name
        # the key is the class's own full name (what renderer_for looks up), not a re-export
        assert f"{cls.__module__}.{cls.__qualname__}" == class_name, class_name
        module_name, function = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function)), target
    with pytest.raises(TypeError, match="no renderer"):
        render(Console(file=io.StringIO()), object())


def test_surgeon_errors_carry_exit_statuses():
    from surgeon.errors import VerificationFailed

    assert type(SurgeonError.exit_code) is ExitStatus
    assert VerificationFailed.exit_code is ExitStatus.VERIFICATION_FAILED
