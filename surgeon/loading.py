"""Loading a model: read the file, check it is an ONNX protobuf, read its external data
(only from inside the model's folder) and validate its structure."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from surgeon.errors import ModelLoadError, UnsafePathError
from surgeon.model import Model, _is_repeated, iter_tensors
from surgeon.validation import check_structure


def load(path: str | os.PathLike, *, validate: bool = True) -> Model:
    """Load and validate an ONNX model, reading its external data into memory.

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
    try:
        data = p.read_bytes()
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
    files = load_external_data(proto, p.parent, str(path))
    model = Model(proto, p, files)
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


def non_utf8_fields(message, where: str = "model") -> list[str]:
    """Text fields of ``message`` (recursively) that are not valid UTF-8, as readable
    paths. onnx.proto is proto2, so protobuf does not check its strings when parsing; the
    upb backend then hands invalid ones out as bytes, which no name lookup expects."""
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


def load_external_data(proto: onnx.ModelProto, base_dir: Path, where: str) -> list[str]:
    """Read every external tensor of ``proto`` into memory; return the files used."""
    problems: list[str] = []
    handles: dict[Path, object] = {}
    sizes: dict[Path, int] = {}
    used: list[str] = []
    try:
        for t in iter_tensors(proto):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            fields = _external_fields(t)
            location = fields.get("location", "")
            target = resolve_external_location(location, base_dir, where)
            if location not in used:
                used.append(location)
            if target not in handles:
                if not target.is_file():
                    problems.append(
                        f"tensor `{t.name}`: external data file `{location}` is missing (looked in {base_dir})"
                    )
                    handles[target] = None
                    continue
                handles[target] = open(target, "rb")  # noqa: SIM115 - closed below
                sizes[target] = target.stat().st_size
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
    return used
