"""The Model object: loading, validating, editing and atomically saving an ONNX model.

A :class:`Model` holds the ``onnx.ModelProto``, the path it came from, and the external
data files it uses. Large external tensors stay in their files, by reference (see
:func:`surgeon.loading.load`): the proto is then a skeleton of a few kilobytes however
large the weights, so copying it for an edit costs nothing, and onnxruntime maps the
weights from the files itself (:mod:`surgeon.weights`). Edits never mutate a Model:
``model.to_graph()`` hands out a fresh onnx-graphsurgeon graph, and ``Model.from_graph``
wraps the edited graph into a new Model that keeps the original's metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx

from surgeon._version import __version__
from surgeon.annotations import checked_init
from surgeon.errors import unknown_name
from surgeon.external import WeightSource, bind_lazy_values, external_tensors, tensor_array
from surgeon.graph_facts import graph_facts

# Re-exported: these lived here before surgeon.protos took them (see its docstring).
from surgeon.protos import (  # noqa: F401
    EXTERNAL_THRESHOLD,
    PROTO_LIMIT,
    UNNAMED_DIM_PARAMS,
    TensorInfo,
    _is_repeated,
    _known_elem_type,
    dim_param_name,
    dtype_name,
    import_graphsurgeon,
    iter_all_tensors,
    iter_graphs,
    iter_tensors,
    op_histogram,
    tensor_nbytes,
    value_info_to_tensor_info,
)

PROVENANCE_KEY = "surgeon.provenance"


@checked_init  # Model(3) is a UsageError naming `proto`, not a failure later on
class Model:
    """One loaded ONNX model.

    Attributes:
        proto: The ModelProto. Tensors whose ``data_location`` is EXTERNAL keep their
            values in files under :attr:`data_dir` (read only through
            :mod:`surgeon.weights`, which checks them); the others hold theirs in memory.
        path: Where it was loaded from (None for models built in memory).
        external_data_files: Relative names of the side files its weights are in.
        data_dir: The folder its external data locations are relative to (default: the
            folder of ``path``).
        external_stamps: Resolved side file -> its identity when loaded (see
            :func:`surgeon.loading.file_stamp`): a file replaced since is refused.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        path: str | os.PathLike | None = None,
        external_data_files: Iterable[str] = (),
        data_dir: str | os.PathLike | None = None,
    ):
        self.proto = proto
        self.path = Path(path) if path is not None else None
        self.external_data_files = list(external_data_files)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.external_stamps: dict[str, tuple[int, int, int, int]] = {}

    @property
    def data_dir(self) -> Path | None:
        """The folder external data locations are relative to (None: it has none)."""
        if self._data_dir is not None:
            return self._data_dir
        return self.path.parent if self.path is not None else None

    def derive(self, proto: onnx.ModelProto, path: str | os.PathLike | None = None) -> Model:
        """A Model around ``proto`` (built from this one's tensors) that reads external
        data where this one does; ``path`` None gives it no file name of its own."""
        model = Model(proto, path, self.external_data_files, self.data_dir)
        model.external_stamps = dict(self.external_stamps)
        return model

    def tensor_array(self, tensor: onnx.TensorProto):
        """A tensor's values as numpy, external bytes read from this model's folder
        (``onnx.numpy_helper.to_array`` would look in the current folder)."""
        return tensor_array(self.weight_source, tensor)

    @property
    def weight_source(self) -> WeightSource:
        """Where this model's external tensors are read from (see :mod:`surgeon.external`)."""
        where = str(self.path) if self.path is not None else self.name
        return WeightSource(self.data_dir, where, dict(self.external_stamps))

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
        """A fresh, editable onnx-graphsurgeon Graph of this model (edits don't touch self).

        Its external constants stay lazy (exported back as the same references); read
        (``.values``), they come from this model's folder with its checks, never from
        the current folder, which is where onnx-graphsurgeon alone would look.
        """
        gs = import_graphsurgeon()
        graph = gs.import_onnx(self.proto)
        if external_tensors(self.proto):
            bind_lazy_values(graph, self.weight_source)
        return graph

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
            return base.derive(proto, base.path)
        return cls(proto)

    def with_proto(self, proto: onnx.ModelProto) -> Model:
        """A new Model around ``proto`` with this one's path and data files."""
        return self.derive(proto, self.path)

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

    def add_provenance(self, edit: str, params: Mapping | None = None) -> Model:
        """Append a provenance record to this model's metadata, in place (it is not a
        ``with_*`` copy: that name promised one), and return the model for chaining.

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
