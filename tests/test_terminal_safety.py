"""Text from a model or a path is untrusted on the terminal (issue 12).

Names, metadata, doc strings, the producer, the graph name and the paths of a model can
hold ANSI escape sequences (retitle the terminal, clear the screen), newlines (fake a
``PASS:`` line), bidi overrides (reverse what is shown) and rich markup (``[red]``,
``[link=...]``). Every command's terminal rendering shows them escaped and literally;
``--json`` keeps the exact strings; the HTML page escapes them.

The mechanism is checked in two ways: every command runs on a model whose every string
is hostile, and the rendering modules are read (AST) for the patterns that would let a
newcomer bypass :func:`surgeon.report.shown` and :class:`surgeon.report.SafeTable`.
"""

from __future__ import annotations

import ast
import io
import json
import re
import unicodedata
from pathlib import Path

import onnx
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from rich.console import Console
from rich.text import Text

from surgeon.cli import main
from surgeon.errors import printable
from surgeon.report import SafeTable, safe_text, shown

# Everything a model can use against a terminal, in one string.
HOSTILE = (
    "\x1b]0;pwned\x07"  # OSC: set the terminal's title
    "\x1b[2J"  # CSI: clear the screen
    "\nPASS: fake "  # a line of its own that looks like a verdict
    "[red]r[/red] [link=file:///etc/passwd]l[/link] "  # rich markup
    "\u202eevil"  # right-to-left override
    "\x9b31m\x7f\u2028\u2066"  # one-byte CSI, DEL, line separator, bidi isolate
)
# A file name cannot hold "/"; the rest of the hostile text can.
HOSTILE_PATH = HOSTILE.replace("/", "|")

STEERING = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# rich's own codes on a terminal: colours, and the spinner's cursor hiding and line erasing
RICH_CODES = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\r|\x1b\[[0-9]*A|\x1b\[2K")
FAKE_PASS_LINE = re.compile(r"^[\s│┃|]*PASS: fake", re.MULTILINE)


def _hostile_model(
    folder: Path,
    tag: str,
    input_name: str,
    output_name: str,
    *,
    weights=(0.5, -1.0, 2.0, 0.0),
    file_tag: str = "",
    baked_reshape: bool = False,
) -> Path:
    """``output = Add(Relu(input), w)`` where every string in the file is hostile.

    ``baked_reshape``: ``Reshape(Relu(input), [2, 4])`` instead, which fails for a
    batch other than 2 (check-dynamic then quotes onnxruntime's error and the node).
    """
    mid, w = f"t{tag}{HOSTILE}", f"w{tag}{HOSTILE}"
    last = (
        helper.make_node(
            "Reshape", [mid, w], [output_name], name=f"reshape{tag}{HOSTILE}", doc_string=HOSTILE
        )
        if baked_reshape
        else helper.make_node(
            "Add", [mid, w], [output_name], name=f"add{tag}{HOSTILE}", doc_string=HOSTILE
        )
    )
    initializer = (
        helper.make_tensor(w, TensorProto.INT64, [2], [2, 4])
        if baked_reshape
        else helper.make_tensor(w, TensorProto.FLOAT, [4], list(weights))
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Relu", [input_name], [mid], name=f"relu{tag}{HOSTILE}", doc_string=HOSTILE
            ),
            last,
        ],
        f"graph{HOSTILE}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [f"N{HOSTILE}", 4])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [f"N{HOSTILE}", 4])],
        [initializer],
        doc_string=HOSTILE,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name=f"producer{HOSTILE}",
        producer_version=HOSTILE,
        doc_string=HOSTILE,
        ir_version=8,
    )
    helper.set_model_props(model, {f"key{HOSTILE}": f"value{HOSTILE}", "plain": HOSTILE})
    onnx.checker.check_model(model)
    path = folder / f"m{tag}{file_tag}{HOSTILE_PATH}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Two chained hostile models in a hostile folder, and where outputs go."""
    folder = tmp_path_factory.mktemp("hostile") / f"d{HOSTILE_PATH}"
    folder.mkdir()
    x, y, z = f"x{HOSTILE}", f"y{HOSTILE}", f"z{HOSTILE}"
    return {
        "M": _hostile_model(folder, "1", x, y),
        "M2": _hostile_model(folder, "2", y, z),  # merge connects y by name
        # the same names, other weights: diff and debug find a difference and a root cause
        "Mw": _hostile_model(folder, "1", x, y, weights=(9.0, 9.0, 9.0, 9.0), file_tag="w"),
        "Mr": _hostile_model(folder, "1", x, y, file_tag="r", baked_reshape=True),
        "folder": folder,
        "x": x,
        "y": y,
        "t": f"t1{HOSTILE}",
    }


def _out(h, name: str) -> str:
    return str(h["folder"] / f"{name}{HOSTILE_PATH}")


# Every command, on the hostile models; each renders model text on the terminal.
COMMAND_LINES = {
    "inspect": lambda h: ["inspect", h["M"]],
    "diff": lambda h: ["diff", h["M"], h["M"]],
    "debug": lambda h: ["debug", h["M"]],
    "debug-ref": lambda h: ["debug", h["M"], "--ref", h["M"], "--rows", "0"],
    "extract": lambda h: [
        "extract",
        h["M"],
        "--inputs",
        h["t"],
        "--outputs",
        h["y"],
        "-o",
        _out(h, "e") + ".onnx",
    ],
    "rename": lambda h: ["rename", h["M"], "--prefix", HOSTILE, "-o", _out(h, "r") + ".onnx"],
    "reshape-io": lambda h: [
        "reshape-io",
        h["M"],
        "--dims",
        f"{h['x']}:2x4",
        "-o",
        _out(h, "s") + ".onnx",
    ],
    "check-dynamic": lambda h: ["check-dynamic", h["M"]],
    "check-dynamic-fails": lambda h: ["check-dynamic", h["Mr"]],
    "diff-differs": lambda h: ["diff", h["M"], h["Mw"]],
    "debug-root-cause": lambda h: ["debug", h["Mw"], "--ref", h["M"]],
    "nms": lambda h: ["nms", "--layout", "yolov8", "--classes", "2", "-o", _out(h, "n") + ".onnx"],
    "merge": lambda h: ["merge", h["M"], h["M2"], "-o", _out(h, "g") + ".onnx"],
    "run-split": lambda h: [
        "run",
        "split_model",
        h["M"],
        "--param",
        f"at={h['t']}",
        "-o",
        _out(h, "parts") + "/",
    ],
    "run-nan": lambda h: ["run", "find_first_nan", h["M"]],
    # error paths: library wording around hostile names and paths
    "unknown-name": lambda h: ["extract", h["M"], "--inputs", h["x"], "--outputs", h["y"][:-3]],
    "missing-file": lambda h: ["inspect", _out(h, "missing") + ".onnx"],
}
EXIT = {"unknown-name": 2, "missing-file": 2}
EXIT.update(dict.fromkeys(["check-dynamic-fails", "diff-differs", "debug-root-cause"], 1))


def assert_safe(text: str, *, unfolded: bool = True) -> None:
    """No character that steers a terminal, no faked verdict line, rich's colours aside.

    ``unfolded``: the text was rendered wide enough that no cell was folded (a fold may
    start a row of a table cell anywhere, also right after a visible ``\\n``).
    """
    text = RICH_CODES.sub("", text)
    bad = sorted(
        {c for c in text if c != "\n" and unicodedata.category(c) in STEERING},
        key=ord,
    )
    assert not bad, f"raw control characters reached the terminal: {bad!r}"
    if unfolded:
        assert not FAKE_PASS_LINE.search(text), "a model name started a line of its own"


def run_wide(*argv) -> tuple[int, str]:
    """The CLI with colourless consoles wide enough that no name is folded."""
    out, err = io.StringIO(), io.StringIO()
    status = main(
        [str(a) for a in argv],
        Console(file=out, width=2000, color_system=None),
        Console(file=err, width=2000, color_system=None),
    )
    return status, out.getvalue() + err.getvalue()


@pytest.mark.parametrize(
    "command",
    sorted(COMMAND_LINES),
)
def test_every_command_shows_hostile_text_escaped_and_literally(command, hostile):
    status, both = run_wide(*COMMAND_LINES[command](hostile))
    assert status == EXIT.get(command, 0), both
    assert "internal error" not in both
    assert "\x1b" not in both  # colour is off: no ESC at all
    assert_safe(both)
    # markup is shown as typed, not interpreted (and never becomes a link)
    assert "[red]r[" in both
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\nPASS: fake" in both


def test_with_colour_only_rich_own_codes_reach_the_terminal(hostile):
    out, err = io.StringIO(), io.StringIO()
    commands = ("inspect", "debug", "unknown-name")  # debug: a spinner shows the model's name
    for argv in (COMMAND_LINES[c](hostile) for c in commands):
        main(
            [str(a) for a in argv],
            Console(file=out, width=100, force_terminal=True, color_system="truecolor"),
            Console(file=err, width=100, force_terminal=True, color_system="truecolor"),
        )
    text = out.getvalue() + err.getvalue()
    assert "\x1b[1m" in text, "colour was on: rich's own codes are expected"
    assert "\x1b]" not in text  # no OSC: no title, no hyperlink
    assert_safe(text, unfolded=False)


def test_json_keeps_the_exact_strings(hostile):
    result = run_cli("inspect", hostile["M"], "--json")
    doc = result.json
    assert [t["name"] for t in doc["inputs"]] == [hostile["x"]]
    assert doc["metadata"][f"key{HOSTILE}"] == f"value{HOSTILE}"
    assert doc["producer"]["name"] == f"producer{HOSTILE}"
    assert doc["graph_name"] == f"graph{HOSTILE}"
    # json escapes the control characters itself: the document is safe to print as is
    assert_safe(result.stdout)


def test_json_error_keeps_the_exact_strings(hostile):
    result = run_cli(*COMMAND_LINES["unknown-name"](hostile), "--json")
    assert result.status == 2
    assert f"`{hostile['y'][:-3]}`" in result.json["message"]
    assert_safe(result.stdout + result.stderr)


def test_html_page_escapes_model_text(hostile, tmp_path):
    page = tmp_path / "report.html"
    result = run_cli("debug", hostile["M"], "--ref", hostile["M"], "--html", page)
    assert result.status == 0, result.stdout + result.stderr
    text = page.read_text()
    assert "[red]r[/red]" in text and "\\u202eevil" in text
    assert "\x1b" not in text and "\u202e" not in text  # a bidi override reorders a page too


def test_html_escapes_tags_in_names(tmp_path):
    from conftest import parse, write

    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (y) { y = Relu(x) }""")
    tag = "<script>alert(1)</script>&"
    for node in m.graph.node:
        node.output[0] = tag
    m.graph.output[0].name = tag
    model = write(m, tmp_path / "m.onnx")
    page = tmp_path / "p.html"
    assert run_cli("debug", model, "--html", page).status == 0
    text = page.read_text()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in text


@pytest.mark.parametrize("command", ["extract", "rename", "reshape-io", "nms", "merge"])
def test_output_path_markup_is_printed_as_given(command, hostile, tmp_path):
    """``-o 'x[red]y.onnx'`` printed "wrote xy.onnx" (the issue's example)."""
    argv = [str(a) for a in COMMAND_LINES[command](hostile)]
    target = str(tmp_path / "x[red]y[bold].onnx")
    argv[argv.index("-o") + 1] = target
    result = run_cli(*argv)
    assert result.status == 0, result.stdout + result.stderr
    assert f"wrote {target}" in result.stdout


# The "wrote" lines of debug and run are printed by the command modules themselves.
@pytest.mark.parametrize("command", ["debug", "run-split"])
def test_written_files_are_printed_as_given_by_debug_and_run(command, hostile, tmp_path):
    argv = [str(a) for a in COMMAND_LINES[command](hostile)]
    target = tmp_path / "x[red]y[bold]"
    if command == "debug":
        argv += ["-o", f"{target}.onnx"]
    else:
        argv[argv.index("-o") + 1] = f"{target}/"
    result = run_cli(*argv)
    assert result.status == 0, result.stdout + result.stderr
    assert f"wrote {target}" in result.stdout


def test_plain_json_error_path_escapes_too(hostile, capsys):
    """``--json`` without consoles (a script) writes the error paragraph without rich."""
    status = main([str(a) for a in COMMAND_LINES["unknown-name"](hostile)] + ["--json"])
    captured = capsys.readouterr()
    assert status == 2
    assert f"`{hostile['y'][:-3]}`" in json.loads(captured.out)["message"]
    assert_safe(captured.err)


# --- the mechanism itself ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\x1b]0;t\x07", "\\x1b]0;t\\x07"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("\u202a\u202e\u2066\u2069\u200b\ufeff", "\\u202a\\u202e\\u2066\\u2069\\u200b\\ufeff"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\udc80", "\\udc80"),  # a non-UTF-8 file name under surrogateescape
        ("\U000e0001", "\\U000e0001"),  # a tag character
        ("/model.0/conv/Conv_output_0", "/model.0/conv/Conv_output_0"),
        ("名前 ñ Ω [red] 🙂 C:\\x", "名前 ñ Ω [red] 🙂 C:\\x"),  # any script, markup, backslash
    ],
)
def test_printable(raw, expected):
    assert printable(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_printable_leaves_no_steering_character_and_keeps_the_rest(text):
    out = printable(text)
    assert not any(unicodedata.category(c) in STEERING for c in out)
    # character by character: a steering one becomes a visible ASCII escape, others stay
    assert out == "".join(printable(c) for c in text)
    for c in set(text):
        if unicodedata.category(c) in STEERING:
            assert printable(c).startswith("\\") and printable(c).isprintable()
            assert printable(c).isascii()
        else:
            assert printable(c) == c


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_shown_never_interprets_markup_nor_passes_control_characters(before, after):
    text = f"{before}[bold]{after}[/bold][link=file:///x]y[/link]"
    out = io.StringIO()
    Console(file=out, width=60, color_system=None, soft_wrap=True).print(shown(text), end="")
    rendered = out.getvalue()
    assert "[bold]" in rendered and "[link=file:///x]" in rendered
    assert all(c == "\n" or unicodedata.category(c) not in STEERING for c in rendered)
    assert rendered.count("\n") == 0  # one line stays one line


def test_safe_text_keeps_styles_and_escapes():
    text = Text("a\x1bb", style="bold")
    text.append("c\nd", style="red")
    safe = safe_text(text)
    assert safe.plain == "a\\x1bbc\\nd"
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="standard", width=80).print(safe)
    assert "\x1b[1;31m\\n" in out.getvalue()  # the escape keeps the style of what it replaced
    assert safe_text(Text("plain")).plain == "plain"


def test_safe_table_cells_and_title():
    table = SafeTable(title="t[red]x\x1b")
    table.add_column("h[bold]\n")
    table.add_row(Text("a\x1b[2J"))
    table.add_row("[red]b\nPASS: fake")
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(table)
    text = out.getvalue()
    assert "t[red]x\\x1b" in text and "h[bold]\\n" in text and "[red]b\\nPASS: fake" in text
    assert_safe(text)


# --- the rules a newcomer cannot forget --------------------------------------------

REPORT = Path(__file__).resolve().parent.parent / "surgeon" / "report"
TERMINAL_MODULES = sorted(p for p in REPORT.glob("*.py") if p.name != "html.py")


def _call_name(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_text_expression(node: ast.AST) -> bool:
    """A string the rendering would hand rich as markup: a literal, f-string or sum."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text_expression(node.left) or _is_text_expression(node.right)
    return False


@pytest.mark.parametrize("path", TERMINAL_MODULES, ids=lambda p: p.name)
def test_rendering_modules_go_through_shown_and_safe_table(path):
    """Strings reach rich only through shown() / SafeTable, never as markup."""
    tree = ast.parse(path.read_text())
    problems = []
    # the two functions that make text safe are where Text(...) of model text belongs
    exempt = {
        id(inner)
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef) and func.name in ("shown", "safe_text")
        for inner in ast.walk(func)
    }
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module == "rich.markup":
            problems.append(f"{where}: rich.markup.escape leaves control characters: use shown()")
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name == "Table":
            problems.append(f"{where}: Table(...): use SafeTable")
        if name == "print" and any(_is_text_expression(a) for a in node.args):
            problems.append(f"{where}: print of a str (read as markup): print(shown(...))")
        if name == "Text" and any(not isinstance(a, ast.Constant) for a in node.args):
            problems.append(f"{where}: Text(...) of a non-literal: use shown(...)")
        if name == "append" and node.args and _is_text_expression(node.args[0]):
            problems.append(f"{where}: Text.append of a str: append_text(shown(...))")
    assert not problems, "\n".join(problems)


def test_error_boundary_escapes_message_problems_hint_and_internal_errors():
    from types import SimpleNamespace

    from surgeon.errors import SurgeonError
    from surgeon.report import render_error, render_internal_error

    err = io.StringIO()
    ctx = SimpleNamespace(err_console=Console(file=err, width=2000, color_system=None), json=False)
    render_error(ctx, SurgeonError(f"bad `{HOSTILE}`", problems=[HOSTILE], hint=HOSTILE))
    render_internal_error(ctx, ValueError(f"node {HOSTILE} broke"))
    text = err.getvalue()
    assert_safe(text)
    assert text.count("[red]r[/red]") == 4
    # library wording keeps its own lines: message, one problem, hint, internal error
    assert len(text.splitlines()) == 4


COMMANDS_DIR = REPORT.parent / "commands"


@pytest.mark.parametrize(
    "path",
    sorted(COMMANDS_DIR.glob("*.py")),
    ids=lambda p: p.name,
)
def test_commands_print_composed_text_through_shown(path):
    """A command that prints itself composes text with model names or paths: shown()."""
    problems = [
        f"{path.name}:{node.lineno}: print of a composed str (read as markup): print(shown(...))"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and _call_name(node) == "print"
        and any(_is_text_expression(a) and not isinstance(a, ast.Constant) for a in node.args)
    ]
    assert not problems, "\n".join(problems)


def test_export_check_and_recipe_list_render_hostile_text_escaped():
    """The two renderings the command walk above does not reach (PyTorch, recipe files)."""
    from types import SimpleNamespace

    from surgeon.report.run import render_recipes
    from surgeon.report.torch_export import render_export_check

    run = SimpleNamespace(label=HOSTILE, shapes={HOSTILE: (1, 3)}, skipped=False, error=HOSTILE)
    pitfall = SimpleNamespace(severity="warning", kind=HOSTILE, message=HOSTILE, origin=HOSTILE)
    check = SimpleNamespace(
        summary=lambda: f"PASS: {HOSTILE}",
        passed=True,
        exporter=HOSTILE,
        runs=[run],
        pitfalls=[pitfall],
        notes=[HOSTILE],
        export_seconds=0.1,
        check_seconds=0.2,
        path=HOSTILE_PATH,
    )
    out = io.StringIO()
    console = Console(file=out, width=2000, color_system=None)
    render_export_check(console, check)
    render_recipes(
        console, [{"name": HOSTILE, "summary": HOSTILE, "params": {HOSTILE: {"required": True}}}]
    )
    text = out.getvalue()
    assert_safe(text)
    assert text.count("[red]r[/red]") >= 8
