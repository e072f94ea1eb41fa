"""Wall time, peak memory and CPU time of one command, measured without the parent's
memory in them.

On Linux a child's ru_maxrss (from wait4) is never below the RSS of the process that
forked it: the fork copies the parent's address space, and exec keeps that high-water
mark. A benchmark that has imported onnx and built its models (about 137 MiB) then sees
every plain run at 137 MiB, whatever the run costs: the ratios to that baseline were too
kind. Here a small launcher process (a bare Python, about 10 MiB) forks and execs the
command and reports the rusage of that one child, so the floor is the launcher's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Run by a fresh interpreter: no imports beyond the standard library's smallest modules.
LAUNCHER = """
import json, os, sys, time
fd = int(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
report = {"wall": wall, "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime,
          "code": os.waitstatus_to_exitcode(status)}
os.write(fd, json.dumps(report).encode())
"""


def measure(
    cmd: list[str], env: dict | None = None, stdout=subprocess.DEVNULL
) -> tuple[float, float, float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB, CPU seconds, exit code, stderr).

    The wall time is the child's alone (the launcher's own start is not counted)."""
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(write), *cmd],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(write,),
        )
        os.close(write)
        write = -1
        err = proc.communicate()[1].decode(errors="replace")
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    if not data:
        raise RuntimeError(f"the launcher reported nothing for {cmd}: {err[-2000:]}")
    report = json.loads(data)
    return report["wall"], report["maxrss_kib"] / 1024.0, report["cpu"], report["code"], err
