"""issue 13, items 2 and 3: help that leads somewhere (``inspect --names`` and hints that
give the exact command; suggestions only among names the option accepts) and output for
people and logs (piped output is never cut; numbers never lose digits silently; a long
table repeats its verdict)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from conftest import ROOT, parse, write
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from surgeon.cli import main
from surgeon.report import PIPE_WIDTH, SafeTable, make_consoles

LONG = "backbone/stage_three/block_seven/attention/query_projection/MatMul_output_0"

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, 3, H, W] y)
<float[1] conv_weight = {2.0}>
{
    conv_out = Mul(x, conv_weight)
    long = Relu(conv_out)
    y = Identity(long)
}
"""
# The exporter's long symbols (PaddlePaddle's p2o) that made the name columns vanish.
DIMS = {"N": "p2o.DynamicDimension.0", "H": "p2o.DynamicDimension.1", "W": "p2o.DynamicDimension.2"}


def _model(tmp_path):
    proto = parse(MODEL)
    for value in (*proto.graph.input, *proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = DIMS[dim.dim_param]
    for i, node in enumerate(proto.graph.node):
        node.name = ["conv", "act/relu", "head/out"][i]
        node.input[:] = [LONG if x == "long" else x for x in node.input]
        node.output[:] = [LONG if x == "long" else x for x in node.output]
    return write(proto, tmp_path / "m.onnx")


# ---------------------------------------------------------------- item 2: inspect --names
def test_inspect_names_lists_tensors_and_nodes_with_producer_op_dtype_shape(cli, tmp_path):
    path = _model(tmp_path)
    doc = cli("inspect", path, "--names", "--json").json["names"]
    assert doc["pattern"] == "*"
    rows = {t["name"]: t for t in doc["tensors"]}
    # graph inputs and node outputs; weights are not names a command accepts for taps
    assert list(rows) == ["x", "conv_out", LONG, "y"]
    assert rows["x"]["node"] is None and rows["x"]["op"] is None
    assert rows["conv_out"] == {
        "name": "conv_out",
        "node": "conv",
        "op": "Mul",
        "dtype": "float32",
        "shape": ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"],
    }
    assert doc["nodes"][1] == {
        "name": "act/relu",
        "op": "Relu",
        "inputs": ["conv_out"],
        "outputs": [LONG],
    }


def test_inspect_names_glob_filters_case_sensitively(cli, tmp_path):
    path = _model(tmp_path)
    doc = cli("inspect", path, "--names", "conv*", "--json").json["names"]
    assert [t["name"] for t in doc["tensors"]] == ["conv_out"]
    assert [n["name"] for n in doc["nodes"]] == ["conv"]
    result = cli("inspect", path, "--names", "CONV*")
    assert result.status == 0
    assert "no node or tensor name matches 'CONV*'" in result.stdout


def test_inspect_names_table_shows_whole_names(cli, tmp_path):
    result = cli("inspect", _model(tmp_path), "--names", "*")
    assert result.status == 0
    assert "conv_out" in result.stdout and "act/relu" in result.stdout
    # folded, never cut: every character of the long name is on screen
    letters = re.sub(r"[\s│┃|]", "", result.stdout)
    assert LONG in letters


def test_inspect_without_names_has_no_names_key(cli, tmp_path):
    assert "names" not in cli("inspect", _model(tmp_path), "--json").json


# ------------------------------------------------- item 2: hints and suggestion pools
def test_unknown_tap_hint_is_the_exact_command_and_it_works(cli, tmp_path):
    path = _model(tmp_path)
    result = cli("debug", path, "--tap", "zzzz")
    assert result.status == 2
    command = re.search(r"Run `surgeon inspect (\S+) --names`", result.stderr)
    assert command, result.stderr
    assert command.group(1) == str(path)
    listed = cli("inspect", command.group(1), "--names", "--json")
    assert listed.status == 0 and listed.json["names"]["tensors"]


def test_tap_suggestions_never_offer_weights_or_graph_inputs(cli, tmp_path):
    path = _model(tmp_path)
    doc = cli("debug", path, "--tap", "conv_weigh", "--json").json
    assert doc["exit_code"] == 2
    assert "conv_weight" not in doc["suggestions"]
    assert doc["suggestions"] and set(doc["suggestions"]) <= {"conv", "conv_out"}
    # the old code suggested (and silently dropped) weights and inputs
    for name, what in (("conv_weight", "weight"), ("x", "graph input")):
        result = cli("debug", path, "--tap", name)
        assert result.status == 2
        assert f"`{name}` is a" in result.stderr and what in result.stderr
        assert "not a node output" in result.stderr


def test_extract_unknown_name_hint_gives_the_command(cli, tmp_path):
    path = _model(tmp_path)
    result = cli(
        "extract", path, "--inputs", "conv_out", "--outputs", "qqqq", "-o", tmp_path / "o.onnx"
    )
    assert result.status == 2
    assert f"surgeon inspect {path} --names" in result.stderr


def test_unknown_name_without_a_path_names_a_placeholder():
    from surgeon.errors import unknown_name

    err = unknown_name("tensor", "qqqq", ["abc"], "<model>")
    assert "surgeon inspect MODEL.onnx --names" in err.hint


# ------------------------------------------------------------ item 3: width and verdict
def test_piped_console_is_wide():
    console, err_console = make_consoles(file=io.StringIO(), err_file=io.StringIO())
    if not os.environ.get("COLUMNS"):
        assert console.width == PIPE_WIDTH and err_console.width == PIPE_WIDTH


def test_piped_inspect_shows_whole_names_and_shapes(tmp_path):
    path = _model(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "surgeon", "inspect", str(path), "--names"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if LONG in x)  # one line, whole
    assert "act/relu" in line and "[p2o.DynamicDimension.0, 3, p2o.DynamicDimension.1" in line
    plain = subprocess.run(
        [sys.executable, "-m", "surgeon", "inspect", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # the old 80-column pipe squeezed the name column to nothing beside this shape
    assert any(
        "x" in row.split("│")[2] and "p2o.DynamicDimension.2]" in row
        for row in plain.stdout.splitlines()
        if row.count("│") >= 4
    ), plain.stdout


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(min_value=30, max_value=120),
    numbers=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=4),
)
def test_terminal_numbers_are_whole_or_visibly_cut(width, numbers):
    table = SafeTable()
    table.add_column("tensor", kind="name")
    table.add_column("mismatch", kind="number", justify="right")
    table.add_column("flags", kind="name")
    for n in numbers:
        table.add_row(LONG, f"0/{n}", "nan,inf,zeros")
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=True).print(table)
    cells = re.findall(r"0/[0-9…]+", buffer.getvalue())
    assert len(cells) == len(numbers)
    for cell, n in zip(cells, numbers, strict=True):
        assert cell == f"0/{n}" or (cell.endswith("…") and f"0/{n}".startswith(cell[:-1]))
    if width >= 60:  # room enough: whole numbers and a whole flags header
        assert cells == [f"0/{n}" for n in numbers]
        assert "flags" in buffer.getvalue()


def _debug_on_terminal(height: int) -> str:
    out = io.StringIO()
    status = main(
        ["debug", str(ROOT / "sample_models" / "tiny_yolo.onnx"), "--rows", "0"],
        Console(file=out, width=120, height=height, color_system=None, force_terminal=True),
        Console(file=io.StringIO(), width=120, color_system=None),
    )
    assert status in (0, 1)
    return out.getvalue()


def test_long_table_repeats_the_verdict_at_its_end():
    tall = _debug_on_terminal(height=10).splitlines()
    verdict = tall[0]
    assert verdict.strip() and tall.count(verdict) == 2
    assert tall[-1] == verdict
    short = _debug_on_terminal(height=1000).splitlines()
    assert short.count(short[0]) == 1
