"""Atomic writes of side files (reports, .npz): temp file in the same folder, fsync, then
rename (see :func:`surgeon.outputs.write_files`)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from surgeon.errors import OutputPathError
from surgeon.outputs import probe_writable, write_files


def atomic_write(path: str | os.PathLike, write: Callable, *, binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temp file next to ``path``, then rename it into place.

    Nothing is left behind when ``write`` fails (or a signal interrupts it); the file
    gets the usual permissions (not mkstemp's 0600).

    Raises:
        OutputPathError: The path is (or is spelled as) a folder or is a device or
            FIFO, or its folder does not exist or cannot be written (full disk,
            read-only), naming the path and the reason.
    """
    out = Path(path)
    problem = probe_writable(path)  # as spelled: Path("out/") would lose the "/"
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


def write_npz(fh, arrays: Mapping[str, object]) -> None:
    """Write ``arrays`` to the binary file ``fh`` as an ``.npz`` that ``np.load`` reads,
    under exactly their names.

    ``np.savez(fh, **arrays)`` takes its own ``file`` and ``allow_pickle`` arguments from
    the same keywords: a tensor named ``file`` is a TypeError, one named
    ``allow_pickle`` is silently dropped. Here every name is only a member name.
    """
    import zipfile

    import numpy as np

    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, object]) -> Path:
    """:func:`write_npz` to ``path`` atomically (see :func:`atomic_write`).

    Raises:
        OutputPathError: As :func:`atomic_write`.
    """
    return atomic_write(path, lambda fh: write_npz(fh, arrays))
