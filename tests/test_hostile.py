"""Hostile paths: external data that points outside the model's folder, and outputs that
would overwrite an input.

onnx itself has had CVEs of this kind (external data locations used to read arbitrary
files). Every command that loads a model must refuse such a model with exit 2 and a
message, write nothing, and never show a traceback. tests/test_model.py covers the
loader's own checks; here each hostile case goes through every command.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli, write

from surgeon.cli import COMMANDS

WEIGHTS = np.arange(8, dtype=np.float32).reshape(2, 4)


def _model_with_location(folder: Path, location: str, name: str = "m.onnx") -> Path:
    """``y = Add(x, w)`` whose initializer ``w`` is external data at ``location``."""
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 4] x) => (y) { y = Add(x, w) }""")
    w = onnx.numpy_helper.from_array(WEIGHTS, "w")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        w.external_data.add(key=key, value=value)
    m.graph.initializer.append(w)
    return write(m, folder / name)


def _good_model(folder: Path, name: str = "good.onnx") -> Path:
    return write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] y) => (z) { z = Relu(y) }"""),
        folder / name,
    )


# Command lines that load MODEL; {M} is the model, {G} a good model, {OUT} an output.
COMMAND_LINES = {
    "inspect": ["inspect", "{M}"],
    "debug": ["debug", "{M}"],
    "diff": ["diff", "{M}", "{M}"],
    "diff-as-candidate": ["diff", "{G}", "{M}"],
    "extract": ["extract", "{M}", "--inputs", "x", "--outputs", "y"],
    "rename": ["rename", "{M}", "--map", "y=z"],
    "reshape-io": ["reshape-io", "{M}", "--dims", "x:Nx4"],
    "check-dynamic": ["check-dynamic", "{M}"],
    "merge": ["merge", "{M}", "{G}"],
    "merge-second": ["merge", "{G}", "{M}"],
    "run": ["run", "find_first_nan", "{M}"],
}


def _available(lines: dict) -> list[str]:
    return [k for k, argv in lines.items() if argv[0] in COMMANDS]


def _argv(template, model, good, out=None):
    return [str(a).format(M=model, G=good, OUT=out) if isinstance(a, str) else a for a in template]


def _assert_refused(result, *fragments: str) -> None:
    assert result.status == 2, (result.status, result.stdout, result.stderr)
    text = " ".join((result.stdout + result.stderr).split())  # undo the console's wrapping
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


def _hostile_setups(tmp_path: Path) -> dict[str, Path]:
    """Each hostile external-data location, as a model inside ``tmp_path/inner``."""
    inner = tmp_path / "inner"
    inner.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(WEIGHTS.tobytes())
    (inner / "sub").mkdir()
    os.symlink(outside, inner / "link.bin")
    os.symlink(tmp_path, inner / "linked_dir")
    return {
        "absolute": _model_with_location(inner, str(outside), "absolute.onnx"),
        "dotdot": _model_with_location(inner, "../outside.bin", "dotdot.onnx"),
        "dotdot-inside": _model_with_location(inner, "sub/../../outside.bin", "dotdot2.onnx"),
        "backslash": _model_with_location(inner, "..\\outside.bin", "backslash.onnx"),
        "drive": _model_with_location(inner, "C:/outside.bin", "drive.onnx"),
        "symlink": _model_with_location(inner, "link.bin", "symlink.onnx"),
        "symlinked-folder": _model_with_location(inner, "linked_dir/outside.bin", "dir.onnx"),
    }


HOSTILE = [
    "absolute",
    "dotdot",
    "dotdot-inside",
    "backslash",
    "drive",
    "symlink",
    "symlinked-folder",
]


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("command", _available(COMMAND_LINES))
def test_hostile_external_data_is_refused_by_every_command(tmp_path, kind, command):
    models = _hostile_setups(tmp_path)
    good = _good_model(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli(*_argv(COMMAND_LINES[command], models[kind], good))
    _assert_refused(result, "external data location")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_external_data_json_error(tmp_path, kind):
    models = _hostile_setups(tmp_path)
    result = run_cli("inspect", models[kind], "--json")
    _assert_refused(result, "external data location")


def test_symlink_that_stays_inside_the_folder_is_accepted(tmp_path):
    (tmp_path / "real.bin").write_bytes(WEIGHTS.tobytes())
    os.symlink(tmp_path / "real.bin", tmp_path / "alias.bin")
    model = _model_with_location(tmp_path, "alias.bin")
    result = run_cli("inspect", model)
    assert result.status == 0, result.stderr
    import surgeon

    loaded = surgeon.load(model)
    assert np.array_equal(onnx.numpy_helper.to_array(loaded.proto.graph.initializer[0]), WEIGHTS)


def test_data_in_a_subfolder_is_accepted(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(WEIGHTS.tobytes())
    model = _model_with_location(tmp_path, "weights/w.bin")
    assert run_cli("inspect", model).status == 0


def test_model_file_symlinked_from_elsewhere_reads_data_next_to_the_link(tmp_path):
    """Locations are relative to the folder the user named, not to where a link points."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "w.bin").write_bytes(WEIGHTS.tobytes())
    model = _model_with_location(real, "w.bin")
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(model, other / "m.onnx")
    result = run_cli("inspect", other / "m.onnx")
    _assert_refused(result, "w.bin", "missing")


@pytest.mark.parametrize(
    "location, fragment",
    [
        ("", "empty location"),
        (".", "missing"),
        ("w.bin\x00.txt", "w.bin"),
        ("nested/", "missing"),
    ],
)
def test_odd_locations_are_refused_with_a_message(tmp_path, location, fragment):
    (tmp_path / "nested").mkdir()
    model = _model_with_location(tmp_path, location)
    result = run_cli("inspect", model)
    _assert_refused(result, fragment)


def test_device_file_through_a_symlink_is_refused(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.bin")
    model = _model_with_location(tmp_path, "zero.bin")
    _assert_refused(run_cli("inspect", model), "external data location")


# ---------------------------------------------------------------------- output == input
WRITE_LINES = {
    "debug": ["debug", "{M}", "-o", "{OUT}"],
    "extract": ["extract", "{M}", "--inputs", "x", "--outputs", "y", "-o", "{OUT}"],
    "rename": ["rename", "{M}", "--map", "y=z", "-o", "{OUT}"],
    "reshape-io": ["reshape-io", "{M}", "--dims", "x:Nx4", "-o", "{OUT}"],
    "merge": ["merge", "{M}", "{G}", "-o", "{OUT}"],
    "run": ["run", "rename_for_deployment", "{M}", "-o", "{OUT}", "--param", "prefix=p_"],
}


def _inline_model(folder: Path) -> Path:
    return write(
        parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] x) => (y) { y = Relu(x) }"""),
        folder / "m.onnx",
    )


def _same_file_spellings(tmp_path: Path, model: Path) -> dict[str, Path]:
    (tmp_path / "d").mkdir(exist_ok=True)
    os.symlink(model, tmp_path / "link.onnx")
    os.link(model, tmp_path / "hard.onnx")
    return {
        "same": model,
        "dotdot": tmp_path / "d" / ".." / model.name,
        "symlink": tmp_path / "link.onnx",
        "hardlink": tmp_path / "hard.onnx",
    }


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("command", _available(WRITE_LINES))
def test_output_that_is_the_input_is_refused(tmp_path, command, spelling):
    model = _inline_model(tmp_path)
    good = _good_model(tmp_path)
    out = _same_file_spellings(tmp_path, model)[spelling]
    before = model.read_bytes()
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli(*_argv(WRITE_LINES[command], model, good, out))
    _assert_refused(result, "--inplace")
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("command", _available(WRITE_LINES))
def test_output_onto_the_inputs_external_data_is_refused(tmp_path, command):
    (tmp_path / "w.bin").write_bytes(WEIGHTS.tobytes())
    model = _model_with_location(tmp_path, "w.bin")
    good = _good_model(tmp_path)
    result = run_cli(*_argv(WRITE_LINES[command], model, good, tmp_path / "w.bin"))
    _assert_refused(result)
    assert (tmp_path / "w.bin").read_bytes() == WEIGHTS.tobytes()


def test_second_models_file_is_protected_too(tmp_path):
    if "merge" not in COMMANDS:
        pytest.skip("no merge command")
    model = _inline_model(tmp_path)
    good = _good_model(tmp_path)
    before = good.read_bytes()
    result = run_cli("merge", model, good, "-o", good)
    _assert_refused(result, "--inplace")
    assert good.read_bytes() == before


def test_inplace_allows_replacing_the_input(tmp_path):
    model = _inline_model(tmp_path)
    result = run_cli("rename", model, "--map", "y=z", "-o", model, "--inplace")
    assert result.status == 0, result.stderr
    import surgeon

    assert surgeon.load(model).output_names == ["z"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp files left


def test_debug_side_outputs_cannot_overwrite_the_input(tmp_path):
    model = _inline_model(tmp_path)
    before = model.read_bytes()
    for flag in ("--save", "--html"):
        result = run_cli("debug", model, flag, model)
        _assert_refused(result)
        assert model.read_bytes() == before


@pytest.mark.parametrize("dims", [[2**62] * 250, [2] * 5000, [2**62] * 3])
def test_initializer_whose_shape_needs_more_bytes_than_str_prints(tmp_path, dims):
    """A crafted shape needing more bytes than str() of an int prints (over 4300 digits)
    or of rank 5000 is a damaged file, named as such in a short message."""
    model = parse(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (y) { y = Add(x, w) }'
    )
    w = model.graph.initializer.add(name="w", data_type=onnx.TensorProto.FLOAT)
    w.raw_data = b"\0" * 8
    w.dims.extend([2])
    path = write(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    proto.graph.initializer[0].ClearField("dims")
    proto.graph.initializer[0].dims.extend(dims)
    path.write_bytes(proto.SerializeToString())
    res = run_cli("inspect", path, "--json")
    assert res.status == 2, res.stderr
    assert "initializer `w` holds 8 bytes" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr) < 2000
