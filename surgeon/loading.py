"""Loading a model: read the file, check it is an ONNX protobuf, check its external data
(only from inside the model's folder; large tensors stay on disk, by reference) and
validate its structure."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from surgeon import embedded
from surgeon.embedded import LeftOut, skeleton_without_weights
from surgeon.errors import ModelLoadError, UnsafePathError

# Re-exported: they lived here before surgeon.external took them (the weights' readers
# need them without importing the Model class).
from surgeon.external import (  # noqa: F401
    ExternalData,
    check_external_data,
    file_stamp,
    load_external_data,
    open_regular_file,
    resolve_external_location,
)
from surgeon.model import Model, _is_repeated
from surgeon.protos import INLINE_EXTERNAL_BELOW
from surgeon.validation import check_structure


def load(path: str | os.PathLike, *, validate: bool = True, weights_on_disk: bool = False) -> Model:
    """Load and validate an ONNX model; its large tensors stay on disk.

    Every external-data reference is checked (inside the model's folder, a regular
    file, in range), but only tensors under ``INLINE_EXTERNAL_BELOW`` bytes are read:
    the weights stay in their files, where onnxruntime maps them and saving streams
    them. Large initializers embedded in the model file itself can be treated the
    same way (see ``weights_on_disk``). The files' identities are recorded; if one is
    replaced or rewritten later, running or saving the model refuses it rather than
    read other bytes.

    Args:
        path: The ``.onnx`` file. External data locations are resolved relative to its
            folder and must stay inside it.
        validate: Check the graph's structure (defined inputs, produced outputs, no
            duplicate producers, no cycles, a known opset). Problems are collected and
            reported together.
        weights_on_disk: Leave the embedded initializers of at least
            ``embedded.ON_DISK_FROM`` bytes in the model file, as external-data
            references into it (:mod:`surgeon.embedded`), instead of in memory: no
            copy of them in Python, and onnxruntime reads them from the file. The
            model file then counts as a weights file: replaced after loading, it is
            refused (load again). Off by default: the proto then no longer stands
            alone (``onnx.save(model.proto, ...)`` elsewhere would point into this
            file); surgeon's debug, inspect and diff commands turn it on.

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
        stamp = file_stamp(os.fstat(fh.fileno()))
        try:
            data = fh.read()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the file ({e.strerror})") from None
    if not data:
        raise ModelLoadError(f"{path} is empty, not an ONNX model")
    self_target = _self_reference(p) if weights_on_disk else None
    proto, left_out = _parse_skeleton(data) if self_target is not None else (None, [])
    if proto is None:
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
    # An absolute folder: a later chdir must not move where the references point.
    model = Model(proto, p, data.files, p.parent.absolute())
    model.external_stamps = dict(data.stamps)
    if left_out:
        # After the check above: these references were read off the file itself, and
        # the file is the model's own, not one of its side files.
        for entry in left_out:
            t = proto.graph.initializer[entry.index]
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value=self_target[1])
            t.external_data.add(key="offset", value=str(entry.offset))
            t.external_data.add(key="length", value=str(entry.length))
        # The identity from before the read: a file changed while it was read no
        # longer matches, and is refused when the weights are first needed.
        model.external_stamps[str(self_target[0])] = stamp
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


def _self_reference(p: Path) -> tuple[Path, str] | None:
    """The model file resolved, and the location naming it from inside its own folder
    (None where there is none: a symlink to another folder, a name the check refuses, a
    name that is not UTF-8)."""
    try:
        target = resolve_external_location(p.name, p.parent, str(p))
        if target != p.resolve():
            return None
        # The file itself, not a link to it: a link re-pointed later must not be read,
        # and onnx refuses to read external data through a symlink.
        location = target.relative_to(p.parent.resolve()).as_posix()
        location.encode("utf-8")
        resolve_external_location(location, p.parent, str(p))
    except (UnsafePathError, OSError, ValueError):  # UnicodeEncodeError is a ValueError
        return None
    return target, location


def _parse_skeleton(data: bytes) -> tuple[onnx.ModelProto | None, list[LeftOut]]:
    """``data`` parsed without its large embedded weights, and where they lie in it
    ((None, []) when it cannot be: the caller parses ``data`` whole)."""
    found = skeleton_without_weights(data, embedded.ON_DISK_FROM)
    if found is None:
        return None, []
    skeleton, left_out = found
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(skeleton)
    except (DecodeError, RuntimeError, ValueError):
        return None, []
    initializers = proto.graph.initializer
    for entry in left_out:
        if entry.index >= len(initializers):
            return None, []
        t = initializers[entry.index]
        if t.name != entry.name or t.HasField("raw_data") or t.external_data:
            return None, []
    return proto, left_out


# Message class -> names of its (single text, repeated text, single message, repeated
# message) fields; keyed by class, not descriptor name: the walk below looks it up for
# every message of the model.
_TEXT_PLANS: dict[type, tuple[tuple[str, ...], ...]] = {}


def _text_plan(message) -> tuple[tuple[str, ...], ...]:
    """(single text, repeated text, single message, repeated message) field names of
    ``message``'s type."""
    plan = _TEXT_PLANS.get(type(message))
    if plan is None:
        fields = message.DESCRIPTOR.fields
        texts = [f for f in fields if f.type == f.TYPE_STRING]
        messages = [f for f in fields if f.message_type is not None]
        plan = _TEXT_PLANS[type(message)] = (
            tuple(f.name for f in texts if not _is_repeated(f)),
            tuple(f.name for f in texts if _is_repeated(f)),
            tuple(f.name for f in messages if not _is_repeated(f)),
            tuple(f.name for f in messages if _is_repeated(f)),
        )
    return plan


def _has_non_utf8(message) -> bool:
    """Whether any text field below ``message`` is not valid UTF-8: the fast check that
    runs on every load (no paths are built, and bytes fields such as raw_data are never
    read, so no weight is copied)."""
    stack = [message]
    while stack:
        m = stack.pop()
        one_text, many_texts, one_message, many_messages = _text_plan(m)
        for name in one_text:
            if type(getattr(m, name)) is bytes:
                return True
        for name in many_texts:
            if bytes in map(type, getattr(m, name)):  # no Python loop per name
                return True
        for name in one_message:
            if m.HasField(name):
                stack.append(getattr(m, name))
        for name in many_messages:
            stack.extend(getattr(m, name))
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
