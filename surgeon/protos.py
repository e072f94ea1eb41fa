"""Plain facts about ONNX protos, with no Model in sight: tensor infos, dtype names, walking
every graph and tensor of a model, byte sizes, op counts.

Split out of :mod:`surgeon.model` so that the modules a Model builds on (saving, graph
facts, validation) can use them without importing the Model class back: no import circle.
:mod:`surgeon.model` re-exports every name, so ``from surgeon.model import TensorInfo``
keeps working.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

# Protobuf cannot serialise a message above 2 GiB; stay well under it before switching
# to external data.
PROTO_LIMIT = 2**31 - 64 * 2**20
# Tensors at least this large go to the external data file when one is written.
EXTERNAL_THRESHOLD = 1024
# External tensors at least this large stay on disk when a model is loaded (by
# reference, checked); smaller ones (shapes, axes, norms' scales) are read into memory,
# where the graph logic that reads small constants finds them.
INLINE_EXTERNAL_BELOW = 64 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type and shape of a graph input or output.

    ``shape`` is None when the rank is unknown; each dim is an int, a symbolic name, or
    None when it is unknown and unnamed. ``dtype`` is a numpy dtype name (``"float32"``)
    or None when the model does not say.
    """

    name: str
    dtype: str | None
    shape: tuple[int | str | None, ...] | None

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None or any(not isinstance(d, int) for d in self.shape)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
        }


@functools.cache
def dtype_name(elem_type: int) -> str | None:
    """The numpy name for an ONNX element type (``1`` -> ``"float32"``), None if unknown."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):  # a type this onnx does not map to numpy
        pass
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # a number no onnx version defines (a damaged file)
        return f"unknown_type_{elem_type}"


_KNOWN_ELEM_TYPES = frozenset(onnx.TensorProto.DataType.values())


def _known_elem_type(elem_type: int) -> bool:
    # A frozenset built once: DataType.values() builds a list on every call, which made
    # validating a model with many tensors needlessly slow.
    return elem_type in _KNOWN_ELEM_TYPES


# dim_param texts that exporters write for "unknown" (Paddle and some converters write
# `?` for every unknown dim): they name nothing, so two of them are not the same dim.
UNNAMED_DIM_PARAMS = {"", "?", "-1"}


def dim_param_name(text: str) -> str | None:
    """The symbol a ``dim_param`` names, or None for an unnamed dim (``?``, ``-1``, blank)."""
    text = text.strip()
    return None if text in UNNAMED_DIM_PARAMS else text


def value_info_to_tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    """Name, dtype and shape of a value_info. Unknown dims (no value, a negative value, or a
    ``dim_param`` of ``?``/``-1``/blank) are None, each one its own unknown."""
    t = vi.type
    if not t.HasField("tensor_type"):
        return TensorInfo(vi.name, None, None)
    tt = t.tensor_type
    shape: tuple | None = None
    if tt.HasField("shape"):
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(dim_param_name(d.dim_param))
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(vi.name, dtype_name(tt.elem_type), shape)


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and every subgraph (If/Loop/Scan bodies) below it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Yield every TensorProto that can hold weights: initializers and Constant values,
    in the main graph, subgraphs and local functions."""
    graphs = list(iter_graphs(proto.graph))
    for f in proto.functions:
        fake = onnx.GraphProto()
        fake.node.extend(f.node)
        graphs.extend(iter_graphs(fake))
    for g in graphs:
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _types_holding_tensors() -> set[str]:
    """Full names of the onnx message types that can contain a TensorProto at any depth:
    a fixpoint over the schema (it is recursive: graphs hold nodes hold graphs)."""
    types: dict[str, object] = {}
    todo = [onnx.ModelProto.DESCRIPTOR]
    while todo:
        d = todo.pop()
        if d.full_name in types:
            continue
        types[d.full_name] = d
        todo.extend(f.message_type for f in d.fields if f.message_type is not None)
    holding = {onnx.TensorProto.DESCRIPTOR.full_name}
    changed = True
    while changed:
        changed = False
        for name, d in types.items():
            if name not in holding and any(
                f.message_type is not None and f.message_type.full_name in holding for f in d.fields
            ):
                holding.add(name)
                changed = True
    return holding


_TENSOR_FIELDS: dict[str, tuple[str, ...]] = {}


def _tensor_fields(descriptor) -> tuple[str, ...]:
    """Names of the message fields of ``descriptor`` that can lead to a TensorProto."""
    cached = _TENSOR_FIELDS.get(descriptor.full_name)
    if cached is None:
        holding = _types_holding_tensors()
        cached = tuple(
            f.name
            for f in descriptor.fields
            if f.message_type is not None and f.message_type.full_name in holding
        )
        _TENSOR_FIELDS[descriptor.full_name] = cached
    return cached


def iter_all_tensors(message) -> Iterator[onnx.TensorProto]:
    """Yield every TensorProto anywhere inside ``message`` (a ModelProto, usually).

    Unlike :func:`iter_tensors` this walks the protobuf schema itself, not a list of
    places: initializers, sparse initializers, tensor and sparse-tensor attributes (and
    their lists), whatever the attribute claims its type is, subgraphs, local functions,
    training_info graphs. It is what external-data checks use, so that a tensor in a
    place nobody thought of cannot point a runtime at a file. Only fields whose type can
    hold a tensor are visited, which keeps it linear and cheap.
    """
    stack = [message]
    while stack:
        m = stack.pop()
        if isinstance(m, onnx.TensorProto):
            yield m
            continue
        for name in _tensor_fields(m.DESCRIPTOR):
            field = m.DESCRIPTOR.fields_by_name[name]
            if _is_repeated(field):
                stack.extend(reversed(getattr(m, name)))
            elif m.HasField(name):
                stack.append(getattr(m, name))


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of weight data a TensorProto holds (in memory or external)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        for e in t.external_data:
            if e.key == "length":
                return int(e.value)
        return 0
    if t.raw_data:
        return len(t.raw_data)
    count = math.prod(t.dims)  # exact Python ints; np.prod costs ~30 us per tensor
    try:
        return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # a type this onnx does not map to numpy
        return 0


_GS = None


def import_graphsurgeon():
    """Import onnx-graphsurgeon once, with its logger quieted (the library never prints)."""
    global _GS
    if _GS is None:
        import onnx_graphsurgeon as gs

        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL + 10
        _GS = gs
    return _GS


def op_histogram(proto: onnx.ModelProto, *, include_subgraphs: bool = False) -> Counter:
    """Count of nodes per op type (``domain::Op`` for non-default domains)."""
    graphs = iter_graphs(proto.graph) if include_subgraphs else [proto.graph]
    counts: Counter = Counter()
    for g in graphs:
        for n in g.node:
            counts[
                f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            ] += 1
    return counts


def _is_repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED
