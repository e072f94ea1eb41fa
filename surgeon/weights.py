"""Weights that stay on disk, at the level of a Model (see :mod:`surgeon.external`).

:func:`surgeon.load` checks every external-data reference and leaves large tensors in
their files (``data_location`` EXTERNAL). Whatever needs their bytes later comes through
here or :mod:`surgeon.external`:

- onnxruntime is handed the model's skeleton plus the folder to resolve locations in
  (:func:`session_folder`); it maps the files itself, so no step copies the weights into
  Python (onnxruntime 1.32, measured: a session built from a skeleton and that folder
  costs what a session built from the file path costs);
- saving streams each tensor from its file into the new weights file, a chunk at a time;
- code that rewrites values (constant folding, float16 conversion) reads the whole model
  (:func:`inline_external_data`), one tensor at a time :meth:`Model.tensor_array`.

Facts this rests on, measured with onnxruntime 1.32 and onnx-graphsurgeon 0.6.1:
onnxruntime maps external data files; with prepacking (the default) MatMul weights are
packed into anonymous memory and the map released, so a session costs about the weights
once. Two live sessions cost twice (packed copies; even without prepacking RSS counts
each mapping of the same file), two in sequence once: runs keep one session at a time.
onnx-graphsurgeon imports an external initializer as LazyValues holding its TensorProto
and exports that same proto back (still external, nothing read), but its ``load`` reads
through ``numpy_helper.to_array`` with no folder, i.e. from the current folder: hence
:meth:`Model.to_graph` binds them to the model's folder.
"""

from __future__ import annotations

import os

import onnx

from surgeon.external import check_references, external_tensors, inline_all, inline_tensor
from surgeon.model import Model


def has_external_data(model: Model) -> bool:
    """Whether any tensor of ``model`` keeps its values in a side file."""
    return bool(external_tensors(model.proto))


def session_folder(model: Model) -> str | None:
    """The folder onnxruntime resolves ``model``'s external data in, after checking every
    reference (None: the model has no external data).

    Raises:
        ModelLoadError, UnsafePathError: As :func:`surgeon.external.check_references`.
    """
    if not check_references(model.weight_source, model.proto):
        return None
    return os.path.abspath(model.data_dir)


def inline_external_data(model: Model) -> Model:
    """``model``, or a copy of it with every external tensor read into memory (checked,
    from its own folder).

    For code that rewrites weights or hands the model to a tool that cannot be told the
    folder. It costs the weights' size in memory.
    """
    if not has_external_data(model):
        return model
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # a skeleton: the external tensors hold no bytes
    inline_all(model.weight_source, proto)
    return Model(proto, model.path, [])


def share_folder(parts: list[tuple[Model, onnx.ModelProto]]) -> Model:
    """An empty Model whose data folder, files and stamps serve a proto built from parts.

    ``parts`` pairs each source Model with a (copied) proto of its tensors that will go
    into one new model. A model has one data folder, so the external tensors of a part
    whose folder differs from the first such part's are read into memory here, in place.
    Wrap the combined proto with the result's :meth:`Model.derive`.
    """
    kept: Model | None = None
    files: list[str] = []
    stamps: dict = {}
    for source, proto in parts:
        tensors = external_tensors(proto)
        if not tensors:
            continue
        if kept is None:
            kept = source
        if source.data_dir is not None and os.path.realpath(source.data_dir) == os.path.realpath(
            kept.data_dir
        ):
            files += [f for f in source.external_data_files if f not in files]
            stamps.update(source.external_stamps)
            continue
        for t in tensors:  # another folder: these weights come into memory
            inline_tensor(source.weight_source, t)
    holder = Model(onnx.ModelProto(), None, files, kept.data_dir if kept is not None else None)
    holder.external_stamps = stamps
    return holder
