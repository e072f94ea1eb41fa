"""Atomic writes of side files (reports, .npz): temp file in the same folder, fsync, then
rename (see :func:`surgeon.outputs.write_files`)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

from surgeon.errors import OutputPathError
from surgeon.outputs import probe_writable, write_files


def atomic_write(path: str | os.PathLike, write: Callable, *, binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temp file next to ``path``, then rename it into place.

    Nothing is left behind when ``write`` fails (or a signal interrupts it); the file
    gets the usual permissions (not mkstemp's 0600).

    Raises:
        OutputPathError: The path is a folder, or its folder does not exist or cannot be
            written (full disk, read-only), naming the path and the reason.
    """
    out = Path(path)
    problem = probe_writable(out)
    if problem:
        raise OutputPathError(problem)

    def write_to(fh):
        if binary:
            write(fh)
            return
        text = io.TextIOWrapper(fh, encoding="utf-8")
        write(text)
        text.flush()
        text.detach()  # leave the binary file open for write_files to fsync and close

    return write_files([(out, write_to)])[0]
