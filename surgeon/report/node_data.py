"""Per-node results of a debug run as node data for Google's Model Explorer.

Model Explorer (``pip install ai-edge-model-explorer``) shows an ONNX model through the
``model-explorer-onnx`` adapter and colours its nodes by "node data" files. Facts of the
format this module writes (from the Model Explorer sources, ``node_data_builder.py``):

* a file is a ``ModelNodeData``: ``{graph id: GraphNodeData}``;
* a ``GraphNodeData`` is ``{"results": {node id: {"value": number, "bgColor"?: css,
  "textColor"?: css}}, "thresholds": [{"value": number, "bgColor": css}, ...]}``; a node
  whose value is <= a threshold's value takes the first such threshold's colour, a value
  above the last threshold is left uncoloured (so the last threshold here covers every
  value the file holds); a result's own ``bgColor`` wins over the thresholds;
* one file holds one number per node: several metrics are several files, shown side by
  side (``--node_data_paths=a.json,b.json``).

Facts of the ONNX adapter (``model_explorer_onnx``): the graph id is the main graph's
name (``graph`` when it has none); a node's id is its ONNX name. Unnamed and duplicate
names are fixed first by onnx-ir's ``NameFixPass``: an unnamed node is called ``node``,
a taken name gets ``_1``, ``_2``, ... (one counter per base name for the whole model,
names unique per graph, subgraphs visited right after the node that holds them).
:func:`adapter_node_ids` repeats that, so unnamed nodes get the ids the viewer shows.

What is written (values are finite numbers; a node without a value is left out):

* with a reference, ``cumulative``: the fraction of a node's output elements outside
  atol/rtol against the reference (0 = within tolerance; a shape or dtype mismatch is 1),
  the worst over its outputs; and ``isolated`` when the report carries each node's own
  error (the same fraction, the node run on the reference's inputs);
* without a reference, ``magnitude``: max |x| over the finite elements of a node's float
  outputs; an output holding NaN/Inf counts as the largest float64 (JSON has no Inf).

The root cause (with a reference) or the node where the first NaN/Inf is born is given a
dark red ``bgColor`` of its own.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import onnx

# (upper bound, colour): green is "within tolerance", then amber to red as the share of
# bad elements grows. Fractions live in [0, 1], so the last bound covers them all.
FRACTION_THRESHOLDS = (
    (0.0, "#a5d6a7"),
    (1e-4, "#ffe082"),
    (1e-2, "#ffb74d"),
    (1e-1, "#ff7043"),
    (1.0, "#e53935"),
)
FLOAT16_MAX = 65504.0
FLOAT32_MAX = 3.4028234663852886e38
# Magnitudes: ordinary, beyond what is comfortable in float16 (1e3 leaves headroom for
# a sum or a square), beyond float16, beyond float32; NaN/Inf is written as float64's max.
MAGNITUDE_THRESHOLDS = (
    (1e3, "#a5d6a7"),
    (FLOAT16_MAX, "#ffe082"),
    (FLOAT32_MAX, "#ff9800"),
    (sys.float_info.max, "#e53935"),
)
ROOT_COLOR = "#8b0000"
ROOT_TEXT_COLOR = "#ffffff"
_FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}


def adapter_node_ids(model: onnx.ModelProto) -> list[str]:
    """The id the Model Explorer ONNX adapter gives each node of the main graph, in
    graph order (see the module docstring)."""
    counter: Counter[str] = Counter()

    def unique(preferred: str, used: set[str]) -> str:
        name = preferred
        while name in used:
            counter[preferred] += 1
            name = f"{preferred}_{counter[preferred]}"
        used.add(name)
        return name

    def visit(graph: onnx.GraphProto, ids: list[str] | None) -> None:
        used: set[str] = set()
        for node in graph.node:
            name = unique(node.name or "node", used)
            if ids is not None:
                ids.append(name)
            for attr in node.attribute:  # subgraphs only move the shared counter
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub, None)

    ids: list[str] = []
    visit(model.graph, ids)
    return ids


def graph_id(model: onnx.ModelProto) -> str:
    """The adapter's id of the main graph."""
    return model.graph.name or "graph"


def _get(obj, name: str):
    """A field of a record or of its dict form (``isolated`` may come as either)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _fraction(mismatches, size) -> float | None:
    if not isinstance(mismatches, int) or not isinstance(size, int) or size <= 0:
        return None
    return min(max(mismatches / size, 0.0), 1.0)


def cumulative_value(layer) -> float | None:
    """Share of the layer's elements outside tolerance (1 for a shape/dtype mismatch)."""
    diff = layer.diff
    if diff.status in ("ok", "mismatch"):
        return _fraction(diff.mismatches, diff.size)
    if diff.status in ("shape", "dtype"):
        return 1.0
    return None


def isolated_value(layer) -> float | None:
    """Share of the layer's elements outside tolerance when its node runs on the
    reference's inputs, if the report carries it (``layer.isolated``: a record or dict
    with ``mismatches`` and optionally ``size``)."""
    isolated = getattr(layer, "isolated", None)
    if isolated is None:
        return None
    size = _get(isolated, "size")
    return _fraction(_get(isolated, "mismatches"), size if size is not None else layer.diff.size)


def magnitude_value(stats) -> float | None:
    """max |x| over the finite elements of a float tensor; NaN/Inf as float64's max."""
    if stats.dtype not in _FLOAT_DTYPES or not stats.size:
        return None
    if stats.nan or stats.inf:
        return sys.float_info.max
    finite = [abs(v) for v in (stats.min, stats.max) if v is not None and math.isfinite(v)]
    return float(max(finite)) if finite else None


def _document(
    model: onnx.ModelProto,
    values: Mapping[str, float | None],
    thresholds,
    marked: set[str],
) -> dict:
    """One node-data file: ``values`` by tensor name, folded to the producing nodes
    (the worst output wins), ``marked`` tensors' nodes drawn dark red."""
    ids = adapter_node_ids(model)
    producer = {out: ids[i] for i, node in enumerate(model.graph.node) for out in node.output}
    results: dict[str, dict] = {}
    for tensor, value in values.items():
        node = producer.get(tensor)
        if node is None or value is None or not math.isfinite(value):
            continue
        entry = results.setdefault(node, {"value": value})
        entry["value"] = max(entry["value"], value)
    for tensor in marked:
        node = producer.get(tensor)
        if node in results:
            results[node].update(bgColor=ROOT_COLOR, textColor=ROOT_TEXT_COLOR)
    data = {
        "results": results,
        "thresholds": [{"value": v, "bgColor": c} for v, c in thresholds],
    }
    return {graph_id(model): data}


def node_data_documents(report, model) -> dict[str, dict]:
    """The node-data files of a debug report, by metric, the main one first:
    ``cumulative`` (and ``isolated`` when the report has it) with a reference,
    ``magnitude`` without one.

    Args:
        report: A :class:`~surgeon.debugging.DebugReport`.
        model: The debugged model (a Model or a ModelProto): node ids come from it.
    """
    proto = getattr(model, "proto", model)
    if report.reference is not None:
        root = {report.root_cause.diff.name} if report.root_cause is not None else set()
        docs = {
            "cumulative": _document(
                proto,
                {lay.diff.name: cumulative_value(lay) for lay in report.layers},
                FRACTION_THRESHOLDS,
                root,
            )
        }
        isolated = {lay.diff.name: isolated_value(lay) for lay in report.layers}
        if any(v is not None for v in isolated.values()):
            docs["isolated"] = _document(proto, isolated, FRACTION_THRESHOLDS, root)
        return docs
    born = report.born
    marked = {born[0].tensor} if born else set()
    values = {s.name: magnitude_value(s) for s in report.stats}
    return {"magnitude": _document(proto, values, MAGNITUDE_THRESHOLDS, marked)}


def node_data_paths(path: str | os.PathLike, with_reference: bool) -> list[Path]:
    """Every file :func:`write_node_data` may write for ``path``: the path itself (the
    main metric), and ``<stem>.isolated<suffix>`` next to it with a reference."""
    main = Path(path)
    if not with_reference:
        return [main]
    return [main, main.with_name(f"{main.stem}.isolated{main.suffix or '.json'}")]


def write_node_data(report, model, path: str | os.PathLike) -> list[Path]:
    """Write the node-data files (all or none, each atomically); returns their paths.

    Raises:
        OutputPathError: A path cannot be written.
    """
    from surgeon.errors import OutputPathError
    from surgeon.jsonout import dumps
    from surgeon.outputs import probe_writable, write_files

    docs = node_data_documents(report, model)
    paths = node_data_paths(path, report.reference is not None)
    # strict=False: the isolated file is planned with any reference, written when measured
    planned = list(zip(paths, docs.values(), strict=False))
    for target, _ in planned:
        problem = probe_writable(target)
        if problem:
            raise OutputPathError(problem)

    def writer(doc):
        def write(fh):
            # the one JSON writer (allow_nan=False); every value here is finite already
            fh.write((dumps(doc) + "\n").encode("utf-8"))

        return write

    return write_files([(target, writer(doc)) for target, doc in planned])
