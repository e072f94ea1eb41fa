"""benchmarks/measure.py: a child's peak memory without the parent's in it.

The benchmarks compare surgeon's peak memory with a plain onnxruntime run's; measured by
wait4 from the benchmark process itself, every child's ru_maxrss was floored at that
process's RSS (137 MiB), which made the plain baseline look as large as that and the
ratios look better than they were."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux rusage")


def _measure_module():
    spec = importlib.util.spec_from_file_location("measure", ROOT / "benchmarks" / "measure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_small_child_of_a_large_parent_is_measured_small():
    big = bytearray(256 * 2**20)
    big[::4096] = b"\x01" * len(big[::4096])  # resident
    measure = _measure_module().measure
    wall, peak, cpu, code, _ = measure([sys.executable, "-c", "pass"])
    assert code == 0 and wall > 0 and cpu >= 0
    assert peak < 64, peak
    # The defect it replaces: wait4 from this process sees this process's pages.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(proc.pid, 0)
    assert usage.ru_maxrss / 1024 > 256
    del big


def test_a_child_that_allocates_is_measured_with_it():
    measure = _measure_module().measure
    code = "x = bytearray(96 * 2**20); x[::4096] = b'\\x01' * len(x[::4096])"
    _, peak, _, status, _ = measure([sys.executable, "-c", code])
    assert status == 0
    assert 96 < peak < 96 + 64, peak


def test_exit_code_and_stderr_come_back():
    measure = _measure_module().measure
    _, _, _, status, err = measure(
        [sys.executable, "-c", "import sys; print('no', file=sys.stderr); sys.exit(3)"]
    )
    assert status == 3 and "no" in err
