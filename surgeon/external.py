"""External data, checked: where a tensor's bytes are, and reading them only from there.

The low level under :mod:`surgeon.loading` (which checks every reference when a model is
loaded), :mod:`surgeon.weights` and :mod:`surgeon.saving` (which read the bytes later).
It knows no Model: a :class:`WeightSource` says which folder, which files (by identity)
and which name for messages, so that the Model class can use it without an import
circle.

Every read checks again that the location stays inside the folder and that the file is
the one the model was loaded with (same device, inode, size and mtime): a weights file
replaced since (for example by an in-place save) is refused, never read as if its bytes
still meant what the references say.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from surgeon.errors import ModelLoadError, UnsafePathError
from surgeon.protos import iter_all_tensors

# Streaming copies move this much at a time: large enough for full-speed I/O, small
# against any model whose weights matter.
CHUNK = 16 * 2**20


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def open_regular_file(path: str | os.PathLike, what: str, error=ModelLoadError):
    """Open ``path`` for reading only if it is a regular file; return ``(file, size)``.

    A FIFO would block the open (or the read) forever and a device such as /dev/zero
    never ends, so neither may be read as a model, a data file or an ``.npz``. The file
    is opened with O_NONBLOCK (a FIFO opens at once instead of waiting for a writer),
    then checked with fstat on the open descriptor, so nothing can swap the file between
    the check and the read.

    Args:
        path: The file.
        what: What the file should be, for the message ("an ONNX model").
        error: The SurgeonError subclass to raise.

    Raises:
        error: The file is missing, unreadable, or not a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((k for test, k in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise error(
                f"{path} is {kind}, not {what}; only regular files are read",
                hint="Copy the data into a regular file and pass that.",
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _external_fields(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def resolve_external_location(
    location: str, base_dir: Path, where: str, *, resolved: dict | None = None
) -> Path:
    """Resolve an external data ``location`` safely inside ``base_dir``.

    Refuses absolute paths, ``..`` components and anything that resolves (through
    symlinks) outside the model's folder.

    Args:
        resolved: A memo for one check of many tensors: each (location, folder) is
            resolved through the file system once per check instead of once per
            tensor (a resolution costs an lstat per path component; a model's tensors
            share one or a few files). The text checks run for every call.
    """
    if not location:
        raise UnsafePathError(f"{where}: a tensor has external data with an empty location")
    if "\0" in location:
        # No file name holds a NUL byte; the OS would refuse it (ValueError in Python).
        raise UnsafePathError(
            f"{where}: external data location {location!r} contains a NUL byte; "
            "the file is corrupted or crafted"
        )
    loc = location.replace("\\", "/")
    if os.path.isabs(location) or loc.startswith("/") or (len(loc) > 1 and loc[1] == ":"):
        raise UnsafePathError(
            f"{where}: external data location `{location}` is an absolute path; "
            "locations must be relative to the model's folder",
            hint="Move the data file next to the model and rewrite its location.",
        )
    if ".." in loc.split("/"):
        raise UnsafePathError(
            f"{where}: external data location `{location}` climbs out of the model's folder with `..`",
            hint="Move the data file next to the model and rewrite its location.",
        )
    key = (loc, base_dir)
    if resolved is not None and key in resolved:
        return resolved[key]
    base = base_dir.resolve()
    target = (base / loc).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(
            f"{where}: external data location `{location}` resolves to {target}, outside the model's folder {base} (through a symlink)",
            hint="Copy the data file into the model's folder instead of linking to it.",
        )
    if resolved is not None:
        resolved[key] = target
    return target


@dataclass(frozen=True)
class ExternalData:
    """What checking a model's external data found.

    Attributes:
        files: Relative names of the side files its tensors point into (first use order).
        stamps: Resolved side file -> (device, inode, size, mtime in ns) when it was
            checked: a file that no longer matches was replaced or rewritten, and the
            references into it no longer mean what they meant.
    """

    files: tuple[str, ...]
    stamps: Mapping[str, tuple[int, int, int, int]]


def file_stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    """The identity of a file's content as far as the OS tells without reading it."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def check_external_data(
    proto: onnx.ModelProto,
    base_dir: Path,
    where: str,
    *,
    inline_below: int | None = None,
    resolved: dict | None = None,
) -> ExternalData:
    """Check every external tensor of ``proto``; read into memory those under ``inline_below``.

    Every reference, wherever the tensor lives (sparse-tensor attributes, subgraphs,
    functions), is checked: its location resolves inside ``base_dir`` (see
    :func:`resolve_external_location`), names a regular file, and its byte range lies
    inside that file. Tensors of at least ``inline_below`` bytes keep their reference
    (their data is left on disk for onnxruntime to map and for saving to stream); the
    others are read into ``raw_data`` (None: every tensor is read, as before a model
    could keep references).

    ``resolved``: the memo of :func:`resolve_external_location` to share with a caller
    that resolved the same locations in the same check (a new one otherwise).

    Raises:
        UnsafePathError: A location is absolute, climbs out with ``..`` or resolves
            outside ``base_dir`` through a symlink.
        ModelLoadError: A file is missing, not a regular file, or too short (all such
            problems are collected, then reported once).
    """
    resolved = {} if resolved is None else resolved
    problems: list[str] = []
    handles: dict[Path, object] = {}
    sizes: dict[Path, int] = {}
    stamps: dict[str, tuple[int, int, int, int]] = {}
    used: list[str] = []
    try:
        # Every place a tensor can live (sparse-tensor attributes, subgraphs, functions):
        # none may keep an external reference that a runtime would resolve against the
        # current folder.
        for t in iter_all_tensors(proto):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            fields = _external_fields(t)
            location = fields.get("location", "")
            target = resolve_external_location(location, base_dir, where, resolved=resolved)
            if location not in used:
                used.append(location)
            if target not in handles:
                if not target.exists() or target.is_dir():
                    problems.append(
                        f"tensor `{t.name}`: external data file `{location}` is missing (looked in {base_dir})"
                        + (": that name is a folder" if target.is_dir() else "")
                    )
                    handles[target] = None
                    continue
                try:
                    handles[target], sizes[target] = open_regular_file(
                        target, "an external data file", ModelLoadError
                    )
                except ModelLoadError as e:
                    problems.append(f"tensor `{t.name}`: {e.message}")
                    handles[target] = None
                    continue
                stamps[str(target)] = file_stamp(os.fstat(handles[target].fileno()))
            fh = handles[target]
            if fh is None:
                continue
            try:
                offset = int(fields.get("offset", "0") or 0)
                length = int(fields["length"]) if fields.get("length") else sizes[target] - offset
            except ValueError:
                problems.append(f"tensor `{t.name}`: external data offset/length are not integers")
                continue
            if offset < 0 or length < 0 or offset + length > sizes[target]:
                problems.append(
                    f"tensor `{t.name}`: external data [{offset}, {offset + length}) lies past the end "
                    f"of `{location}` ({sizes[target]} bytes); the data file is truncated or does not belong to this model"
                )
                continue
            if inline_below is not None and length >= inline_below:
                # Kept on disk; its length is written down so that sizes never need the
                # file (onnx allows leaving it out: "to the end of the file").
                if not fields.get("length"):
                    t.external_data.add(key="length", value=str(length))
                continue
            fh.seek(offset)
            t.raw_data = fh.read(length)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    finally:
        for fh in handles.values():
            if fh is not None:
                fh.close()
    if problems:
        raise ModelLoadError(f"{where}: cannot read its external data", problems=problems)
    return ExternalData(tuple(used), stamps)


def load_external_data(proto: onnx.ModelProto, base_dir: Path, where: str) -> list[str]:
    """Read every external tensor of ``proto`` into memory; return the files used."""
    return list(check_external_data(proto, base_dir, where).files)


# ---------------------------------------------------------------------- reading later
@dataclass(frozen=True)
class WeightSource:
    """Where a model's external tensors are read from after loading.

    Attributes:
        folder: The folder locations are relative to (None: the model has none).
        name: The model's name, for messages.
        stamps: Resolved file -> its identity at load time (:func:`file_stamp`); a file
            listed here that no longer matches is refused.
    """

    folder: Path | None
    name: str
    stamps: Mapping[str, tuple[int, int, int, int]] = field(default_factory=dict)


def is_external(t: onnx.TensorProto) -> bool:
    """Whether ``t`` keeps its values in an external data file."""
    return t.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(proto) -> list[onnx.TensorProto]:
    """Every tensor of ``proto``, wherever it lives, whose values are in a side file."""
    return [t for t in iter_all_tensors(proto) if is_external(t)]


def _no_folder(source: WeightSource, t: onnx.TensorProto) -> ModelLoadError:
    return ModelLoadError(
        f"{source.name}: tensor `{t.name}` keeps its values in an external data file, "
        "but the model was not loaded from a file, so there is no folder to read it from",
        hint="Load the model with surgeon.load(path), which reads its external data from the model's folder.",
    )


def check_stamp(source: WeightSource, target: Path, *, checked: set | None = None) -> None:
    """Refuse ``target`` if it is not the file ``source`` was loaded with.

    ``checked``: files found unchanged already in this check (one stat per file, not
    per tensor); ``target`` is added once it passes.
    """
    if checked is not None and target in checked:
        return
    expected = source.stamps.get(str(target))
    if expected is None:
        return
    try:
        now = file_stamp(target.stat())
    except OSError:
        now = None
    if now != expected:
        what = "was deleted" if now is None else "was replaced or changed"
        raise ModelLoadError(
            f"{source.name}: its weights file {target.name} {what} since the model was "
            "loaded; its external data references no longer describe it",
            hint="Load the model again (surgeon.load) to use the file as it is now.",
        )
    if checked is not None:
        checked.add(target)


def locate(
    source: WeightSource,
    t: onnx.TensorProto,
    *,
    resolved: dict | None = None,
    checked: set | None = None,
) -> tuple[Path, int, int]:
    """(file, offset, length) of ``t``'s bytes, checked: inside the folder and the file
    it was loaded with. ``resolved`` and ``checked``: memos of one check of many
    tensors (see :func:`resolve_external_location` and :func:`check_stamp`)."""
    if source.folder is None:
        raise _no_folder(source, t)
    fields = _external_fields(t)
    target = resolve_external_location(
        fields.get("location", ""), source.folder, source.name, resolved=resolved
    )
    check_stamp(source, target, checked=checked)
    try:
        offset = int(fields.get("offset", "0") or 0)
        length = int(fields["length"]) if fields.get("length") else None
    except ValueError:
        raise ModelLoadError(
            f"{source.name}: tensor `{t.name}`: external data offset/length are not integers"
        ) from None
    if length is None:
        length = target.stat().st_size - offset
    return target, offset, length


def check_references(source: WeightSource, proto) -> list[onnx.TensorProto]:
    """Check every external reference of ``proto`` before a runtime reads it; return the
    external tensors. Nothing is read.

    Raises:
        ModelLoadError: No folder, a file changed since loading, missing, or too short
            (collected, reported once).
        UnsafePathError: A location leaves the folder.
    """
    tensors = external_tensors(proto)
    if not tensors:
        return tensors
    # One check: each location is resolved, and each file's identity compared, once
    # (every tensor's text checks, range and length still run).
    resolved: dict = {}
    checked: set = set()
    for t in tensors:
        # inside the folder, and the file it was loaded with
        locate(source, t, resolved=resolved, checked=checked)
    probe = onnx.ModelProto()
    probe.graph.initializer.extend(_stub(t) for t in tensors)
    check_external_data(probe, source.folder, source.name, inline_below=0, resolved=resolved)
    return tensors


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    stub.external_data.extend(t.external_data)
    return stub


def _truncated(source: WeightSource, target: Path, t: onnx.TensorProto) -> ModelLoadError:
    return ModelLoadError(
        f"{source.name}: its weights file {target.name} ended before tensor `{t.name}` did; "
        "it was truncated"
    )


def copy_tensor_data(source: WeightSource, t: onnx.TensorProto, fh) -> int:
    """Stream ``t``'s external bytes into the binary file ``fh`` a chunk at a time;
    return the count."""
    target, offset, length = locate(source, t)
    data, _ = open_regular_file(target, "an external data file", ModelLoadError)
    with data:
        data.seek(offset)
        left = length
        while left:
            chunk = data.read(min(CHUNK, left))
            if not chunk:
                raise _truncated(source, target, t)
            fh.write(chunk)
            left -= len(chunk)
    return length


def read_tensor_data(source: WeightSource, t: onnx.TensorProto) -> bytes:
    """``t``'s external bytes, read into memory."""
    target, offset, length = locate(source, t)
    data, _ = open_regular_file(target, "an external data file", ModelLoadError)
    with data:
        data.seek(offset)
        raw = data.read(length)
    if len(raw) != length:
        raise _truncated(source, target, t)
    return raw


def inline_tensor(source: WeightSource, t: onnx.TensorProto) -> None:
    """Read ``t``'s external bytes into its ``raw_data``, in place."""
    raw = read_tensor_data(source, t)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = raw


def inline_all(source: WeightSource, proto) -> None:
    """Read every external tensor of ``proto`` into memory, in place (checked first)."""
    for t in check_references(source, proto):
        inline_tensor(source, t)


def tensor_array(source: WeightSource, t: onnx.TensorProto) -> np.ndarray:
    """``t``'s values as numpy, its external bytes read from ``source``'s folder.

    (``onnx.numpy_helper.to_array`` would look for them in the current folder.)
    """
    if not is_external(t):
        return onnx.numpy_helper.to_array(t)
    copy = _stub(t)
    inline_tensor(source, copy)
    return onnx.numpy_helper.to_array(copy)


_FOLDER_VALUES = None


def _folder_values():
    """A LazyValues subclass that reads external bytes from a WeightSource (built once,
    when onnx-graphsurgeon is first needed)."""
    global _FOLDER_VALUES
    if _FOLDER_VALUES is None:
        from onnx_graphsurgeon.ir.tensor import LazyValues

        class FolderValues(LazyValues):
            """Lazy values of an external tensor, loaded from its model's folder."""

            def __init__(self, tensor, source: WeightSource):
                super().__init__(tensor)
                self.source = source

            def load(self):
                return np.array(tensor_array(self.source, self.tensor))

        _FOLDER_VALUES = FolderValues
    return _FOLDER_VALUES


def bind_lazy_values(graph, source: WeightSource) -> None:
    """Make the external constants of an imported onnx-graphsurgeon graph (subgraphs
    included) load from ``source``'s folder; onnx-graphsurgeon would read them from the
    current folder. Exported again, they stay the same references (nothing is read)."""
    from onnx_graphsurgeon.ir.tensor import Constant, LazyValues

    cls = _folder_values()
    stack, seen = [graph], set()
    while stack:
        g = stack.pop()
        if id(g) in seen:
            continue
        seen.add(id(g))
        for tensor in g.tensors().values():
            values = getattr(tensor, "_values", None)
            if (
                isinstance(tensor, Constant)
                and isinstance(values, LazyValues)
                and not isinstance(values, cls)
                and isinstance(values.tensor, onnx.TensorProto)
                and is_external(values.tensor)
            ):
                tensor._values = cls(values.tensor, source)
        for node in g.nodes:
            for attr in node.attrs.values():
                subgraphs = attr if isinstance(attr, (list, tuple)) else [attr]
                stack.extend(a for a in subgraphs if hasattr(a, "tensors") and hasattr(a, "nodes"))
