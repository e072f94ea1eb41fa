"""Saving a model atomically (temp file, then rename), with external data when needed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx

from surgeon.errors import OutputPathError
from surgeon.model import (
    EXTERNAL_THRESHOLD,
    PROTO_LIMIT,
    Model,
    _is_repeated,
    iter_tensors,
    tensor_nbytes,
)


def _umask_mode() -> int:
    """The mode a plainly created file gets (mkstemp's 0600 would hide saved models)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_path(
    path: str | os.PathLike, inputs: Iterable[Model | str | os.PathLike], *, inplace: bool = False
) -> Path:
    """Check that ``path`` can be written and would not overwrite an input.

    Raises:
        OutputPathError: The folder does not exist, the path is a folder, or it is one of
            the inputs (or their external data files) and ``inplace`` is not set.
    """
    out = Path(path)
    if out.is_dir():
        raise OutputPathError(
            f"output path {out} is a folder; give a file name such as {out / 'model.onnx'}"
        )
    if not out.parent.exists():
        raise OutputPathError(f"cannot write {out}: the folder {out.parent} does not exist")
    if not inplace:
        for item in inputs:
            if isinstance(item, Model):
                src_paths = []
                if item.path is not None:
                    src_paths.append(item.path)
                    src_paths += [item.path.parent / f for f in item.external_data_files]
            else:
                src_paths = [Path(item)]
            for src in src_paths:
                if _same_file(out, src) or out.resolve() == src.resolve():
                    raise OutputPathError(
                        f"refusing to overwrite the input {src} with the output",
                        hint="Choose another -o/--output path, or pass --inplace to replace the input on purpose.",
                    )
    return out


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    data_name: str | None = None,
    inplace: bool = False,
) -> Path:
    """Write ``model`` to ``path`` atomically (temp file, then rename).

    Args:
        external_data: Write weights to a side file. ``None`` (default) does so only when
            the model would pass protobuf's 2 GB limit.
        data_name: The side file's name (default ``<model file name>.data``), next to
            ``path``.
        inplace: Allow ``path`` to be the model's own source file.

    Raises:
        OutputPathError: The path cannot be written or would overwrite the input.
    """
    out = check_output_path(path, [model], inplace=inplace)
    if external_data is None:
        external_data = model.weight_bytes() + 16 * 2**20 > PROTO_LIMIT
    folder = out.parent
    tmp_files: list[Path] = []
    try:
        if external_data:
            data_name = data_name or out.name + ".data"
            if "/" in data_name or "\\" in data_name or data_name in ("", ".", ".."):
                raise OutputPathError(f"external data name `{data_name}` must be a plain file name")
            data_final = folder / data_name
            if not inplace:
                check_output_path(data_final, [model])
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=folder)
            tmp_files.append(Path(tmp_data))
            with os.fdopen(fd, "wb") as fh:
                skeleton = external_copy(model.proto, fh, data_name)
            payload = skeleton.SerializeToString()
            del skeleton
        else:
            try:
                payload = model.proto.SerializeToString()
            except ValueError as e:  # protobuf refuses > 2 GB
                raise OutputPathError(
                    f"cannot write {out} as a single file: {e}", hint="Save with external data."
                ) from None
        fd, tmp_model = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
        tmp_files.append(Path(tmp_model))
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        del payload
        for f in tmp_files:
            os.chmod(f, _umask_mode())
        if external_data:
            os.replace(tmp_files[0], data_final)
        os.replace(tmp_model, out)
        tmp_files.clear()
    except OSError as e:
        raise OutputPathError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        for f in tmp_files:
            try:
                f.unlink()
            except OSError:
                pass
    return out


# The fields of a TensorProto that hold its values (or say where they are).
_TENSOR_DATA_FIELDS = frozenset(
    {
        "raw_data",
        "float_data",
        "int32_data",
        "string_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "external_data",
        "data_location",
    }
)


def _copy_fields(src, dst, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Copy every set field of ``src`` into ``dst`` except those named in ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if _is_repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


class _DataWriter:
    """Appends tensor bytes to an external data file, page-aligned."""

    def __init__(self, fh, location: str):
        self.fh, self.location, self.offset = fh, location, 0

    def wants(self, t: onnx.TensorProto) -> bool:
        """True for tensors that go to the file: in memory, at least EXTERNAL_THRESHOLD
        bytes, not strings (which have no raw byte layout)."""
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return False
        if t.raw_data:
            return len(t.raw_data) >= EXTERNAL_THRESHOLD
        return tensor_nbytes(t) >= EXTERNAL_THRESHOLD and t.data_type != onnx.TensorProto.STRING

    def write(self, source: onnx.TensorProto, target: onnx.TensorProto) -> None:
        """Write ``source``'s bytes and make ``target`` (a copy of it, or ``source`` itself
        when it is already a copy) point at them."""
        # Typed fields (float_data, ...) become raw bytes in the file.
        data = source.raw_data or onnx.numpy_helper.to_array(source).tobytes()
        pad = (-self.offset) % 4096  # page-aligned, so runtimes can mmap each tensor
        if pad:
            self.fh.write(b"\0" * pad)
            self.offset += pad
        self.fh.write(data)
        for name in _TENSOR_DATA_FIELDS:
            target.ClearField(name)
        target.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (
            ("location", self.location),
            ("offset", str(self.offset)),
            ("length", str(len(data))),
        ):
            target.external_data.add(key=k, value=v)
        self.offset += len(data)


def external_copy(proto: onnx.ModelProto, fh, location: str) -> onnx.ModelProto:
    """A copy of ``proto`` whose large tensors live in ``fh`` (written here) under the
    name ``location``; ``proto`` itself is not modified.

    The main graph's initializers, where the weights of real models are, are never
    copied: each one's bytes go straight to ``fh`` and the copy gets a stub pointing at
    them, so the peak memory is the model plus one tensor. (With protobuf's upb backend,
    memory a message gives up with ClearField stays in its arena until the whole message
    is freed: clearing weights in place and restoring them would cost two more copies.)
    Tensors elsewhere (Constant nodes, If/Loop bodies, functions) are copied, then moved.
    """
    writer = _DataWriter(fh, location)
    skeleton = onnx.ModelProto()
    _copy_fields(proto, skeleton, skip={"graph"})
    _copy_fields(proto.graph, skeleton.graph, skip={"initializer"})
    for t in proto.graph.initializer:
        stub = skeleton.graph.initializer.add()
        if writer.wants(t):
            _copy_fields(t, stub, skip=_TENSOR_DATA_FIELDS)
            writer.write(t, stub)
        else:
            stub.CopyFrom(t)
    for t in iter_tensors(skeleton):
        if writer.wants(t):
            writer.write(t, t)
    return skeleton
