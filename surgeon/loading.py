"""Loading a model: read the file, check it is an ONNX protobuf, check its external data
(only from inside the model's folder; large tensors stay on disk, by reference) and
validate its structure."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from surgeon.errors import ModelLoadError, UnsafePathError
from surgeon.model import Model, _is_repeated, iter_all_tensors
from surgeon.protos import INLINE_EXTERNAL_BELOW
from surgeon.validation import check_structure


def load(path: str | os.PathLike, *, validate: bool = True) -> Model:
    """Load and validate an ONNX model; its large external tensors stay on disk.

    Every external-data reference is checked (inside the model's folder, a regular
    file, in range), but only tensors under ``INLINE_EXTERNAL_BELOW`` bytes are read:
    the weights stay in their files, where onnxruntime maps them and saving streams
    them. The files' identities are recorded; if one is replaced or rewritten later,
    running or saving the model refuses it rather than read other bytes.

    Args:
        path: The ``.onnx`` file. External data locations are resolved relative to its
            folder and must stay inside it.
        validate: Check the graph's structure (defined inputs, produced outputs, no
            duplicate producers, no cycles, a known opset). Problems are collected and
            reported together.

    Raises:
        ModelLoadError: The file is missing, not an ONNX protobuf, truncated, its external
            data is missing or unsafe, or its graph is malformed.
    """
    p = Path(path)
    if not p.exists():
        hint = None
        if p.parent.is_dir():
            siblings = [c.name for c in p.parent.iterdir() if c.suffix == ".onnx"]
            from surgeon.errors import did_you_mean

            hint = did_you_mean(p.name, siblings)
            hint = hint[0].upper() + hint[1:] if hint else None
        raise ModelLoadError(f"{path}: no such file", hint=hint)
    if p.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX model file")
    fh, size = open_regular_file(p, "an ONNX model", ModelLoadError)
    with fh:
        if size > 2**31:
            # protobuf cannot parse a message above 2 GiB: reading it all would only
            # cost the memory before the same failure.
            raise ModelLoadError(
                f"{path} is {size / 2**30:.1f} GiB, more than an ONNX file can hold (2 GiB); "
                "it is not an ONNX model, or its weights belong in an external data file"
            )
        try:
            data = fh.read()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the file ({e.strerror})") from None
    if not data:
        raise ModelLoadError(f"{path} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{path} is not a readable ONNX model: the protobuf does not parse ({e}). "
            "The file may be truncated, corrupted, or not an ONNX file at all."
        ) from None
    del data
    garbled = non_utf8_fields(proto)
    if garbled:
        raise ModelLoadError(
            f"{path} is damaged: {len(garbled)} text field(s) are not valid UTF-8",
            problems=garbled[:10]
            + ([f"... and {len(garbled) - 10} more"] if len(garbled) > 10 else []),
            hint="The file was corrupted (flipped bytes); re-export or re-download it.",
        )
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(
            f"{path} parsed as protobuf but holds no ONNX graph; it is truncated or not an ONNX model"
        )
    # Large tensors stay in their files (checked, not read): onnxruntime maps them and
    # saving streams them, so no step holds a second copy of the weights in Python.
    data = check_external_data(proto, p.parent, str(path), inline_below=INLINE_EXTERNAL_BELOW)
    model = Model(proto, p, data.files)
    model.external_stamps = dict(data.stamps)
    if validate:
        problems = check_structure(proto)
        if problems:
            raise ModelLoadError(
                f"{path} is not a valid ONNX model ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
                problems=problems[:20]
                + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []),
                hint="The file may be truncated or was edited by a tool that broke the graph.",
            )
    return model


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


_TEXT_PLANS: dict[str, tuple[tuple[str, bool], ...]] = {}


def _text_plan(descriptor) -> tuple[tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]]:
    """(string fields, message fields) of a message type, each as (name, repeated)."""
    plan = _TEXT_PLANS.get(descriptor.full_name)
    if plan is None:
        strings = tuple(
            (f.name, _is_repeated(f)) for f in descriptor.fields if f.type == f.TYPE_STRING
        )
        messages = tuple(
            (f.name, _is_repeated(f)) for f in descriptor.fields if f.message_type is not None
        )
        plan = _TEXT_PLANS[descriptor.full_name] = (strings, messages)
    return plan


def _has_non_utf8(message) -> bool:
    """Whether any text field below ``message`` is not valid UTF-8: the fast check that
    runs on every load (no paths are built, and bytes fields such as raw_data are never
    read, so no weight is copied)."""
    stack = [message]
    while stack:
        m = stack.pop()
        strings, messages = _text_plan(m.DESCRIPTOR)
        for name, repeated in strings:
            value = getattr(m, name)
            if repeated:
                if any(isinstance(v, bytes) for v in value):
                    return True
            elif isinstance(value, bytes):
                return True
        for name, repeated in messages:
            if repeated:
                stack.extend(getattr(m, name))
            elif m.HasField(name):
                stack.append(getattr(m, name))
    return False


def non_utf8_fields(message, where: str = "model") -> list[str]:
    """Text fields of ``message`` (recursively) that are not valid UTF-8, as readable
    paths. onnx.proto is proto2, so protobuf does not check its strings when parsing; the
    upb backend then hands invalid ones out as bytes, which no name lookup expects."""
    if where == "model" and not _has_non_utf8(message):
        return []  # the common case, without building a path for every message
    found: list[str] = []
    for field, value in message.ListFields():
        values = value if _is_repeated(field) else [value]
        if field.type == field.TYPE_STRING:
            for i, v in enumerate(values):
                if isinstance(v, bytes):
                    index = f"[{i}]" if _is_repeated(field) else ""
                    found.append(f"{where}.{field.name}{index} = {v[:40]!r}")
        elif field.message_type is not None:
            for i, v in enumerate(values):
                index = f"[{i}]" if _is_repeated(field) else ""
                found += non_utf8_fields(v, f"{where}.{field.name}{index}")
    return found


def _external_fields(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def resolve_external_location(location: str, base_dir: Path, where: str) -> Path:
    """Resolve an external data ``location`` safely inside ``base_dir``.

    Refuses absolute paths, ``..`` components and anything that resolves (through
    symlinks) outside the model's folder.
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
    base = base_dir.resolve()
    target = (base / loc).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(
            f"{where}: external data location `{location}` resolves to {target}, outside the model's folder {base} (through a symlink)",
            hint="Copy the data file into the model's folder instead of linking to it.",
        )
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
    proto: onnx.ModelProto, base_dir: Path, where: str, *, inline_below: int | None = None
) -> ExternalData:
    """Check every external tensor of ``proto``; read into memory those under ``inline_below``.

    Every reference, wherever the tensor lives (sparse-tensor attributes, subgraphs,
    functions), is checked: its location resolves inside ``base_dir`` (see
    :func:`resolve_external_location`), names a regular file, and its byte range lies
    inside that file. Tensors of at least ``inline_below`` bytes keep their reference
    (their data is left on disk for onnxruntime to map and for saving to stream); the
    others are read into ``raw_data`` (None: every tensor is read, as before a model
    could keep references).

    Raises:
        UnsafePathError: A location is absolute, climbs out with ``..`` or resolves
            outside ``base_dir`` through a symlink.
        ModelLoadError: A file is missing, not a regular file, or too short (all such
            problems are collected, then reported once).
    """
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
            target = resolve_external_location(location, base_dir, where)
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
