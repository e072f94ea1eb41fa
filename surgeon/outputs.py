"""The files a command reads and writes, checked together before any work, and writes
that replace files as one transaction.

Every command builds one :class:`FilePlan`: the files it reads (each model and each of
its external-data files, feeds, references, custom-op libraries, recipe files) and the
files it will write (the model, the weights file it may get, reports, saved tensors).
:meth:`FilePlan.check` refuses, in one message, every write that would land on a file
read or on another write, resolving symlinks, ``..`` and hard links; it also probes each
output folder with a temp file, so a folder that cannot be written is found before the
work. :func:`write_files` then replaces all of a result's files as one unit: each is
written to a temp file and fsynced, then all are renamed into place; if a rename fails,
the files already replaced are put back.

Signals: :func:`handle_signals` (installed by the CLI) turns SIGTERM and SIGHUP into
:class:`Terminated` (a ``KeyboardInterrupt``, like Ctrl-C), so the stack unwinds and
every ``finally`` and context manager cleans up. While files are being renamed into place
(or temp files removed) a signal is held back and raised right after, so a transaction is
never left half done.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import OutputPathError

# ------------------------------------------------------------------------ signals


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised in the main thread so the stack unwinds.

    A ``KeyboardInterrupt`` so that code which already cleans up after Ctrl-C (and only
    ``BaseException`` handlers) treats it the same way.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_held: list[int] = []  # signals that arrived while deferred
_defer_depth = 0


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum, frame) -> None:
    if _defer_depth > 0:
        _held.append(signum)
        return
    _raise_for(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP (when :func:`handle_signals` is active) for a
    short critical section; the first one held is raised when it ends."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            _raise_for(signum)


def _handled_signals() -> list[int]:
    return [
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    ]


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT into KeyboardInterrupt and SIGTERM/SIGHUP into :class:`Terminated`
    for the duration (main thread only; elsewhere it does nothing), then restore the
    previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in _handled_signals():
        try:
            previous[signum] = signal.signal(signum, _handler)
        except (OSError, ValueError):  # not settable here
            pass
    try:
        yield
    finally:
        _held.clear()
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as shells report a process ended by a signal."""
    return 128 + getattr(interrupt, "signum", int(getattr(signal, "SIGINT", 2)))


# ------------------------------------------------------------------------ identities


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


def _identities(path: Path) -> set:
    """Keys under which two spellings of one file meet: the directory entry (its folder
    resolved), where a symlink leads, and the inode of an existing file (hard links)."""
    p = os.fspath(path)
    keys: set = {
        ("entry", os.path.join(os.path.realpath(os.path.dirname(p) or "."), os.path.basename(p))),
        ("entry", os.path.realpath(p)),
    }
    try:
        st = os.stat(p)
    except OSError:
        pass
    else:
        keys.add(("inode", st.st_dev, st.st_ino))
    return keys


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (through symlinks, ``..`` or hard links),
    whether or not it exists yet."""
    return bool(_identities(Path(a)) & _identities(Path(b)))


@dataclass
class _Read:
    path: Path
    what: str
    tag: tuple | None  # (group, "model" | "data"): what an --inplace write may replace


@dataclass
class _Write:
    path: Path
    what: str
    replaces: tuple | None  # the read tag this write is allowed to land on
    inplace_flag: bool  # the command has --inplace, and it would allow this write
    given: str = ""  # as spelled (Path drops a trailing "/" that says "a folder")
    probe: bool = True  # False: written only in a case not known yet (auto weights file)
    model_path: Path | None = None  # for a weights file: the model file it belongs to


class FilePlan:
    """The files one command reads and writes, checked before any work.

    Example::

        plan = FilePlan()
        plan.reads_model(model, "the input model")
        plan.writes_model("out.onnx", "-o", external_data=None)
        plan.writes("report.html", "--html")
        plan.check()  # raises OutputPathError listing every clash
    """

    def __init__(self) -> None:
        self._reads: list[_Read] = []
        self._writes: list[_Write] = []
        self._groups = 0

    # ---------------------------------------------------------------- building
    def reads(self, path: str | os.PathLike | None, what: str) -> None:
        """A file the command reads (nothing may be written over it)."""
        if path:
            self._reads.append(_Read(Path(path), what, None))

    def reads_model(self, model, what: str, *, replaceable: bool = False) -> int:
        """A model (a path, or a loaded Model) and each of its external-data files.

        Args:
            replaceable: --inplace may let a model write replace this model file (and
                its weights file replace its weights files).

        Returns:
            The model's group id, for :meth:`writes_model`'s ``replaces``.
        """
        from surgeon.model import Model

        self._groups += 1
        group = self._groups if replaceable else None
        if isinstance(model, Model):
            if model.path is None:
                return self._groups
            path, data = model.path, [model.path.parent / f for f in model.external_data_files]
        else:
            path, data = Path(model), []
        self._reads.append(_Read(path, what, (group, "model") if group else None))
        for d in data:
            self._reads.append(
                _Read(d, f"the weights of {what}", (group, "data") if group else None)
            )
        return self._groups

    def writes(self, path: str | os.PathLike | None, what: str) -> None:
        """A file the command writes."""
        if path:
            self._writes.append(_Write(Path(path), what, None, False, os.fspath(path)))

    def writes_model(
        self,
        path: str | os.PathLike | None,
        what: str,
        *,
        external_data: bool | None,
        data_name: str | None = None,
        replaces: Iterable[int] = (),
        inplace_flag: bool = False,
    ) -> None:
        """A model file and, unless ``external_data`` is False, the weights file it gets
        (``None`` means 'auto': it could switch to one, so that file is protected too).

        Args:
            replaces: Group ids (from :meth:`reads_model`) whose model file this write may
                replace (``--inplace``); its weights file may then replace theirs.
            inplace_flag: The command offers --inplace for this write (for the hint).
        """
        if not path:
            return
        given, path = os.fspath(path), Path(path)
        groups = list(replaces)
        self._writes.append(_Write(path, what, ("model", tuple(groups)), inplace_flag, given))
        if external_data is not False:
            name = data_file_name(path, data_name)
            when = (
                ""
                if external_data
                else (" (written only above 2 GB: external_data=None, --external-data auto)")
            )
            self._writes.append(
                _Write(
                    path.parent / name,
                    f"the weights file of {what}{when}",
                    ("data", tuple(groups)),
                    False,
                    os.fspath(path.parent / name),
                    # With 'auto' the weights file exists only above 2 GB: protected from
                    # clashes, but its name is checked (probed) once the choice is made.
                    probe=external_data is not None,
                    model_path=path,
                )
            )

    # ---------------------------------------------------------------- checking
    @staticmethod
    def _allowed(w: _Write, r: _Read, replaced: set) -> bool:
        """--inplace lets a model write replace a replaceable model file, and that
        model's weights file replace the weights files of the model it replaces (its
        ``replaced`` groups) only: a weights file another input shares stays read-only."""
        if w.replaces is None or r.tag is None:
            return False
        kind, groups = w.replaces
        if r.tag[1] != kind or r.tag[0] not in groups:
            return False
        return kind == "model" or r.tag[0] in replaced

    def clashes(self) -> list[tuple[_Write, object]]:
        """Every (write, read-or-write) pair naming one file."""
        found = []
        read_ids = [(r, _identities(r.path)) for r in self._reads]
        write_ids = [(w, _identities(w.path)) for w in self._writes]
        model_reads = [(r.tag[0], rid) for r, rid in read_ids if r.tag and r.tag[1] == "model"]
        for i, (w, wid) in enumerate(write_ids):
            replaced = set()
            if w.model_path is not None:
                mid = _identities(w.model_path)
                replaced = {group for group, rid in model_reads if rid & mid}
            for r, rid in read_ids:
                if wid & rid and not self._allowed(w, r, replaced):
                    found.append((w, r))
            for other, oid in write_ids[:i]:
                if wid & oid:
                    found.append((w, other))
        return found

    def check(self, *, probe: bool = True) -> None:
        """Refuse clashing writes and unwritable outputs, all listed in one error.

        Raises:
            OutputPathError: A write hits a file read or another write, an output is a
                folder, its folder is missing or cannot be written, or its name is too long.
        """
        problems = []
        hint_inplace = True
        for w, other in self.clashes():
            spelled = "" if str(w.path) == str(other.path) else f" ({w.path})"
            if isinstance(other, _Read):
                problems.append(
                    f"refusing to overwrite {other.what} {other.path} with {w.what}{spelled}"
                )
            else:
                problems.append(f"{other.what} and {w.what}{spelled} both write {other.path}")
            fixable = (
                isinstance(other, _Read)
                and w.inplace_flag
                and other.tag is not None
                and other.tag[1] == "model"
            )
            hint_inplace = hint_inplace and fixable
        if problems:
            hint = "Give each output its own path."
            if any(isinstance(other, _Read) for _, other in self.clashes()):
                hint = (
                    "Choose other output paths: an input is only replaced by the output model, "
                    "with inplace=True (--inplace on the command line)."
                )
            if hint_inplace:
                hint = (
                    "Choose another output path, or pass inplace=True (--inplace on the "
                    "command line) to replace the input model on purpose."
                )
            raise OutputPathError(
                f"refusing {len(problems)} writes that would overwrite an input or another output"
                if len(problems) > 1
                else problems[0],
                problems=problems if len(problems) > 1 else (),
                hint=hint,
            )
        if probe:
            for w in self._writes:
                problem = probe_writable(w.given or w.path) if w.probe else None
                if problem:
                    problems.append(f"{w.what}: {problem}")
            if problems:
                raise OutputPathError(
                    problems[0] if len(problems) == 1 else "cannot write the outputs",
                    problems=problems if len(problems) > 1 else (),
                )


def data_file_name(path: str | os.PathLike, data_name: str | None = None) -> str:
    """The weights file a model saved to ``path`` gets (a plain file name beside it).

    Raises:
        OutputPathError: ``data_name`` is not a plain file name.
    """
    name = data_name or Path(path).name + ".data"
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise OutputPathError(f"external data name `{name}` must be a plain file name")
    return name


def _temp_prefix(name: str) -> str:
    # Truncated: a long output name must not become too long for the file system only
    # once the temp suffix is added.
    return f".{name[:80]}."


def probe_writable(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written (as a sentence), or None: it is (or is spelled as)
    a folder, it is a device, FIFO or socket, its folder is missing, its name is too
    long, or a temp file cannot be created beside it."""
    # os.path's tests, not Path's: they answer False for a name too long to stat.
    given = os.fspath(path)
    out = Path(path)
    folder = out.parent
    if os.path.basename(given) in ("", ".", ".."):
        # Path("newdir/") is Path("newdir"): without this, a file named newdir is written.
        return f"{given} names a folder; give a file name such as {out / 'model.onnx'}"
    if not os.path.exists(folder):
        return f"cannot write {out}: the folder {folder} does not exist"
    if not os.path.isdir(folder):
        return f"cannot write {out}: {folder} is not a folder"
    limit = _name_max(str(folder))
    size = len(os.fsencode(out.name))
    if size > limit:
        return f"cannot write {out}: the file name is {size} bytes, over this file system's {limit}"
    if os.path.isdir(out):
        return f"{out} is a folder; give a file name such as {out / 'model.onnx'}"
    kind = _special_kind(out)
    if kind:
        # Files are replaced by a rename, which would put a regular file in the place of
        # /dev/null (as root) or of a FIFO another program reads.
        return f"{out} is not a regular file ({kind}); surgeon replaces files, so give a file path"
    reason = _probe(folder, out.name)
    return f"cannot write {out}: {reason} (in the folder {folder})" if reason else None


def _special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a symlink (a
    symlink itself is replaced, never what it points at)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _probe(folder: Path, name: str) -> str | None:
    """Create and remove a temp file in ``folder``; the reason it failed, or None."""
    with signals_deferred():  # a signal must not leave the probe behind
        try:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), suffix=".tmp", dir=folder)
        except OSError as e:
            return str(e.strerror or e)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return None


def probe_folder(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (created later if missing), or None:
    it is a file, or its nearest existing ancestor refuses a temp file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create the folder {folder}: {existing} is a file"
    reason = _probe(existing, "surgeon-output")
    if reason:
        where = "" if existing == folder else f" (probed in {existing}, where it would be made)"
        return f"cannot write into the folder {folder}: {reason}{where}"
    return None


# ------------------------------------------------------------------------ writing


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
    backup = Path(tempfile.mktemp(prefix=_temp_prefix(final.name), suffix=".old", dir=final.parent))
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
                    prefix=_temp_prefix(final.name), suffix=".tmp", dir=final.parent
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
