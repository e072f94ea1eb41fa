"""One option vocabulary: every command's parser spells, defaults and explains the shared
options the same way, `--help` shows the defaults the parser really holds, old spellings
fail with the new name, and check-dynamic / reshape-io really use --feeds and --shape."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
from conftest import run_cli

from surgeon.cli import COMMANDS, build_parser
from surgeon.commands import _common
from surgeon.commands.reshape_io import BATCH_ATOL, BATCH_RTOL
from surgeon.dynamic import BATCH_TOLERANCE, check_dynamic
from surgeon.feeds import FeedOptions
from surgeon.loading import load

RUNS_A_MODEL = {
    "debug",
    "diff",
    "extract",
    "merge",
    "rename",
    "reshape-io",
    "check-dynamic",
    "fold",
    "convert",
}
COMPARES = {"debug", "diff", "extract", "merge", "rename", "reshape-io", "fold", "convert"}
WRITES_A_MODEL = {
    "debug",
    "extract",
    "merge",
    "rename",
    "reshape-io",
    "nms",
    "run",
    "fold",
    "convert",
}

# option -> (dest, default, metavar) wherever it appears
SHARED = {
    "--feeds": ("feeds", None, "FEEDS.npz"),
    "--shape": ("shape", [], "SPEC"),
    "--seed": ("seed", 0, None),
    "--max-feed-size": ("max_feed_size", "4G", "SIZE"),
    "--atol": ("atol", _common.DEFAULT_ATOL, None),
    "--rtol": ("rtol", _common.DEFAULT_RTOL, None),
    "--exact": ("exact", False, None),
    "--optimization": ("optimization", "disabled", None),
    "--custom-op-library": ("custom_op_library", [], "LIB.so"),
    "--output": ("output", None, None),
    "--inplace": ("inplace", False, None),
    "--external-data": ("external_data", "auto", None),
    "--map": ("map", [], None),
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in sub._actions for s in a.option_strings if a.help is not argparse.SUPPRESS}


PARSERS = _subparsers()


def test_every_command_is_walked():
    assert set(PARSERS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shared_options_have_one_dest_default_and_metavar(command):
    options = _options(PARSERS[command])
    for flag, (dest, default, metavar) in SHARED.items():
        action = options.get(flag)
        if action is None:
            continue
        assert action.dest == dest, (command, flag)
        assert action.default == default, (command, flag)
        if metavar is not None:
            assert action.metavar == metavar, (command, flag)
    if "--output" in options:
        assert "-o" in options["--output"].option_strings, command
        assert options["--output"].metavar in ("OUT.onnx", "OUT"), command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_groups_are_where_they_belong(command):
    options = _options(PARSERS[command])
    if command in RUNS_A_MODEL:
        assert {"--feeds", "--shape", "--seed", "--max-feed-size", "--optimization"} <= set(
            options
        ), command
    if command in COMPARES:
        assert {"--atol", "--rtol", "--exact"} <= set(options), command
        assert options["--atol"].default == options["--rtol"].default == 1e-4
    if command in WRITES_A_MODEL:
        assert {"-o", "--output", "--external-data"} <= set(options), command
        # nms reads no model, so nothing for --inplace to allow (README says so)
        assert ("--inplace" in options) == (command != "nms"), command


def test_map_sides_are_named_left_reference():
    metavars = {
        c: _options(p)["--map"].metavar for c, p in PARSERS.items() if "--map" in _options(p)
    }
    assert metavars == {
        "debug": "REF=MODEL",
        "diff": "REF=CANDIDATE",
        "merge": "FIRST_OUTPUT=SECOND_INPUT",
        "rename": "OLD=NEW",
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_the_default_the_parser_holds(command):
    for flag, action in _options(PARSERS[command]).items():
        if not flag.startswith("--") or action.default in (None, False, [], argparse.SUPPRESS):
            continue
        if isinstance(action.default, (int, float, str)):
            shown = f"{action.default:g}" if isinstance(action.default, float) else action.default
            assert f"default {shown}" in action.help, (command, flag, action.help)


def test_batch_tolerance_defaults_are_the_library_ones():
    assert (BATCH_ATOL, BATCH_RTOL) == (BATCH_TOLERANCE.atol, BATCH_TOLERANCE.rtol)
    action = _options(PARSERS["check-dynamic"])["--batch-atol"]
    assert action.default == BATCH_ATOL and "default 0.001" in action.help


# ------------------------------------------------------------ old spellings and --map
@pytest.mark.parametrize(
    "argv,new",
    [
        (["diff", "{m}", "{m}", "--inputs", "f.npz"], "--feeds"),
        (["debug", "{m}", "--inputs", "f.npz"], "--feeds"),
        (["rename", "{m}", "--io", "y=z"], "--map"),
        (["reshape-io", "{m}", "--input", "x:Nx4"], "--dims"),
    ],
)
def test_old_spellings_exit_2_naming_the_new_one(tmp_path, capsys, argv, new):
    model = _relu(tmp_path)
    res = run_cli(*[a.replace("{m}", str(model)) for a in argv])
    assert res.status == 2
    err = capsys.readouterr().err + res.stderr
    assert f"was renamed to {new}" in err


def test_extract_inputs_npz_points_to_feeds(tmp_path):
    model = _relu(tmp_path)
    res = run_cli("extract", model, "--inputs", "x.npz", "--outputs", "y")
    assert res.status == 2 and "--feeds x.npz" in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "{m}", "{m}", "--map", "y:y"],
        ["rename", "{m}", "--map", "y"],
        ["merge", "{m}", "{m}", "--map", "y:x"],
    ],
)
def test_map_without_equals_exits_2_showing_the_form(tmp_path, argv):
    model = _relu(tmp_path)
    res = run_cli(*[a.replace("{m}", str(model)) for a in argv])
    assert res.status == 2 and "=" in res.stderr and "cannot read `--map" in res.stderr


def test_map_splits_at_the_first_equals():
    assert _common.parse_map(["a::b=c=d"]) == [("a::b", "c=d")]
    assert _common.parse_map(["o=a", "o=b"], unique_left=False) == [("o", "a"), ("o", "b")]


# ------------------------------------------------------------------ reshape-io --dims
def test_reshape_io_dims_finds_inputs_and_outputs(tmp_path):
    model = _relu(tmp_path)
    out = tmp_path / "o.onnx"
    res = run_cli("reshape-io", model, "--dims", "x:Nx4", "--dims", "y:Nx4", "-o", out, "--json")
    assert res.status == 0, res.stderr
    assert load(out).inputs[0].shape == ("N", 4) and load(out).outputs[0].shape == ("N", 4)
    res = run_cli("reshape-io", model, "--dims", "xx:Nx4")
    assert res.status == 2 and "neither an input nor an output" in res.stderr
    assert "did you mean `x`" in res.stderr
    res = run_cli("reshape-io", model, "--output", "y:Nx4")
    assert res.status == 2 and "--dims" in res.stderr


# --------------------------------------- --feeds in check-dynamic and reshape-io
def _relu(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"""
        ),
        str(path),
    )
    return path


def _gated(tmp_path):
    """y = x * 2 when sr == 16000, else a Reshape that only fits 1x4: a wrong sr cannot
    run at batch 3 (and picks the other branch)."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x, int64 sr) => (float[N, 4] y) {
        k = Constant <value = int64 {16000}> ()
        c = Equal(sr, k)
        y = If (c) <
            then_branch = t () => (float[N, 4] a) { two = Constant <value = float {2.0}> ()
                                                     a = Mul(x, two) },
            else_branch = e () => (float[N, 4] b) { s = Constant <value = int64[2] {1, 4}> ()
                                                     b = Reshape(x, s) }
        >
    }"""
    path = tmp_path / "gated.onnx"
    onnx.save(onnx.parser.parse_model(text), str(path))
    np.savez(tmp_path / "sr.npz", sr=np.array(16000, np.int64))
    return path


def test_check_dynamic_uses_the_given_scalar_at_every_size(tmp_path):
    path = _gated(tmp_path)
    random = check_dynamic(load(path))  # sr random: the else branch, fails above batch 1
    assert not random.passed
    given = check_dynamic(load(path), feed_options=FeedOptions(npz=str(tmp_path / "sr.npz")))
    assert given.passed and len(given.cases) >= 2
    res = run_cli("check-dynamic", path, "--feeds", tmp_path / "sr.npz", "--json")
    assert res.status == 0 and res.json["passed"]


def test_check_dynamic_shape_sets_the_first_size_and_values_are_used_where_they_fit(tmp_path):
    path = _gated(tmp_path)
    np.savez(tmp_path / "f.npz", sr=np.array(16000, np.int64), x=np.ones((5, 4), np.float32))
    check = check_dynamic(load(path), feed_options=FeedOptions(npz=str(tmp_path / "f.npz")))
    assert check.passed and [c.dims for c in check.cases][0] == {"N": 5}
    check = check_dynamic(
        load(path), feed_options=FeedOptions(dims={"N": 7}, npz=str(tmp_path / "sr.npz"))
    )
    assert check.cases[0].dims == {"N": 7}


def test_reshape_io_runs_with_the_given_value(tmp_path):
    path = _gated(tmp_path)
    out = tmp_path / "o.onnx"
    args = ("reshape-io", path, "--dims", "x:Bx4", "--dims", "y:Bx4", "-o", out)
    assert run_cli(*args).status == 1 and not out.exists()  # random sr: else branch
    res = run_cli(*args, "--feeds", tmp_path / "sr.npz", "--json")
    assert res.status == 0, res.stdout
    assert res.json["details"]["dynamic"]["passed"] and out.exists()


# ------------------------------------------- --inplace / --external-data need -o
@pytest.mark.parametrize(
    "argv",
    [
        ["rename", "{m}", "--map", "x=p"],
        ["extract", "{m}", "--inputs", "x", "--outputs", "y"],
        ["reshape-io", "{m}", "--dims", "x:Nx4"],
        ["merge", "{m}", "{m}", "--map", "y=x"],
        ["debug", "{m}"],
        ["run", "find_first_nan", "{m}"],
    ],
    ids=lambda a: a[0] if isinstance(a, list) else a,
)
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--inplace"], "--inplace says"),
        (["--external-data", "auto"], "--external-data says"),
        (["--inplace", "--external-data", "never"], "--inplace and --external-data say"),
    ],
)
def test_output_flags_without_output_are_a_usage_error(tmp_path, argv, flags, named):
    model = _relu(tmp_path)
    args = [a.replace("{m}", str(model)) for a in argv]
    parser_options = _options(PARSERS[args[0]])
    if not set(f for f in flags if f.startswith("--")) <= set(parser_options):
        pytest.skip(f"{args[0]} has no {flags}")
    res = run_cli(*args, *flags)
    assert res.status == 2, res.stdout
    assert named in res.stderr and "no -o was given" in res.stderr
    assert not list(tmp_path.glob("*.onnx.data"))


# ------------------------------------------------------------ repeated options
@pytest.mark.parametrize(
    ("argv", "conflicts"),
    [
        (
            ["diff", "{m}", "{m}", "--shape", "x:1x4", "--shape", "x:2x4"]
            + ["--shape", "N=1", "--shape", "N=2"],
            ["`x` is given two shapes: 1x4 and 2x4", "`N` is given two sizes: 1 and 2"],
        ),
        (
            ["check-dynamic", "{m}", "--sizes", "N=1,2", "--sizes", "N=3,4"],
            ["`N` is given two lists of sizes: 1,2 and 3,4"],
        ),
        (
            ["reshape-io", "{m}", "--dims", "x:Bx4", "--dims", "x:Cx4"],
            ["`x` is given two shapes: Bx4 and Cx4"],
        ),
    ],
    ids=["shape", "sizes", "dims"],
)
def test_conflicting_repeats_exit_2_listing_every_conflict(tmp_path, argv, conflicts):
    model = _relu(tmp_path)
    res = run_cli(*[a.replace("{m}", str(model)) for a in argv])
    assert res.status == 2
    for conflict in conflicts:
        assert conflict in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "{m}", "{m}", "--shape", "x:2x4", "--shape", "x:2x4", "--shape", "N=2"]
        + ["--shape", "N=2"],
        ["check-dynamic", "{m}", "--sizes", "N=1,2", "--sizes", "N=1,2"],
        ["reshape-io", "{m}", "--dims", "x:Bx4", "--dims", "x:Bx4"],
        ["rename", "{m}", "--map", "y=z", "--map", "y=z"],
    ],
    ids=["shape", "sizes", "dims", "map"],
)
def test_identical_repeats_are_fine(tmp_path, argv):
    model = _relu(tmp_path)
    res = run_cli(*[a.replace("{m}", str(model)) for a in argv])
    assert res.status == 0, res.stderr
    assert "twice" not in res.stderr and "target of both" not in res.stderr


# ----------------------------------------------------------------- tolerances
@pytest.mark.parametrize(
    "flags",
    [
        ["--atol", "inf"],
        ["--rtol", "inf"],
        ["--atol", "nan"],
        ["--atol", "-1"],
    ],
)
def test_a_tolerance_that_cannot_fail_or_pass_is_refused(tmp_path, flags):
    model = _relu(tmp_path)
    res = run_cli("diff", model, model, *flags)
    assert res.status == 2 and "finite number >= 0" in res.stderr
    res = run_cli("check-dynamic", model, "--batch-" + flags[0][2:], flags[1])
    assert res.status == 2 and "finite numbers >= 0" in res.stderr


def test_reshape_io_dims_too_large_to_check_are_blamed_on_dims(tmp_path):
    model = _relu(tmp_path)
    res = run_cli("reshape-io", model, "--dims", "x:9223372036854775807x4")
    assert res.status == 2
    assert "the input sizes --dims sets would take more than the limit" in res.stderr
    assert "`x` 9223372036854775807x4 float32" in res.stderr
    assert "declares" not in res.stderr


# ------------------------------------------------ --shape's default, per command
def test_shape_help_shows_the_dims_each_command_really_uses():
    from surgeon.dynamic.check import DEFAULT_SIZES
    from surgeon.feeds import DEFAULT_BATCH, DEFAULT_DIM

    assert _common.FEED_DIMS == (DEFAULT_BATCH, DEFAULT_DIM)
    assert _common.FIRST_TRIED == {kind: sizes[0] for kind, sizes in DEFAULT_SIZES.items()}
    tries_sizes = {"check-dynamic", "reshape-io"}
    for command, sub in PARSERS.items():
        action = _options(sub).get("--shape")
        if action is None:
            continue
        text = " ".join(action.help.split())
        if command in tries_sizes:
            first = ", ".join(f"{k} {v[0]}" for k, v in DEFAULT_SIZES.items())
            assert f"the first size each dim is tried at: {first}" in text, command
        else:
            assert f"batch {DEFAULT_BATCH}, other dynamic dims {DEFAULT_DIM}" in text, command
        assert "INPUT[AXIS]=" in text


def test_unnamed_dims_are_set_by_the_names_reports_give_them(tmp_path):
    path = tmp_path / "unnamed.onnx"
    onnx.save(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[?, ?] x) => (float[?, ?] y) { y = Relu(x) }"""
        ),
        str(path),
    )
    res = run_cli("diff", path, path, "--shape", "x[1]=7", "--json")
    assert res.status == 0, res.stderr
    assert res.json["feeds"]["x"]["shape"] == [1, 7]
    res = run_cli("check-dynamic", path, "--shape", "x[1]=5", "--json")
    assert res.status == 0, res.stderr
    dims = {d["name"]: d["values"] for d in res.json["dims"]}
    assert dims["x[1]"][0] == 5
    res = run_cli("check-dynamic", path, "--sizes", "x[1]=5,9", "--json")
    assert res.status == 0 and {d["name"]: d["values"] for d in res.json["dims"]}["x[1]"] == [5, 9]
    res = run_cli("diff", path, path, "--shape", "x[2]=7")
    assert res.status == 2 and "`x[2]`" in res.stderr and "did you mean `x[1]`" in res.stderr
