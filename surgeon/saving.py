"""Saving models: a model and its weights file replaced as one unit (temp files, fsync,
renames with roll-back), with external data when needed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from surgeon.errors import OutputPathError
from surgeon.external import (
    WeightSource,
    copy_tensor_data,
    external_tensors,
    inline_all,
    locate,
)
from surgeon.outputs import FilePlan, data_file_name, write_files
from surgeon.protos import (
    EXTERNAL_THRESHOLD,
    PROTO_LIMIT,
    _is_repeated,
    encode_varint,
    iter_tensors,
    tensor_nbytes,
)

if TYPE_CHECKING:  # a Model saves itself through this module (Model.save)
    from surgeon.model import Model


def check_output_path(
    path: str | os.PathLike, inputs: Iterable[Model | str | os.PathLike], *, inplace: bool = False
) -> Path:
    """Check that ``path`` can be written and would not overwrite an input.

    Args:
        inputs: Models (their file and each external-data file is protected) or paths.
        inplace: ``path`` may replace a model among ``inputs`` (never its weights or
            another file).

    Raises:
        OutputPathError: The folder does not exist or cannot be written, the path is a
            folder, or it is one of the inputs (or their external data files) and
            ``inplace`` does not allow it.
    """
    plan = FilePlan()
    groups = [plan.reads_model(item, _describe(item), replaceable=True) for item in inputs]
    plan.writes_model(
        path,
        "the output",
        external_data=False,
        replaces=groups if inplace else (),
        inplace_flag=True,
    )
    plan.check()
    return Path(path)


def _describe(item) -> str:
    if not isinstance(item, (str, os.PathLike)) and item.path is None:  # a Model from memory
        return "the model"
    return "the input model"


def external_data_choice(model: Model, external_data: bool | None) -> bool:
    """Whether ``model`` is saved with external data (``None``: only when its proto
    would pass protobuf's 2 GB limit)."""
    if external_data is None:
        return model.weight_bytes() + 16 * 2**20 > PROTO_LIMIT
    return external_data


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    data_name: str | None = None,
    inplace: bool = False,
    durable: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically, with its weights file as one unit.

    Both files are written to temp files and fsynced, then renamed into place; if the
    second rename fails the first is undone, so the model and its weights are replaced
    together or not at all.

    The saved model never points into another file's weights: tensors that ``model``
    keeps in external files (left on disk by :func:`surgeon.load`) are streamed, a chunk
    at a time, into the output's own weights file (or into the single file), so a save
    never holds the weights in memory, and the output stays valid when the input's
    weights file is later replaced or deleted. An in-place save reads the old weights
    file to the end before the new one is renamed over it.

    Args:
        external_data: Write weights to a side file. ``None`` (default) does so only when
            the model would pass protobuf's 2 GB limit.
        data_name: The side file's name (default ``<model file name>.data``), next to
            ``path``.
        inplace: Allow ``path`` to be the model's own source file (and the side file its
            own weights file).
        durable: fsync the files (False for scratch copies deleted right after).

    Raises:
        OutputPathError: The path cannot be written, or it or the side file would
            overwrite the model's own files (or each other).
    """
    return save_models(
        [(model, path)],
        external_data=external_data,
        data_name=data_name,
        inplace=inplace,
        durable=durable,
    )[0]


def save_models(
    targets: Iterable[tuple[Model, str | os.PathLike]],
    *,
    external_data: bool | None = None,
    data_name: str | None = None,
    inplace: bool = False,
    plan: FilePlan | None = None,
    replaces: Iterable[int] = (),
    durable: bool = True,
) -> list[Path]:
    """Save several models as one transaction: every file is replaced, or none is.

    Args:
        targets: (model, path) pairs.
        plan: The caller's plan of reads, checked with these writes added (default: a
            plan holding each model's own files).
        replaces: With ``plan`` and ``inplace``: the plan's groups the outputs may replace.
        durable: fsync the files (False for scratch copies deleted right after).

    Raises:
        OutputPathError: As :func:`save`; nothing is written.
    """
    given = [(m, p) for m, p in targets]  # as spelled: "out/" must stay a folder spelling
    targets = [(m, Path(p)) for m, p in given]
    if plan is None:
        plan = FilePlan()
        replaces = [plan.reads_model(m, _describe(m), replaceable=True) for m, _ in targets]
    groups = list(replaces)
    choices = []
    for (model, out), (_, spelled) in zip(targets, given, strict=True):
        external = external_data_choice(model, external_data)
        choices.append(external)
        plan.writes_model(
            spelled,
            "the output" if len(targets) == 1 else f"the output {out.name}",
            external_data=external,
            data_name=data_name,
            replaces=groups if inplace else (),
            inplace_flag=True,
        )
    plan.check()
    items = []
    for (model, out), external in zip(targets, choices, strict=True):
        items += _model_writers(model, out, external, data_name)
    return _models_only(write_files(items, durable=durable), targets)


def _models_only(written: list[Path], targets) -> list[Path]:
    finals = {os.fspath(out) for _, out in targets}
    return [p for p in written if os.fspath(p) in finals]


def _model_writers(model: Model, out: Path, external: bool, data_name: str | None) -> list:
    """(path, write) pairs for write_files: the weights file first (its writer builds the
    skeleton the model file then holds)."""
    if not external:

        def write_model(fh):
            if external_tensors(model.proto):
                # Weights left on disk by load go into the single file, streamed.
                write_streamed(model.proto, fh, model.weight_source, out)
                return
            try:
                payload = model.proto.SerializeToString()
            except ValueError as e:  # protobuf refuses > 2 GB
                raise OutputPathError(
                    f"cannot write {out} as a single file: {e}", hint="Save with external data."
                ) from None
            fh.write(payload)

        return [(out, write_model)]
    name = data_file_name(out, data_name)
    built = {}

    def write_data(fh):
        built["skeleton"] = external_copy(model.proto, fh, name, source=model.weight_source)

    def write_skeleton(fh):
        fh.write(built.pop("skeleton").SerializeToString())

    return [(out.parent / name, write_data), (out, write_skeleton)]


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

    def __init__(self, fh, location: str, source: WeightSource | None):
        self.fh, self.location, self.offset, self.source = fh, location, 0, source

    def wants(self, t: onnx.TensorProto) -> bool:
        """True for tensors that go to the file: those whose bytes are in another external
        file (the saved model never points into its input's weights), and those in
        memory of at least EXTERNAL_THRESHOLD bytes that are not strings (which have no
        raw byte layout)."""
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return True
        if t.raw_data:
            return len(t.raw_data) >= EXTERNAL_THRESHOLD
        return tensor_nbytes(t) >= EXTERNAL_THRESHOLD and t.data_type != onnx.TensorProto.STRING

    def write(self, source: onnx.TensorProto, target: onnx.TensorProto) -> None:
        """Write ``source``'s bytes and make ``target`` (a copy of it, or ``source`` itself
        when it is already a copy) point at them."""
        pad = (-self.offset) % 4096  # page-aligned, so runtimes can mmap each tensor
        if pad:
            self.fh.write(b"\0" * pad)
            self.offset += pad
        if source.data_location == onnx.TensorProto.EXTERNAL:
            if self.source is None:
                raise OutputPathError(
                    f"tensor `{source.name}` keeps its values in an external data file, but "
                    "the model has no folder to read it from",
                    hint="Load the model with surgeon.load(path).",
                )
            # Streamed from the input's file, a chunk at a time: never all in memory.
            length = copy_tensor_data(self.source, source, self.fh)
        else:
            # Typed fields (float_data, ...) become raw bytes in the file.
            data = source.raw_data or onnx.numpy_helper.to_array(source).tobytes()
            self.fh.write(data)
            length = len(data)
        for name in _TENSOR_DATA_FIELDS:
            target.ClearField(name)
        target.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (
            ("location", self.location),
            ("offset", str(self.offset)),
            ("length", str(length)),
        ):
            target.external_data.add(key=k, value=v)
        self.offset += length


def external_copy(
    proto: onnx.ModelProto, fh, location: str, *, source: WeightSource | None = None
) -> onnx.ModelProto:
    """A copy of ``proto`` whose large tensors live in ``fh`` (written here) under the
    name ``location``; ``proto`` itself is not modified.

    Tensors that keep their values in external files (read from ``source``'s folder,
    with its checks) are streamed into ``fh`` too: the copy never points into another
    model's weights file, which could be replaced or deleted under it.

    The main graph's initializers, where the weights of real models are, are never
    copied: each one's bytes go straight to ``fh`` and the copy gets a stub pointing at
    them, so the peak memory is the model plus one tensor. (With protobuf's upb backend,
    memory a message gives up with ClearField stays in its arena until the whole message
    is freed: clearing weights in place and restoring them would cost two more copies.)
    Tensors elsewhere (Constant nodes, If/Loop bodies, functions) are copied, then moved.
    """
    writer = _DataWriter(fh, location, source)
    skeleton = onnx.ModelProto()
    _copy_fields(proto, skeleton, skip={"graph"})
    _copy_fields(proto.graph, skeleton.graph, skip={"initializer"})
    # The other tensors first, while the skeleton has no main-graph initializer: each
    # tensor is then visited once (a stub already written points at the new file, which
    # may have the same name as the input's).
    for t in iter_tensors(skeleton):
        if writer.wants(t):
            writer.write(t, t)
    for t in proto.graph.initializer:
        stub = skeleton.graph.initializer.add()
        if writer.wants(t):
            _copy_fields(t, stub, skip=_TENSOR_DATA_FIELDS)
            writer.write(t, stub)
        else:
            stub.CopyFrom(t)
    return skeleton


# The largest message protobuf parses: a single file past it could be written but not read.
SINGLE_FILE_LIMIT = 2**31 - 1


def _key(message, name: str) -> bytes:
    """The tag of a length-delimited field (wire type 2), from the schema."""
    return encode_varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def write_streamed(proto: onnx.ModelProto, fh, source: WeightSource, out: Path) -> None:
    """Serialise ``proto`` into ``fh`` as one file, the external bytes of its main-graph
    initializers streamed from their files into ``raw_data``, never all in memory.

    Protobuf reads a message's fields in any order and a field written as its key, its
    length and its bytes; so the model is its other fields, then the graph (its other
    fields, then each initializer: a stub without data, then raw_data copied a chunk at a
    time). Parsed, it is the proto ``SerializeToString`` would give with the bytes read
    in. External tensors elsewhere (Constant nodes, subgraphs) are read into a copy.

    Raises:
        OutputPathError: The file would pass protobuf's 2 GB limit.
    """
    head = onnx.ModelProto()
    _copy_fields(proto, head, skip={"graph"})
    graph = onnx.GraphProto()
    _copy_fields(proto.graph, graph, skip={"initializer"})
    inline_all(source, head)
    inline_all(source, graph)
    raw_key = _key(onnx.TensorProto, "raw_data")
    entries = []  # (stub bytes, external tensor or None, data length)
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            entries.append((t.SerializeToString(), None, 0))
            continue
        stub = onnx.TensorProto()
        _copy_fields(t, stub, skip=_TENSOR_DATA_FIELDS)
        entries.append((stub.SerializeToString(), t, locate(source, t)[2]))

    def body_size(stub: bytes, length: int, external) -> int:
        if external is None:
            return len(stub)
        return len(stub) + len(raw_key) + len(encode_varint(length)) + length

    init_key = _key(onnx.GraphProto, "initializer")
    graph_bytes = graph.SerializeToString()
    graph_size = len(graph_bytes)
    for stub, t, length in entries:
        size = body_size(stub, length, t)
        graph_size += len(init_key) + len(encode_varint(size)) + size
    head_bytes = head.SerializeToString()
    graph_key = _key(onnx.ModelProto, "graph")
    total = len(head_bytes) + len(graph_key) + len(encode_varint(graph_size)) + graph_size
    if total > SINGLE_FILE_LIMIT:
        raise OutputPathError(
            f"cannot write {out} as a single file: it would be {total} bytes, past "
            "protobuf's 2 GB limit",
            hint="Save with external data.",
        )
    fh.write(head_bytes + graph_key + encode_varint(graph_size) + graph_bytes)
    for stub, t, length in entries:
        fh.write(init_key + encode_varint(body_size(stub, length, t)) + stub)
        if t is not None:
            fh.write(raw_key + encode_varint(length))
            copy_tensor_data(source, t, fh)
