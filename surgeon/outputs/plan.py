"""The files a command reads and writes, checked together before any work
(:class:`FilePlan`), and the probes that find an unwritable output before the work."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import OutputPathError
from surgeon.outputs.signals import signals_deferred
from surgeon.outputs.writing import temp_prefix


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
        self._groups += 1
        group = self._groups if replaceable else None
        if not isinstance(model, (str, os.PathLike)):  # a loaded Model
            # Its weights files are read for as long as it lives (they stay on disk),
            # also for a model built in memory from another's tensors (a merge).
            folder = model.data_dir
            data = [folder / f for f in model.external_data_files] if folder is not None else []
            if model.path is None:
                for d in data:
                    self._reads.append(_Read(d, f"the weights of {what}", None))
                return self._groups
            path = model.path
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
                else (
                    " (written only above 2 GB: external_data=None, "
                    "--external-data auto on the command line)"
                )
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
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
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
