"""Atomic writes of side files (reports, .npz): temp file in the same folder, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from surgeon.errors import OutputPathError


def atomic_write(path: str | os.PathLike, write: Callable, *, binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temp file next to ``path``, then rename it into place.

    Nothing is left behind when ``write`` fails; the file gets the usual permissions
    (not mkstemp's 0600).

    Raises:
        OutputPathError: The folder does not exist or cannot be written.
    """
    out = Path(path)
    if out.is_dir():
        raise OutputPathError(f"{out} is a folder; give a file name")
    if not out.parent.exists():
        raise OutputPathError(f"cannot write {out}: the folder {out.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise OutputPathError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as fh:
            write(fh)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
