"""The console script ends without tearing the interpreter down, and loses nothing by it:
the exit status, what is written to stdout and stderr, and the atexit handlers (temp
folder finalizers, coverage) are those of a normal exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import surgeon

ROOT = Path(surgeon.__file__).resolve().parent.parent

# Registers an atexit handler and a weakref finalizer (what TemporaryDirectory uses),
# optionally starts a thread that outlives main(), then runs the console script.
DRIVER = textwrap.dedent("""
    import atexit, os, sys, threading, time, weakref
    marker = sys.argv[1]

    class Owner:
        pass

    owner = Owner()
    weakref.finalize(owner, lambda: open(marker + ".finalizer", "w").write("ran"))
    atexit.register(lambda: open(marker, "w").write("ran"))
    if os.environ.get("THREAD"):
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    sys.argv = ["surgeon"] + sys.argv[2:]
    from surgeon.cli import entry_point
    entry_point()
""")


def _run(tmp_path, *argv, **env):
    marker = tmp_path / "atexit"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(marker), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )
    return done, marker


@pytest.mark.parametrize("thread", ["", "1"])
def test_status_output_and_exit_handlers_are_kept(tmp_path, thread):
    done, marker = _run(tmp_path, "--version", THREAD=thread)
    assert done.returncode == 0
    assert done.stdout.startswith(f"surgeon {surgeon.__version__}")
    assert marker.read_text() == "ran"
    assert Path(str(marker) + ".finalizer").read_text() == "ran"
    if thread:  # a live thread: Python's own exit, which waits for it
        assert "thread done" in done.stdout


def test_a_failing_command_keeps_its_status_and_message(tmp_path):
    done, marker = _run(tmp_path, "inspect", str(tmp_path / "missing.onnx"), "--json")
    assert done.returncode == 2
    assert '"exit_code": 2' in done.stdout
    assert "missing.onnx" in done.stderr
    assert marker.read_text() == "ran"
