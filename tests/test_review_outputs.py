"""An adversarial review of the protected paths, transactional writes and terminal
escaping (issue 12): each test is a way a hostile or careless command line still got
through, and pins the fix.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli

import surgeon
from surgeon.errors import OutputPathError
from surgeon.loading import load
from surgeon.saving import save

EYE = np.eye(4, dtype=np.float32)
MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4] x) => (float[1, 4] y) { y = MatMul(x, w) }"""


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _text(result) -> str:
    return " ".join(result.stderr.split())


def _shared_weights(folder: Path) -> tuple[Path, Path]:
    """p.onnx and q.onnx, both with their weights in ``p.onnx.data`` (p at offset 0,
    q at offset 64): one weights file read by two models."""
    (folder / "p.onnx.data").write_bytes(EYE.tobytes() + (2 * EYE).tobytes())
    paths = []
    for name, offset in (("p.onnx", 0), ("q.onnx", 64)):
        m = parse(MODEL)
        w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4, 4])
        w.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "p.onnx.data"), ("offset", str(offset)), ("length", "64")):
            w.external_data.add(key=key, value=value)
        m.graph.initializer.append(w)
        onnx.save_model(m, str(folder / name))
        paths.append(folder / name)
    return paths[0], paths[1]


@pytest.fixture
def no_work(monkeypatch):
    import surgeon.runner

    def refuse(*a, **k):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(surgeon.runner.Session, "__init__", refuse)


def test_inplace_never_replaces_the_weights_another_input_shares(tmp_path, no_work):
    """merge q.onnx p.onnx -o p.onnx --inplace replaced p.onnx.data, which q.onnx reads
    too: q (not the -o target) then computed zeros. --inplace allows replacing the model
    -o names and its weights, never another model's weights."""
    p, q = _shared_weights(tmp_path)
    before = _hashes(tmp_path)
    result = run_cli("merge", q, p, "-o", p, "--inplace", "--external-data", "always")
    assert result.status == 2, result.stderr
    assert "p.onnx.data" in _text(result) and "first model" in _text(result)
    assert _hashes(tmp_path) == before


def test_inplace_still_replaces_weights_only_its_own_model_reads(tmp_path):
    m = save(surgeon.Model(_big()), tmp_path / "m.onnx", external_data=True)
    (tmp_path / "other.onnx").write_bytes(b"unrelated")
    result = run_cli("rename", m, "--map", "y=z", "-o", m, "--inplace", "--external-data", "always")
    assert result.status == 0, result.stderr
    assert load(m).output_names == ["z"]


def _big() -> onnx.ModelProto:
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 512] x) => (y) { y = Add(x, w) }""")
    m.graph.initializer.append(
        onnx.numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(2, 512), "w")
    )
    return m


@pytest.mark.parametrize(
    "argv",
    [
        ["rename", "{m}", "--map", "y=z", "-o", "{out}"],
        ["nms", "--layout", "yolov8", "--classes", "3", "-o", "{out}"],
        ["debug", "{m}", "--html", "{out}"],
        ["debug", "{m}", "--save", "{out}"],
    ],
    ids=["rename-o", "nms-o", "debug-html", "debug-save"],
)
def test_an_output_spelled_as_a_folder_is_not_written_as_a_file(tmp_path, no_work, argv):
    """`-o newdir/` wrote a file named `newdir` (and said "wrote newdir/")."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    out = str(tmp_path / "newdir") + os.sep
    result = run_cli(*[a.format(m=m, out=out) for a in argv])
    assert result.status == 2, result.stderr
    assert "folder" in _text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_api_save_refuses_a_folder_spelling(tmp_path):
    with pytest.raises(OutputPathError, match="folder"):
        save(surgeon.Model(_big()), str(tmp_path / "newdir") + "/")
    assert list(tmp_path.iterdir()) == []


def test_auto_external_data_does_not_refuse_a_name_it_will_not_write(tmp_path):
    """A 252-byte output name is legal; only its would-be weights file (257 bytes) is
    too long, and --external-data auto writes none for a small model."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    out = tmp_path / ("a" * 247 + ".onnx")
    result = run_cli("rename", m, "--map", "y=z", "-o", out)
    assert result.status == 0, result.stderr
    assert load(out).output_names == ["z"]
    # and with --external-data always the weights file's name is still refused up front
    result = run_cli("rename", m, "--map", "y=z", "-o", out, "--external-data", "always")
    assert result.status == 2 and "over this file system's" in _text(result)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("inplace", [True, False])
def test_a_replaced_file_keeps_its_permissions(tmp_path, inplace):
    """--inplace on a private (0600) model made it 0644: readable by everyone."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    out = m if inplace else tmp_path / "out.onnx"
    if not inplace:
        out.write_bytes(b"old")
    os.chmod(m, 0o600)
    os.chmod(out, 0o600)
    result = run_cli("rename", m, "--map", "y=z", "-o", out, *(["--inplace"] if inplace else []))
    assert result.status == 0, result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("flag", ["-o", "--html", "--save"])
def test_a_special_file_is_never_replaced(tmp_path, no_work, flag):
    """`--html /dev/null` (as root, in a container) replaced /dev/null with a regular
    file: an existing FIFO or device at an output path is refused, not renamed over."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run_cli("debug", m, flag, fifo)
    assert result.status == 2, result.stderr
    assert "not a regular file" in _text(result)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_usage_errors_escape_the_arguments_they_quote(cli):
    """argparse's "unrecognized arguments" quoted an ESC raw: a command line (or a file
    name from a glob) could steer the terminal through surgeon's usage error."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = surgeon.cli.main(["inspect", "m.onnx", "--bogus", "\x1b]0;pwned\x07\nPASS"])
    assert status == 2
    text = err.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07\\nPASS" in text


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["rename", "{m}", "--map", "y=z", "-o", ""], "-o"),
        (["merge", "{m}", "{m}", "-o", ""], "-o"),
        (["debug", "{m}", "--html", ""], "--html"),
        (["debug", "{m}", "--save", ""], "--save"),
        (["debug", "{m}", "--feeds", ""], "--feeds"),
    ],
)
def test_an_empty_path_is_a_usage_error_not_a_missing_option(tmp_path, no_work, argv, flag):
    """`-o "$OUT"` with OUT unset ran the whole command, wrote nothing and exited 0."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    result = run_cli(*[a.format(m=m) for a in argv])
    assert result.status == 2, result.stderr
    assert f"{flag} was given an empty path" in _text(result)


def test_recipe_output_names_stay_inside_the_output_folder(tmp_path):
    """A recipe returning {"../escaped": model} wrote outside -o FOLDER/."""
    m = tmp_path / "m.onnx"
    onnx.save_model(_big(), str(m))
    recipe = tmp_path / "escape.py"
    recipe.write_text(
        '"""Escape."""\nimport surgeon\n\n\ndef recipe(models):\n'
        '    return {"../escaped": surgeon.rename(models[0], {"y": "z"}), '
        '"b": surgeon.rename(models[0], {"y": "v"})}\n'
    )
    (tmp_path / "parts").mkdir()
    result = run_cli("run", recipe, m, "-o", tmp_path / "parts")
    assert result.status == 2, result.stderr
    assert "../escaped" in _text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.py", "m.onnx", "parts"]
    assert list((tmp_path / "parts").iterdir()) == []


def test_atomic_write_refuses_a_folder_spelling(tmp_path):
    from surgeon.fileio import atomic_write

    with pytest.raises(OutputPathError, match="names a folder"):
        atomic_write(str(tmp_path / "newdir") + "/", lambda fh: fh.write(b"x"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["file", "allow_pickle", "a/b", "x.npy"])
def test_save_npz_keeps_names_that_np_savez_takes_as_its_own_arguments(tmp_path, name):
    """np.savez(fh, **arrays) raised for a tensor named `file` and silently dropped one
    named `allow_pickle`; fileio.save_npz keeps every name."""
    from surgeon.fileio import save_npz

    arrays = {name: np.arange(3, dtype=np.float32), "other": np.ones((2, 2), np.int64)}
    out = save_npz(tmp_path / "t.npz", arrays)
    with np.load(out) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(loaded[k], v)
            assert loaded[k].dtype == v.dtype
