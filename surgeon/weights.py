"""Weights that stay on disk: the one place that reads a model's external data after loading.

:func:`surgeon.load` checks every external-data reference and leaves large tensors in
their files (``data_location`` EXTERNAL). Whatever needs their bytes later comes here:

- onnxruntime is handed the model's skeleton plus the folder to resolve locations in
  (:func:`session_folder`); it maps the files itself, so no step copies the weights into
  Python (onnxruntime 1.32, measured: a session built from a skeleton and that folder
  costs what a session built from the file path costs);
- saving streams each tensor from its file into the new weights file
  (:func:`copy_tensor_data`), a chunk at a time;
- code that needs values (constant folding, float16 conversion) reads a tensor
  (:func:`tensor_array`) or the whole model (:func:`inline_external_data`).

Each read checks again that the location stays inside the model's folder and that the
file is the one the model was loaded with (same device, inode, size and mtime): a weights
file replaced since (for example by an in-place save) is refused, never read as if its
bytes still meant what the references say.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from surgeon.errors import ModelLoadError
from surgeon.loading import (
    check_external_data,
    file_stamp,
    open_regular_file,
    resolve_external_location,
)
from surgeon.model import Model, iter_all_tensors

# Streaming copies move this much at a time: large enough for full-speed I/O, small
# against any model whose weights matter.
CHUNK = 16 * 2**20


def is_external(t: onnx.TensorProto) -> bool:
    """Whether ``t`` keeps its values in an external data file."""
    return t.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of ``proto``, wherever it lives, whose values are in a side file."""
    return [t for t in iter_all_tensors(proto) if is_external(t)]


def has_external_data(model: Model) -> bool:
    return any(is_external(t) for t in iter_all_tensors(model.proto))


def _fields(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _folder(model: Model, t: onnx.TensorProto) -> Path:
    folder = model.data_dir
    if folder is None:
        raise ModelLoadError(
            f"{model.name}: tensor `{t.name}` keeps its values in an external data file, "
            "but the model was not loaded from a file, so there is no folder to read it from",
            hint="Load the model with surgeon.load(path), which reads its external data from the model's folder.",
        )
    return folder


def _target(model: Model, t: onnx.TensorProto) -> tuple[Path, int, int]:
    """(file, offset, length) of ``t``'s bytes, checked: inside the folder, the file it
    was loaded with, in range."""
    folder = _folder(model, t)
    fields = _fields(t)
    where = str(model.path) if model.path is not None else model.name
    target = resolve_external_location(fields.get("location", ""), folder, where)
    _check_stamp(model, target)
    try:
        offset = int(fields.get("offset", "0") or 0)
        length = int(fields["length"]) if fields.get("length") else None
    except ValueError:
        raise ModelLoadError(
            f"{where}: tensor `{t.name}`: external data offset/length are not integers"
        ) from None
    if length is None:
        length = target.stat().st_size - offset
    return target, offset, length


def _check_stamp(model: Model, target: Path) -> None:
    expected = model.external_stamps.get(str(target))
    if expected is None:
        return
    try:
        now = file_stamp(target.stat())
    except OSError:
        now = None
    if now != expected:
        raise ModelLoadError(
            f"{model.name}: its weights file {target.name} was replaced or changed since the "
            "model was loaded; its external data references no longer describe it",
            hint="Load the model again (surgeon.load) to use the file as it is now.",
        )


def check_weight_files(model: Model) -> list[onnx.TensorProto]:
    """Check every external reference of ``model`` before a runtime reads it; return them.

    Raises:
        ModelLoadError: The model has no folder, a file changed since loading, is
            missing, or is too short.
        UnsafePathError: A location leaves the model's folder.
    """
    tensors = external_tensors(model.proto)
    if not tensors:
        return tensors
    folder = _folder(model, tensors[0])
    for t in tensors:
        _target(model, t)  # inside the folder, and the file it was loaded with
    # Locations, files and ranges, collected and reported once (nothing is read).
    probe = onnx.ModelProto()
    probe.graph.initializer.extend(_stub(t) for t in tensors)
    where = str(model.path) if model.path is not None else model.name
    check_external_data(probe, folder, where, inline_below=0)
    return tensors


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    stub.external_data.extend(t.external_data)
    return stub


def session_folder(model: Model) -> str | None:
    """The folder onnxruntime resolves ``model``'s external data in, after checking every
    reference (None: the model has no external data)."""
    if not check_weight_files(model):
        return None
    return str(Path(os.path.abspath(model.data_dir)))


def copy_tensor_data(model: Model, t: onnx.TensorProto, fh) -> int:
    """Stream ``t``'s external bytes into the binary file ``fh``; return the count."""
    target, offset, length = _target(model, t)
    source, _ = open_regular_file(target, "an external data file", ModelLoadError)
    with source:
        source.seek(offset)
        left = length
        while left:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise ModelLoadError(
                    f"{model.name}: its weights file {target.name} ended before tensor "
                    f"`{t.name}` did; it was truncated"
                )
            fh.write(chunk)
            left -= len(chunk)
    return length


def read_tensor_data(model: Model, t: onnx.TensorProto) -> bytes:
    """``t``'s external bytes, read into memory."""
    target, offset, length = _target(model, t)
    source, _ = open_regular_file(target, "an external data file", ModelLoadError)
    with source:
        source.seek(offset)
        data = source.read(length)
    if len(data) != length:
        raise ModelLoadError(
            f"{model.name}: its weights file {target.name} ended before tensor `{t.name}` did; "
            "it was truncated"
        )
    return data


def inline_tensor(model: Model, t: onnx.TensorProto) -> None:
    """Read ``t``'s external bytes into its ``raw_data``, in place."""
    data = read_tensor_data(model, t)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = data


def tensor_array(model: Model, t: onnx.TensorProto) -> np.ndarray:
    """``t``'s values as numpy, its external bytes read from ``model``'s folder.

    (``onnx.numpy_helper.to_array`` would look for them in the current folder.)
    """
    if not is_external(t):
        return onnx.numpy_helper.to_array(t)
    copy = _stub(t)
    inline_tensor(model, copy)
    return onnx.numpy_helper.to_array(copy)


def inline_external_data(model: Model) -> Model:
    """``model``, or a copy of it with every external tensor read into memory.

    For code that rewrites weights (constant folding, float16 conversion) or hands the
    model to a tool that cannot be told the folder. It costs the weights' size in memory.
    """
    if not has_external_data(model):
        return model
    check_weight_files(model)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # a skeleton: the external tensors hold no bytes
    for t in iter_all_tensors(proto):
        if is_external(t):
            inline_tensor(model, t)
    return Model(proto, model.path, [])


_FOLDER_VALUES = None


def _folder_values():
    """A LazyValues subclass that reads external bytes from a Model's folder (built once,
    when onnx-graphsurgeon is first needed)."""
    global _FOLDER_VALUES
    if _FOLDER_VALUES is None:
        from onnx_graphsurgeon.ir.tensor import LazyValues

        class FolderValues(LazyValues):
            """Lazy values of an external tensor, loaded from its model's folder."""

            def __init__(self, tensor, model: Model):
                super().__init__(tensor)
                self.model = model

            def load(self):
                return np.array(tensor_array(self.model, self.tensor))

        _FOLDER_VALUES = FolderValues
    return _FOLDER_VALUES


def bind_lazy_values(graph, model: Model) -> None:
    """Make the external constants of an imported graph (subgraphs included) load from
    ``model``'s folder; onnx-graphsurgeon would read them from the current folder."""
    if not has_external_data(model):
        return
    from onnx_graphsurgeon.ir.tensor import Constant, LazyValues

    cls = _folder_values()
    stack = [graph]
    seen = set()
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
                tensor._values = cls(values.tensor, model)
        for node in g.nodes:
            for attr in node.attrs.values():
                if hasattr(attr, "tensors") and hasattr(attr, "nodes"):
                    stack.append(attr)
                elif isinstance(attr, (list, tuple)):
                    stack.extend(a for a in attr if hasattr(a, "tensors") and hasattr(a, "nodes"))
