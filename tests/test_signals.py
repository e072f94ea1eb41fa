"""Signals and pipes: SIGINT, SIGTERM and SIGHUP clean up and exit 128 + n; a closed
output pipe exits 141 without a word.

The signal cases run surgeon in a subprocess whose save (or onnxruntime session) is made
to hang while its temp files exist, send the signal once they are there, and check that
nothing is left: no temp file beside the output, no ``surgeon-run-*`` folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli

import surgeon
from surgeon import outputs

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "SIGHUP"), reason="POSIX signals only"
)
ROOT = Path(surgeon.__file__).resolve().parent.parent
BIG = np.arange(1024, dtype=np.float32).reshape(2, 512)


def _model(folder: Path) -> Path:
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 512] x) => (y) { y = Add(x, w) }""")
    m.graph.initializer.append(onnx.numpy_helper.from_array(BIG, "w"))
    path = folder / "m.onnx"
    onnx.save_model(m, str(path))
    return path


# Runs surgeon's console script with os.fsync hanging, so a save stops while its temp
# files exist; with RUNNER_FILES, every onnxruntime session goes through a temp folder and
# its creation hangs (the runner's scratch copy is not fsynced).
DRIVER = textwrap.dedent("""
    import os, sys, time
    if os.environ.get("RUNNER_FILES"):
        import onnxruntime
        import surgeon.runner
        surgeon.runner.FILE_THRESHOLD = -1
        onnxruntime.InferenceSession.__init__ = lambda self, *a, **k: time.sleep(60)
    os.fsync = lambda fd: time.sleep(60)
    sys.argv = ["surgeon"] + sys.argv[1:]
    from surgeon.cli import entry_point
    entry_point()
""")


def _start(folder: Path, argv: list[str], **env) -> subprocess.Popen:
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"surgeon ended before the signal: {proc.returncode} {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the save never started")
        time.sleep(0.02)


# (SIGINT goes the same way; test_exit_codes_of_signals covers its code in-process.)
def _temp_with_bytes(folder: Path):
    def found() -> bool:
        for p in folder.iterdir():
            try:
                if p.suffix == ".tmp" and p.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                pass
        return False

    return found


SIGNALS = [("SIGTERM", 143, "terminated"), ("SIGHUP", 129, "terminated")]


@pytest.mark.parametrize(("name", "code", "word"), SIGNALS)
def test_signal_during_a_save_leaves_no_temp_files(tmp_path, name, code, word):
    model = _model(tmp_path)
    (tmp_path / "out.onnx").write_bytes(b"old")
    proc = _start(
        tmp_path,
        ["rename", str(model), "--map", "y=z", "-o", "out.onnx", "--external-data", "always"],
    )
    # a temp file with bytes in it: the save itself (not the empty probe before the work)
    _wait_for(_temp_with_bytes(tmp_path), proc)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx", "tmp"]
    assert (tmp_path / "out.onnx").read_bytes() == b"old"


@pytest.mark.parametrize("name", ["SIGTERM"])
def test_signal_while_onnxruntime_reads_a_temp_folder_removes_it(tmp_path, name):
    model = _model(tmp_path)
    proc = _start(tmp_path, ["debug", str(model)], RUNNER_FILES="1")
    tmp = tmp_path / "tmp"
    _wait_for(lambda: any(p.name.startswith("surgeon-run-") for p in tmp.iterdir()), proc)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, name), err
    # (onnxruntime's import leaves a small `.ses` file in the temp dir: not ours)
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []


@pytest.mark.parametrize("argv", [["inspect"], ["inspect", "--json"]])
def test_closed_pipe_exits_141_quietly(tmp_path, argv):
    model = _model(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before surgeon writes a byte
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "surgeon", *argv[:1], str(model), *argv[1:]],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert proc.stderr == ""


# ------------------------------------------------------------------ in-process mechanics
def test_signals_are_held_back_while_files_are_renamed():
    with outputs.handle_signals():
        with pytest.raises(outputs.Terminated) as caught:
            with outputs.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler ran here, and held the signal back
                reached = True
        assert reached and caught.value.signum == signal.SIGTERM
    assert outputs.exit_code_for(caught.value) == 143


def test_interrupted_write_leaves_nothing(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old a")

    def stop(fh):
        fh.write(b"partial")
        raise outputs.Terminated(signal.SIGTERM)

    with pytest.raises(outputs.Terminated):
        outputs.write_files(
            [(tmp_path / "a.bin", lambda fh: fh.write(b"new a")), (tmp_path / "b.bin", stop)]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"old a"


@pytest.mark.parametrize(
    ("exc", "code", "word"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (outputs.Terminated(signal.SIGTERM), 143, "terminated (SIGTERM)"),
        (outputs.Terminated(signal.SIGHUP), 129, "terminated (SIGHUP)"),
    ],
)
def test_exit_codes_of_signals(tmp_path, monkeypatch, exc, code, word):
    import surgeon.commands.inspect as inspect_command

    def interrupted(args, ctx):
        raise exc

    monkeypatch.setattr(inspect_command, "run", interrupted)
    result = run_cli("inspect", _model(tmp_path))
    assert result.status == code and word in result.stderr
