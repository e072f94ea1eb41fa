"""The Model object: loading, validating, editing and atomically saving an ONNX model.

A :class:`Model` holds the ``onnx.ModelProto`` (with external weights read into memory),
the path it came from, and the external data files it used. Edits never mutate a Model:
``model.to_graph()`` hands out a fresh onnx-graphsurgeon graph, and ``Model.from_graph``
wraps the edited graph into a new Model that keeps the original's metadata.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from surgeon._version import __version__
from surgeon.errors import unknown_name

PROVENANCE_KEY = "surgeon.provenance"
# Protobuf cannot serialise a message above 2 GiB; stay well under it before switching
# to external data.
PROTO_LIMIT = 2**31 - 64 * 2**20
# Tensors at least this large go to the external data file when one is written.
EXTERNAL_THRESHOLD = 1024


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


class Model:
    """One loaded ONNX model.

    Attributes:
        proto: The ModelProto, with every weight in memory.
        path: Where it was loaded from (None for models built in memory).
        external_data_files: Relative names of the side files its weights came from.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        path: str | os.PathLike | None = None,
        external_data_files: Iterable[str] = (),
    ):
        self.proto = proto
        self.path = Path(path) if path is not None else None
        self.external_data_files = list(external_data_files)

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        """A short name for messages: the file name, or the graph name."""
        if self.path is not None:
            return self.path.name
        return self.proto.graph.name or "<model>"

    @property
    def graph_proto(self) -> onnx.GraphProto:
        return self.proto.graph

    @property
    def inputs(self) -> list[TensorInfo]:
        """Graph inputs a caller must feed (initializers listed as inputs are excluded)."""
        inits = {t.name for t in self.proto.graph.initializer}
        return [value_info_to_tensor_info(v) for v in self.proto.graph.input if v.name not in inits]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [value_info_to_tensor_info(v) for v in self.proto.graph.output]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        for o in self.proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 0

    def tensor_names(self) -> list[str]:
        """Every tensor name of the main graph: inputs, initializers, node outputs."""
        g = self.proto.graph
        names = [v.name for v in g.input]
        names += [t.name for t in g.initializer]
        for n in g.node:
            names += [o for o in n.output if o]
        return list(dict.fromkeys(names))

    def node_names(self) -> list[str]:
        return [n.name for n in self.proto.graph.node if n.name]

    def producers(self) -> dict[str, onnx.NodeProto]:
        """Map of tensor name to the main-graph node that produces it (see
        :mod:`surgeon.graph_facts`, which computes it once per model)."""
        from surgeon.graph_facts import graph_facts  # graph_facts imports this module

        return graph_facts(self).producer_nodes()

    def value_infos(self) -> dict[str, TensorInfo]:
        """Whatever the model declares about its tensors (value_info, inputs, outputs)."""
        g = self.proto.graph
        infos = {}
        for v in list(g.value_info) + list(g.input) + list(g.output):
            infos[v.name] = value_info_to_tensor_info(v)
        for t in g.initializer:
            infos[t.name] = TensorInfo(
                t.name, dtype_name(t.data_type), tuple(int(d) for d in t.dims)
            )
        return infos

    def require_tensor(self, name: str) -> None:
        """Raise a NameNotFoundError with suggestions unless ``name`` is a tensor here."""
        names = self.tensor_names()
        if name not in names:
            raise unknown_name("tensor", name, names, self.name, model_path=self.path)

    def weight_bytes(self) -> int:
        return sum(tensor_nbytes(t) for t in iter_tensors(self.proto))

    # ------------------------------------------------------------------ editing
    def to_graph(self):
        """A fresh, editable onnx-graphsurgeon Graph of this model (edits don't touch self)."""
        gs = import_graphsurgeon()
        return gs.import_onnx(self.proto)

    @classmethod
    def from_graph(cls, graph, base: Model | None = None) -> Model:
        """Export an onnx-graphsurgeon Graph into a new Model that keeps ``base``'s metadata.

        ``base``'s IR version, producer, model metadata and node metadata (e.g. the PyTorch
        exporter's module scopes, which onnx-graphsurgeon drops) are carried over.
        """
        gs = import_graphsurgeon()
        # do_type_check=False: tapped or cut tensors may have no dtype yet; onnxruntime
        # infers it, and callers fill in types they learn from a run.
        proto = gs.export_onnx(graph, do_type_check=False)
        if base is not None:
            copy_model_metadata(base.proto, proto)
            return cls(proto, base.path, base.external_data_files)
        return cls(proto)

    def with_proto(self, proto: onnx.ModelProto) -> Model:
        """A new Model around ``proto`` with this one's path and data files."""
        return Model(proto, self.path, self.external_data_files)

    def copy(self) -> Model:
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        return self.with_proto(proto)

    # ------------------------------------------------------------------ provenance
    @property
    def provenance(self) -> list[dict]:
        """The edit history surgeon recorded in ``metadata_props`` (oldest first); empty
        when there is none or it is malformed (see :attr:`provenance_problem`)."""
        return read_provenance(self.proto)[0]

    @property
    def provenance_problem(self) -> str | None:
        """Why the recorded edit history cannot be read, or None when it can (or is absent)."""
        return read_provenance(self.proto)[1]

    def with_provenance(self, edit: str, params: Mapping | None = None) -> Model:
        """Append a provenance record to this model's metadata (in place) and return it.

        Call it only on a Model an edit has just created, never on its input. A malformed
        history is kept, under ``surgeon.provenance.malformed``, rather than lost.
        """
        records, problem = read_provenance(self.proto)
        old = next((p.value for p in self.proto.metadata_props if p.key == PROVENANCE_KEY), None)
        records.append({"edit": edit, "params": _jsonable(params or {}), "surgeon": __version__})
        props = [p for p in self.proto.metadata_props if p.key != PROVENANCE_KEY]
        del self.proto.metadata_props[:]
        self.proto.metadata_props.extend(props)
        if problem is not None and old is not None:
            self.proto.metadata_props.add(key=PROVENANCE_KEY + ".malformed", value=old)
        self.proto.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(records))
        return self

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, **kwargs) -> Path:
        """Save atomically; see :func:`surgeon.saving.save`."""
        from surgeon.saving import save  # saving imports this module

        return save(self, path, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, nodes={len(self.proto.graph.node)}, opset={self.opset})"


# A history longer than this is not parsed: surgeon writes a few hundred bytes per edit,
# so a larger value was not written by it, and parsing it could take the memory.
PROVENANCE_MAX_CHARS = 1_000_000


def read_provenance(proto: onnx.ModelProto) -> tuple[list[dict], str | None]:
    """The edit history in ``proto``'s metadata, and why it is malformed (or None).

    The value comes from the file, so nothing about it is trusted: it may not be JSON,
    be JSON of another shape, be nested deeper than the parser's recursion, or be huge.
    Any of these gives ``([], reason)``; a well-formed history ``(records, None)``, each
    record a dict with a string ``edit``, a dict ``params`` and a string ``surgeon``.
    """
    value = next((p.value for p in proto.metadata_props if p.key == PROVENANCE_KEY), None)
    if value is None:
        return [], None
    if len(value) > PROVENANCE_MAX_CHARS:
        return [], f"too large to read ({len(value)} characters)"
    try:
        records = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: "[[[[...]]]]" nested too deep
        return [], "not valid JSON"
    if not isinstance(records, list):
        return [], f"JSON {type(records).__name__}, not a list of edit records"
    for i, rec in enumerate(records, 1):
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("edit"), str)
            or not isinstance(rec.get("params", {}), dict)
            or not isinstance(rec.get("surgeon", ""), str)
        ):
            return [], f"record {i} is not an edit record ({{edit, params, surgeon}})"
    return records, None


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def copy_model_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Copy model-level fields and node metadata from ``source`` onto ``target``."""
    target.ir_version = max(source.ir_version, 3) if source.ir_version else target.ir_version
    target.producer_name = source.producer_name
    target.producer_version = source.producer_version
    target.domain = source.domain
    target.model_version = source.model_version
    target.doc_string = source.doc_string
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    if not target.functions and source.functions:
        target.functions.extend(source.functions)
    meta = {}
    for g in iter_graphs(source.graph):
        for n in g.node:
            if n.name and len(n.metadata_props):
                meta[(n.name, n.op_type)] = n.metadata_props
    if meta:
        for g in iter_graphs(target.graph):
            for n in g.node:
                props = meta.get((n.name, n.op_type))
                if props is not None and not len(n.metadata_props):
                    n.metadata_props.extend(props)


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
