"""Structural validation of a model: every problem found, as readable sentences."""

from __future__ import annotations

import math

import numpy as np
import onnx

from surgeon.graph_facts import subgraph_reads
from surgeon.model import _known_elem_type, dtype_name
from surgeon.protos import PACKED_TYPES


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
    _check_graph(proto.graph, (), "main graph", problems)
    return problems


def _raw_data_size_problem(t: onnx.TensorProto) -> str | None:
    """A sentence when ``t``'s raw bytes do not fit its shape and type (a damaged file)."""
    if t.data_type in PACKED_TYPES:  # sub-byte types: raw size is not count * itemsize
        return None
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    # Read raw_data only when it is set: each read copies the bytes.
    size = len(t.raw_data) if t.HasField("raw_data") else 0
    if t.data_location == onnx.TensorProto.EXTERNAL:
        # Left on disk by load: its recorded length is what onnxruntime will read.
        length = next((e.value for e in t.external_data if e.key == "length"), "")
        size = int(length) if length.isdigit() else 0
    if not size:
        return None  # values in the typed fields (float_data, ...), or an empty tensor
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (
        KeyError,
        TypeError,
        ValueError,
    ):  # a type this onnx does not know: nothing to compare with
        return None
    count = math.prod(t.dims)  # exact Python ints (1 for a scalar); np.prod costs ~15 us
    if size == count * itemsize:
        return None
    where = " in its external data" if t.data_location == onnx.TensorProto.EXTERNAL else ""
    needed = count * itemsize
    # A crafted shape can need a number of bytes past what str() of an int prints.
    needs = str(needed) if needed < 10**30 else "more than 10**30"
    dims = list(t.dims) if len(t.dims) <= 8 else f"of rank {len(t.dims)}"
    return (
        f"initializer `{t.name}` holds {size} bytes{where}, but its shape {dims} of "
        f"{dtype_name(t.data_type)} needs {needs}"
    )


def _check_graph(
    graph: onnx.GraphProto, outer: tuple[set[str], ...], where: str, problems: list[str]
) -> None:
    """Append the problems of ``graph`` to ``problems``.

    ``outer`` holds the names each enclosing graph defines, innermost last. It is a chain
    of the enclosing scopes' own sets rather than one merged copy: copying the outer names
    into every subgraph made a model with many If/Loop nodes quadratic to check. Every
    step here is linear in the graph's size (a name lookup costs the nesting depth).
    """
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
    here = set(defined)
    here.update(producers)
    scopes = (*outer, here)

    if outer:

        def known(name: str) -> bool:
            return any(name in scope for scope in scopes)

    else:  # the main graph: one set, no chain to walk
        known = here.__contains__

    for i, n in enumerate(graph.node):
        label = f"node `{n.name}` ({n.op_type})" if n.name else f"node #{i} ({n.op_type})"
        for name in n.input:
            if name and not known(name):
                problems.append(
                    f"{where}: {label} reads `{name}`, which no node, input or initializer defines"
                )
        for attr in n.attribute:
            for sub in _subgraphs(attr):
                _check_graph(sub, scopes, f"{where} > {label}.{attr.name}", problems)
    for o in graph.output:
        if not known(o.name):
            problems.append(f"{where}: output `{o.name}` has no producer")
    # Cycles: Kahn's algorithm over main-graph nodes; leftovers sit on a cycle.
    indeg = []
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        deps = {x for x in n.input if x in producers}
        if any(_subgraphs(attr) for attr in n.attribute):
            deps.update(x for x in subgraph_reads(n) if x in producers)
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


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []
