"""The Model object: loading, validating, editing and atomically saving an ONNX model.

A :class:`Model` holds the ``onnx.ModelProto`` (with external weights read into memory),
the path it came from, and the external data files it used. Edits never mutate a Model:
``model.to_graph()`` hands out a fresh onnx-graphsurgeon graph, and ``Model.from_graph``
wraps the edited graph into a new Model that keeps the original's metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from surgeon._version import __version__
from surgeon.errors import ModelLoadError, OutputPathError, UnsafePathError, unknown_name

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


def dtype_name(elem_type: int) -> str | None:
    """The numpy name for an ONNX element type (``1`` -> ``"float32"``), None if unknown."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # exotic types (float8, int4) have no plain numpy name
        pass
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # a number no onnx version defines (a damaged file)
        return f"unknown_type_{elem_type}"


def _known_elem_type(elem_type: int) -> bool:
    return elem_type in onnx.TensorProto.DataType.values()


def value_info_to_tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type
    if not t.HasField("tensor_type"):
        return TensorInfo(vi.name, None, None)
    tt = t.tensor_type
    shape: tuple | None = None
    if tt.HasField("shape"):
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
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


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of weight data a TensorProto holds (in memory or external)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        for e in t.external_data:
            if e.key == "length":
                return int(e.value)
        return 0
    if t.raw_data:
        return len(t.raw_data)
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
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
        """Map of tensor name to the main-graph node that produces it."""
        out = {}
        for n in self.proto.graph.node:
            for o in n.output:
                if o:
                    out[o] = n
        return out

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
            raise unknown_name("tensor", name, names, self.name)

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
        """The edit history surgeon recorded in ``metadata_props`` (oldest first)."""
        for p in self.proto.metadata_props:
            if p.key == PROVENANCE_KEY:
                try:
                    records = json.loads(p.value)
                except ValueError:
                    return []
                return records if isinstance(records, list) else []
        return []

    def with_provenance(self, edit: str, params: Mapping | None = None) -> Model:
        """Append a provenance record to this model's metadata (in place) and return it.

        Call it only on a Model an edit has just created, never on its input.
        """
        records = self.provenance
        records.append({"edit": edit, "params": _jsonable(params or {}), "surgeon": __version__})
        props = [p for p in self.proto.metadata_props if p.key != PROVENANCE_KEY]
        del self.proto.metadata_props[:]
        self.proto.metadata_props.extend(props)
        self.proto.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(records))
        return self

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, **kwargs) -> Path:
        """Save atomically; see :func:`save`."""
        return save(self, path, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, nodes={len(self.proto.graph.node)}, opset={self.opset})"


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


# ---------------------------------------------------------------------- loading
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


def check_structure(proto: onnx.ModelProto) -> list[str]:
    """Structural problems of a model: every one found, as readable sentences."""
    problems: list[str] = []
    if proto.ir_version <= 0:
        problems.append("the model has no IR version (ir_version is missing)")
    if not len(proto.opset_import):
        problems.append("the model declares no opset_import")
    max_opset = onnx.defs.onnx_opset_version()
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx") and not (1 <= o.version <= max_opset):
            problems.append(
                f"default-domain opset {o.version} is outside what onnx {onnx.__version__} knows (1..{max_opset})"
            )
    _check_graph(proto.graph, set(), "main graph", problems)
    return problems


# Element types packed below one byte per element: their raw size is not count * itemsize.
_PACKED_TYPES = {
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
}


def _raw_data_size_problem(t: onnx.TensorProto) -> str | None:
    """A sentence when ``t``'s raw bytes do not fit its shape and type (a damaged file)."""
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in _PACKED_TYPES:
        return None
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    size = len(t.raw_data)
    if not size:
        return None  # values in the typed fields (float_data, ...), or an empty tensor
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # a type this onnx does not know: nothing to compare with
        return None
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    if size == count * itemsize:
        return None
    return (
        f"initializer `{t.name}` holds {size} bytes, but its shape {list(t.dims)} of "
        f"{dtype_name(t.data_type)} needs {count * itemsize}"
    )


def _check_graph(graph: onnx.GraphProto, outer: set[str], where: str, problems: list[str]) -> None:
    defined: dict[str, str] = {}
    for v in graph.input:
        if defined.get(v.name) == "graph input":
            problems.append(f"{where}: graph input `{v.name}` is declared twice")
        defined.setdefault(v.name, "graph input")
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.HasField("tensor_type") and not _known_elem_type(v.type.tensor_type.elem_type):
            problems.append(
                f"{where}: `{v.name}` has element type {v.type.tensor_type.elem_type}, which "
                f"onnx {onnx.__version__} does not know"
            )
    initializers: set[str] = set()
    for t in graph.initializer:
        if not _known_elem_type(t.data_type):
            problems.append(
                f"{where}: initializer `{t.name}` has element type {t.data_type}, which "
                f"onnx {onnx.__version__} does not know"
            )
        # Two values under one name: which one a runtime uses is anyone's guess.
        if t.name in initializers:
            problems.append(f"{where}: initializer `{t.name}` is defined twice")
        initializers.add(t.name)
        size_problem = _raw_data_size_problem(t)
        if size_problem:
            problems.append(f"{where}: {size_problem}")
        defined.setdefault(t.name, "initializer")
    for s in graph.sparse_initializer:
        defined.setdefault(s.values.name, "initializer")
    producers: dict[str, str] = {}
    for i, n in enumerate(graph.node):
        label = f"node `{n.name}` ({n.op_type})" if n.name else f"node #{i} ({n.op_type})"
        for o in n.output:
            if not o:
                continue
            if o in producers:
                problems.append(
                    f"{where}: tensor `{o}` is produced twice, by {producers[o]} and {label}"
                )
            elif o in defined:
                problems.append(f"{where}: {label} writes `{o}`, which is already a {defined[o]}")
            producers[o] = label
    known = set(defined) | set(producers) | outer
    for i, n in enumerate(graph.node):
        label = f"node `{n.name}` ({n.op_type})" if n.name else f"node #{i} ({n.op_type})"
        for name in n.input:
            if name and name not in known:
                problems.append(
                    f"{where}: {label} reads `{name}`, which no node, input or initializer defines"
                )
        for attr in n.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                _check_graph(sub, known, f"{where} > {label}.{attr.name}", problems)
    for o in graph.output:
        if o.name not in known:
            problems.append(f"{where}: output `{o.name}` has no producer")
    # Cycles: Kahn's algorithm over main-graph nodes; leftovers sit on a cycle.
    indeg = []
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        deps = {x for x in n.input if x in producers}
        deps |= _subgraph_reads(n) & set(producers)
        indeg.append(len(deps))
        for d in deps:
            consumers.setdefault(d, []).append(i)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for o in graph.node[i].output:
            for c in consumers.get(o, ()):
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
    if seen < len(graph.node):
        stuck = [
            graph.node[i].name or f"#{i} ({graph.node[i].op_type})"
            for i, d in enumerate(indeg)
            if d > 0
        ]
        problems.append(
            f"{where}: the graph has a cycle through {len(stuck)} node(s): " + ", ".join(stuck[:5])
        )


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    reads: set[str] = set()
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for g in iter_graphs(sub):
                for n in g.node:
                    reads.update(x for x in n.input if x)
    return reads


# ---------------------------------------------------------------------- saving
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


def _is_repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


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
