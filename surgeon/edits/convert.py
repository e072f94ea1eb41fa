"""The convert edit: a model at another default-domain opset, verified against the original.

The conversion is onnx's version converter (``onnx.version_converter.convert_version``).
It stops at the first node it cannot adapt and says little about it, so before the
model is converted every node is *probed*: a one-node model holding the node, its
attributes, the types of its inputs and the values of its constant inputs is converted
on its own. Every node whose probe fails, whose op does not exist at the target opset,
or that reads negative indices an older Gather cannot take, is listed with what it would
need; the conversion is refused (nothing converted, nothing written) while any is left.

"Unchanged" for a conversion: every output within the caller's tolerance of the
original's, at the caller's sizes and at a second size where the model has dynamic
dims (kernels of another opset's op may round differently, so the shared tolerance
applies rather than bit-identity).
"""

from __future__ import annotations

import functools
import re

import onnx
from onnx import helper, numpy_helper

from surgeon.compare import DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.edits.convert_nodes import (
    COERCING_OPS,
    constants_of,
    drop_default_attributes,
    fill_omitted_inputs,
    known_types,
    last_axis_rewrite,
    probe_model,
    same_meaning,
    splice,
    type_problem,
)
from surgeon.edits.fold import infer_shapes
from surgeon.edits.opsets import DEFAULT_DOMAINS
from surgeon.edits.sizes import runtime_correspondence, verify_other_size
from surgeon.errors import SurgeonError, UsageError
from surgeon.feeds import FeedOptions, make_feeds
from surgeon.model import Model, iter_graphs
from surgeon.protos import op_histogram
from surgeon.runner import RunOptions

FIRST_OPSET = 7  # the version converter's adapters start at opset 7 (onnxruntime's too)
# Ops whose input at this index holds indices; negative ones are allowed from opset 11.
INDICES_OPS = {"Gather": 1, "GatherElements": 1, "ScatterElements": 1, "Scatter": 1}
GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)

# What a blocked op would need, for the cases users meet most (the list); any
# other op gets the generic advice of _advice.
ADVICE = {
    "Resize": (
        "Resize before opset 11 has only `mode` and `scales` (no roi, sizes or "
        "coordinate_transformation_mode), and at 11 and 12 no antialias, axes or "
        "keep_aspect_ratio_policy (opset 18), and onnx has no adapter down from 13: keep "
        "the opset that has what the node uses, or re-export at the target opset so the "
        "exporter picks the older form"
    ),
    "GridSample": (
        "keep opset >= 16, or rewrite it as gathers (a bilinear gather form) before converting"
    ),
    "ConstantOfShape": (
        "fold it to a constant first (surgeon fold, once its shape input is static)"
    ),
}


class ConversionRefused(SurgeonError):
    """The model cannot be converted to the target opset; ``blockers`` lists every node
    that stops it (dicts: node, op, opset, reason, needs)."""

    def __init__(self, message: str, *, blockers: list[dict], **kwargs):
        super().__init__(message, **kwargs)
        self.blockers = blockers


def default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return 0


@functools.cache
def _first_version(op: str, domain: str) -> int | None:
    """The opset that introduced ``op`` (None: onnx does not know it)."""
    versions = [
        s.since_version
        for s in onnx.defs.get_all_schemas_with_history()
        if s.name == op and s.domain == domain
    ]
    return min(versions) if versions else None


def _schema_problem(op: str, target: int) -> str | None:
    """Why ``op`` cannot be at ``target`` (missing or deprecated), or None."""
    try:
        schema = onnx.defs.get_schema(op, target, "")
    except onnx.defs.SchemaError:
        first = _first_version(op, "")
        if first is None:
            return f"onnx has no operator {op}"
        return f"{op} exists from opset {first}"
    if schema.deprecated:
        return f"{op} is deprecated at opset {target}"
    return None


def _advice(op: str, source: int, target: int) -> str:
    if op in ADVICE:
        return ADVICE[op]
    first = _first_version(op, "")
    if first is not None and target < first:
        return f"keep opset >= {first}, or rewrite it with ops opset {target} has"
    direction = "down" if target < source else "up"
    return (
        f"onnx's converter has no adapter {direction} for this {op}: re-export at opset "
        f"{target}, or rewrite the node with ops both opsets share"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    # The converter's messages start with a C++ source location: keep what it says.
    return line.split("Assertion `false` failed: ")[-1].split(" failed: ")[-1]


def _node_key(node: onnx.NodeProto, constants, types) -> bytes:
    """Nodes that would give the same probe share one (attributes, input types and the
    values of constant inputs decide an adapter)."""
    parts = [node.domain.encode(), node.op_type.encode()]
    parts += [a.SerializeToString() for a in node.attribute]
    for name in node.input:
        if name in constants:
            parts.append(constants[name].SerializeToString().replace(name.encode(), b""))
        elif name in types:
            # dtype and rank, not dims: nodes that differ in sizes only share a probe
            t = types[name].type.tensor_type
            rank = len(t.shape.dim) if t.HasField("shape") else -1
            parts.append(f"{t.elem_type}/{rank}".encode())
        else:
            parts.append(b"?" if name else b"-")
    return b"\x00".join(parts)


def _negative_axis(node: onnx.NodeProto, constants) -> str | None:
    """What is negative in ``node`` that opsets before 11 do not take, or None."""
    axis = INDICES_OPS.get(node.op_type)
    if axis is not None and len(node.input) > axis and node.input[axis] in constants:
        if (numpy_helper.to_array(constants[node.input[axis]]) < 0).any():
            return "negative indices"
    for a in node.attribute:
        if a.name == "axis" and a.type == onnx.AttributeProto.INT and a.i < 0:
            return "a negative axis"
        if a.name == "axes" and a.type == onnx.AttributeProto.INTS and any(x < 0 for x in a.ints):
            return "negative axes"
    return None


def plan_nodes(model: Model, target: int) -> tuple[list[dict], list[list], dict]:
    """Judge every default-domain node for the conversion to ``target`` (see
    :mod:`surgeon.edits.convert_nodes`).

    Returns:
        ``(blockers, adaptations, counts)``: the blockers (node, op, reason, needs); per
        graph (in :func:`iter_graphs` order) the ``(index, probe, converted)`` of each node
        to replace (going down only: going up, onnx's converter converts the whole
        model); how many nodes were kept, adapted and probed.
    """
    proto = model.proto
    source = default_opset(proto)
    down = target < source
    inferred, _ = infer_shapes(proto)
    blockers: list[dict] = []
    plans: list[list] = []
    counts = {"kept": 0, "adapted": 0, "rewritten": 0, "probes": 0}
    seen: dict[bytes, object] = {}
    # Inference adds value_info but never nodes or graphs: both walks meet the same graphs.
    for graph, graph_inferred in zip(
        iter_graphs(proto.graph), iter_graphs(inferred.graph), strict=True
    ):
        types = known_types(graph, graph_inferred)
        elem_types = {n: v.type.tensor_type.elem_type for n, v in types.items()}
        constants = constants_of(graph)
        adapted: list = []
        plans.append(adapted)
        for index, node in enumerate(graph.node):
            if node.domain not in DEFAULT_DOMAINS:
                continue  # the converter leaves other domains alone
            out = node.output[0] if node.output else "?"
            where = (
                f"`{node.name}` ({node.op_type})"
                if node.name
                else f"the {node.op_type} writing `{out}`"
            )
            op = node.op_type

            def block(reason, needs=None, op=op, where=where):
                blockers.append(
                    {
                        "node": where,
                        "op": op,
                        "reason": reason,
                        "needs": needs or _advice(op, source, target),
                    }
                )

            reason = _schema_problem(op, target)
            if reason:
                block(reason)
                continue
            if target < 11 and (negative := _negative_axis(node, constants)):
                block(
                    f"{negative}, which {op} takes only from opset 11",
                    "non-negative values (add the axis size, or the rank, to each negative one)",
                )
                continue
            old = onnx.defs.get_schema(op, target, "")
            new = onnx.defs.get_schema(op, source, "")
            if down and op in COERCING_OPS and old.since_version < 13 <= new.since_version:
                rank = _rank(types.get(node.input[0]))
                nodes, why = last_axis_rewrite(node, rank, new)
                misfit = type_problem(node, old, elem_types)
                if misfit:
                    block(misfit, "that opset, or a Cast to a type the older op takes")
                elif why:
                    block(why, "a static rank (reshape-io), or keep opset >= 13")
                else:
                    counts["adapted"] += 1
                    counts["rewritten"] += 1
                    adapted.append(
                        (
                            index,
                            *_rewritten_probe(node, nodes, types, constants, proto, new, target),
                        )
                    )
                continue
            filled = fill_omitted_inputs(node, old) if down else None
            if filled is not None and same_meaning(filled[0], new, old, elem_types):
                counts["adapted"] += 1
                counts["rewritten"] += 1
                adapted.append(
                    (index, *_filled_probe(node, filled, types, constants, proto, new, target))
                )
                continue
            if old.since_version == new.since_version or (
                down and same_meaning(node, new, old, elem_types)
            ):
                counts["kept"] += 1
                continue
            if any(a.type in GRAPH_ATTRIBUTES for a in node.attribute):
                if down:
                    block(f"no adapter for {op} with a subgraph from opset {new.since_version}")
                continue  # going up, the whole-model conversion adapts it
            key = _node_key(node, constants, types)
            if key not in seen:
                counts["probes"] += 1
                seen[key] = _probe(node, types, constants, proto, source, target, new)
            found = seen[key]
            if isinstance(found, str):
                if down:
                    # a type the older op lacks explains more than the converter's words
                    misfit = type_problem(node, old, elem_types)
                    if misfit:
                        block(misfit, "that opset, or a Cast to a type the older op takes")
                    else:
                        block(found)
                # going up, a failed probe is only a hint: the whole-model conversion decides
            elif found is not None:
                probe, converted = found
                counts["adapted"] += 1
                if down:
                    adapted.append((index, probe, converted))
    return blockers, plans, counts


def _rank(info) -> int | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _filled_probe(node, filled, types, constants, proto, schema, target: int):
    """``(probe, converted)`` for a node kept with empty constants in the inputs it
    omits (:func:`~surgeon.edits.convert_nodes.fill_omitted_inputs`), in the form
    :func:`~surgeon.edits.convert_nodes.splice` takes."""
    return _rewritten_probe(node, [filled[0]], types, constants, proto, schema, target, filled[1])


def _rewritten_probe(node, nodes, types, constants, proto, schema, target: int, tensors=()):
    """``(probe, converted)`` for a node that surgeon rewrites itself as ``nodes`` (and
    constant ``tensors``), in the form :func:`~surgeon.edits.convert_nodes.splice` takes."""
    probe, _ = probe_model(node, types, constants, proto, schema)
    converted = onnx.ModelProto()
    converted.CopyFrom(probe)
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    converted.graph.initializer.extend(tensors)
    for o in converted.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            o.version = target
    return probe, converted


def _probe(node, types, constants, proto, source: int, target: int, schema):
    """``(probe, converted)`` for a node that converts alone, or why it does not."""
    from onnx import version_converter

    probe, guessed = probe_model(node, types, constants, proto, schema)
    guess = (
        f" (probed with guessed types for {', '.join(f'`{g}`' for g in guessed)})"
        if guessed
        else ""
    )
    try:
        converted = version_converter.convert_version(probe, target)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, IndexError...
        return _first_line(e) + guess
    drop_default_attributes(converted.graph.node, source, target)
    for n in converted.graph.node:
        if n.domain in DEFAULT_DOMAINS and (reason := _schema_problem(n.op_type, target)):
            return reason
    try:
        for n in converted.graph.node:
            onnx.checker.check_node(n, _checker_context(target))
    except onnx.checker.ValidationError as e:
        return _first_line(e) + guess
    return probe, converted


def _checker_context(target: int):
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", target)])
    ctx.opset_imports = {"": target}
    return ctx


def plan_convert(model: Model, opset: int) -> tuple[int, list[list], dict]:
    """Check the target opset and judge every node; returns the model's own opset, the
    node replacements (going down) and the counts of :func:`plan_nodes`.

    Raises:
        UsageError: No default-domain opset, a target outside what onnx knows, or the
            model's own opset.
        ConversionRefused: Nodes that block the conversion (every one of them).
    """
    source = default_opset(model.proto)
    latest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise UsageError(f"the target opset must be an integer, not {opset!r}")
    if not FIRST_OPSET <= opset <= latest:
        raise UsageError(
            f"cannot convert {model.name} to opset {opset}: this onnx converts between "
            f"opsets {FIRST_OPSET} and {latest}"
        )
    if source == 0:
        raise UsageError(f"{model.name} imports no default-domain opset: nothing to convert")
    if source == opset:
        raise UsageError(f"{model.name} is at opset {opset} already: nothing to convert")
    blockers, plans, counts = plan_nodes(model, opset)
    if blockers:
        _refuse(model, source, opset, blockers)
    return source, plans, counts


def _refuse(model: Model, source: int, target: int, blockers: list[dict], why: str = ""):
    ops = sorted({b["op"] for b in blockers})
    raise ConversionRefused(
        f"cannot convert {model.name} from opset {source} to {target}: {len(blockers)} node(s) "
        f"block it ({', '.join(ops)})" + (f"; {why}" if why else ""),
        blockers=blockers,
        problems=[f"{b['node']}: {b['reason']}; needs: {b['needs']}" for b in blockers],
        hint="Nothing was converted or written.",
    )


def _convert_up(model: Model, source: int, target: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model.proto, target)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, IndexError...
        _refuse(model, source, target, [_whole(_first_line(e))])


def _convert_down(proto: onnx.ModelProto, plans: list[list], source: int, target: int) -> None:
    """Splice each adapted node in (last first, so earlier indices hold), set the opset,
    and drop the main-graph constants the adapters stopped reading (an ``axes`` input
    that became an attribute)."""
    taken = {o for g in iter_graphs(proto.graph) for n in g.node for o in n.output}
    taken |= {t.name for g in iter_graphs(proto.graph) for t in g.initializer}
    taken |= {v.name for g in iter_graphs(proto.graph) for v in g.input}
    for graph, adapted in zip(iter_graphs(proto.graph), plans, strict=True):
        for index, probe, converted in reversed(adapted):
            splice(graph, index, probe, converted, taken)
    for g in iter_graphs(proto.graph):
        drop_default_attributes(g.node, source, target)
    for o in proto.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            o.version = target
    read = {i for g in iter_graphs(proto.graph) for n in g.node for i in n.input}
    read |= {v.name for v in proto.graph.output}
    g = proto.graph
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = [n for n in g.node if n.op_type != "Constant" or any(o in read for o in n.output)]
    del g.node[:]
    g.node.extend(nodes)


def _whole(reason: str, op: str = "-") -> dict:
    return {
        "node": "(the model as a whole)",
        "op": op,
        "reason": reason,
        "needs": "a look at the node the reason names",
    }


def _check_converted(model: Model, proto: onnx.ModelProto, source: int, target: int) -> None:
    stale = sorted(
        {
            n.op_type
            for g in iter_graphs(proto.graph)
            for n in g.node
            if n.domain in DEFAULT_DOMAINS and _schema_problem(n.op_type, target)
        }
    )
    if stale:
        _refuse(
            model,
            source,
            target,
            [
                {
                    "node": "(after conversion)",
                    "op": op,
                    "reason": _schema_problem(op, target),
                    "needs": _advice(op, source, target),
                }
                for op in stale
            ],
        )
    from surgeon.graph_facts import inference_skeleton

    # On skeletons (large and external weights as typed inputs): the checker reads an
    # external tensor's file from the current folder, so it refused every model with
    # weights on disk, and the converted one went unchecked.
    try:
        onnx.checker.check_model(inference_skeleton(model))
    except onnx.checker.ValidationError:
        return  # the checker refuses the original already: onnxruntime's load decides
    try:
        onnx.checker.check_model(inference_skeleton(Model(proto)))
    except onnx.checker.ValidationError as e:
        reason = f"the converted model is not valid: {_first_line(e)}"
        # The checker names the node ("Node (up)'s input 1 ..."): name it as a blocker.
        named = re.search(r"Node \(([^)]*)\)", str(e))
        nodes = {n.name: n for g in iter_graphs(proto.graph) for n in g.node if n.name}
        node = nodes.get(named.group(1)) if named else None
        if node is None:
            _refuse(model, source, target, [_whole(reason)])
        _refuse(
            model,
            source,
            target,
            [
                {
                    "node": f"`{node.name}` ({node.op_type})",
                    "op": node.op_type,
                    "reason": reason,
                    "needs": _advice(node.op_type, source, target),
                }
            ],
        )


def convert(
    model: Model,
    opset: int,
    *,
    verify: bool = True,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    tolerance: Tolerance = Tolerance(),
) -> Edited:
    """Convert ``model`` to default-domain opset ``opset``, then prove the outputs hold.

    Args:
        model: The model (not modified).
        opset: The target opset, up or down.
        verify: Run the comparison with the original.
        feed_options: The inputs for the comparison.
        options: onnxruntime settings of both sides (default: optimisations off).
        tolerance: When values count as equal.

    Returns:
        Edited whose ``details`` hold ``from``/``to`` opsets, ``ir_version``, ``op_types``
        (before/after per op type) and ``probes`` (nodes probed, distinct probes).

    Raises:
        UsageError: A target opset out of range or the model's own.
        ConversionRefused: Nodes block the conversion (each named, with what it needs).
    """
    source, plans, counts = plan_convert(model, opset)

    def change(proto: onnx.ModelProto) -> onnx.ModelProto:
        if opset > source:
            converted = _convert_up(model, source, opset)
        else:
            converted = onnx.ModelProto()
            converted.CopyFrom(model.proto)
            _convert_down(converted, plans, source, opset)
        _check_converted(model, converted, source, opset)
        # The converter keeps the IR version; a newer opset may need a newer one.
        needed = helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
        converted.ir_version = max(converted.ir_version, needed)
        return converted

    def correspondence(edited: Model) -> Correspondence:
        title = f"convert: outputs unchanged at opset {opset}"
        feeds = make_feeds(model, feed_options)
        return runtime_correspondence(title, edited, model, feeds, options, tolerance)

    def finish(edited: Model, report: DiffReport, values) -> None:
        if report.tensors:  # not when the model did not run at all
            verify_other_size(edited, model, report, feed_options, options, tolerance)

    def details(edited: Model, report) -> dict:
        before = op_histogram(model.proto, include_subgraphs=True)
        after = op_histogram(edited.proto, include_subgraphs=True)
        return {
            "from": source,
            "to": opset,
            "ir_version": {"before": model.proto.ir_version, "after": edited.proto.ir_version},
            "op_types": {
                op: {"before": before.get(op, 0), "after": after.get(op, 0)}
                for op in sorted(set(before) | set(after))
            },
            "nodes": {"before": sum(before.values()), "after": sum(after.values())},
            "nodes_kept": counts["kept"],
            "nodes_adapted": counts["adapted"],
            "nodes_rewritten": counts["rewritten"],
            "probes": counts["probes"],
        }

    return apply_edit(
        model,
        "convert",
        {"opset": opset},
        change,
        correspondence,
        check=Check(
            verify, None, feed_options, options or RunOptions(optimization="disabled"), tolerance
        ),
        label=f"opset {opset}",
        copy=False,
        details=details,
        finish=finish,
    )
