"""Writes that replace files as one transaction: each file is written to a temp file
beside its target and fsynced, then all are renamed into place; if a rename fails, the
files already replaced are put back (:func:`write_files`, :func:`transaction`)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from surgeon.errors import OutputPathError
from surgeon.outputs.signals import signals_deferred


def temp_prefix(name: str) -> str:
    """The start of a temp file's name beside the file ``name`` (hidden, recognisable)."""
    # Truncated: a long output name must not become too long for the file system only
    # once the temp suffix is added.
    return f".{name[:80]}."


def _umask_mode() -> int:
    """The mode a plainly created file gets (mkstemp's 0600 would hide saved files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _mode_for(final: Path) -> int:
    """The mode of the file being replaced (a private 0600 model stays private), else
    the mode a plainly created file gets."""
    try:
        st = os.stat(final)
    except OSError:
        return _umask_mode()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else _umask_mode()


def _fsync_folder(folder: Path) -> None:
    # Makes the renames durable; not every platform can open a folder (best effort).
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _set_aside(final: Path) -> Path | None:
    """Keep the current file at ``final`` under a temp name until the transaction ends
    (a hard link, so ``final`` never goes missing; a rename where links are impossible)."""
    if not os.path.lexists(final):
        return None
    backup = Path(tempfile.mktemp(prefix=temp_prefix(final.name), suffix=".old", dir=final.parent))
    try:
        os.link(final, backup, follow_symlinks=False)
    except (OSError, NotImplementedError):
        os.rename(final, backup)
    return backup


_pending: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "surgeon_pending_writes", default=None
)


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Make every :func:`write_files` call inside one transaction: their temp files are
    written as they come, and all renamed into place when the block ends without an
    error (or all removed when it raises). Nested blocks join the outer one.

    Raises:
        OutputPathError: A rename at the end failed (everything was put back).
    """
    if _pending.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        _roll_back([], pending)
        raise
    finally:
        _pending.reset(token)
    _commit(pending)


def write_files(
    items: Iterable[tuple[str | os.PathLike, Callable]], *, durable: bool = True
) -> list[Path]:
    """Write several files as one transaction: all replaced, or none.

    Each ``write(fh)`` is called on a binary temp file in its target's folder (in the
    given order, so a later writer may use what an earlier one produced); the temp files
    are fsynced, then renamed over their targets in order. If anything fails, the
    targets already replaced get their old files back and no temp file is left. Inside
    :func:`transaction`, the renames wait for the end of the block.

    Args:
        durable: fsync the files and their folders (False for scratch files that are
            deleted right after, where the flush to disk would only cost time).

    Raises:
        OutputPathError: A file cannot be written (full disk, read-only folder, ...),
            naming the path and the reason.
    """
    temps = _write_temps([(Path(p), w) for p, w in items], durable)
    pending = _pending.get()
    if pending is not None:
        pending.extend(temps)
        return [final for _, final in temps]
    return _commit(temps, durable)


def _write_temps(items: list[tuple[Path, Callable]], durable: bool) -> list[tuple[Path, Path]]:
    """Write each item to a temp file beside its target; (temp, target) pairs."""
    temps: list[tuple[Path, Path]] = []
    final = None
    try:
        for final, write in items:
            with signals_deferred():  # no window where a temp file exists unrecorded
                fd, tmp = tempfile.mkstemp(
                    prefix=temp_prefix(final.name), suffix=".tmp", dir=final.parent
                )
                temps.append((Path(tmp), final))
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.chmod(tmp, _mode_for(final))
    except OSError as e:
        _roll_back([], temps)
        raise _write_error(final, e) from None
    except BaseException:
        _roll_back([], temps)
        raise
    return temps


def _write_error(path, e: OSError) -> OutputPathError:
    return OutputPathError(f"cannot write {path}: {e.strerror or e}; nothing was written")


def _commit(temps: list[tuple[Path, Path]], durable: bool = True) -> list[Path]:
    """Rename every temp file over its target, keeping the old files aside until all
    renames succeeded; on any failure put every old file back."""
    done: list[tuple[Path, Path | None]] = []  # (target, its old file set aside)
    final = None
    try:
        with signals_deferred():
            for tmp, final in temps:
                backup = _set_aside(final)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    if backup is not None and not os.path.lexists(final):
                        os.replace(backup, final)  # it was renamed aside
                        backup = None
                    if backup is not None:
                        os.unlink(backup)
                    raise
                done.append((final, backup))
            temps = []
            for _, backup in done:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
            committed = [target for target, _ in done]
            done.clear()
    except OSError as e:
        _roll_back(done, temps)
        raise _write_error(final, e) from None
    except BaseException:
        _roll_back(done, temps)
        raise
    if durable:
        for folder in dict.fromkeys(target.parent for target in committed):
            _fsync_folder(folder)
    return committed


def _roll_back(done: list[tuple[Path, Path | None]], temps: list[tuple[Path, Path]]) -> None:
    with signals_deferred():
        for final, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, final)
                else:
                    os.unlink(final)
        done.clear()
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        temps.clear()
