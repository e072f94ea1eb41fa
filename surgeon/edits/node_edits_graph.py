"""Applying the operations of :mod:`surgeon.edits.node_edits_ops` to a ModelProto.

Each ``apply_*`` function checks its operation against the model as the operations before
it left it (so ``--remove-attribute`` then ``--op-type`` works in that order), changes
the proto in place and returns a record of what it did (JSON-able: the report lists it).
A problem is a :class:`~surgeon.errors.SurgeonError` raised before anything is changed.

What the graph-level operations do exactly:

- **bypass** NODE: the node is removed and every reader of its first output (nodes, and
  If/Loop/Scan bodies reading it from outside) reads its first input instead. Refused
  when another output of it is read, and when ONNX shape inference knows both dtypes and
  they differ (that model could not load; insert a Cast instead). A node whose first
  output is a graph output is replaced by an ``Identity`` of its first input, so the
  output keeps its name.
- **delete** NODE: a bypass when its outputs are read; then every node upstream of it
  that no longer feeds anything, and every initializer only those nodes read, is removed
  too. Nothing else: unused parts the model already had stay.
- **insert-after** TENSOR: the new node reads TENSOR, every reader of TENSOR reads the new
  output. After a graph output the producer's output is renamed (``y__before_Sigmoid``)
  and the new node writes the graph output's name, so the outputs keep their names.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from surgeon.edits.node_edits_ops import (
    IDENTIFIER,
    RemoveAttribute,
    ReplaceInitializer,
    SetAttribute,
    describe_value,
    literal_type,
    load_npy,
    make_attribute,
    schema_of,
    type_text,
)
from surgeon.errors import NameNotFoundError, UsageError, close_matches, unknown_name
from surgeon.graph_facts import outer_reads, subgraph_reads
from surgeon.protos import dtype_name


# ------------------------------------------------------------------ lookups
def node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return f"`{node.name}` ({node.op_type})"
    first = next((o for o in node.output if o), "")
    return f"the {node.op_type} writing `{first}`"


def find_node(proto: onnx.ModelProto, ref: str, where: str) -> int:
    """The index of the main-graph node named ``ref``; else of the one node that writes
    the tensor ``ref`` (unnamed nodes are common in exports).

    Raises:
        NameNotFoundError: No such node (with close node names), or the name is shared.
    """
    nodes = proto.graph.node
    named = [i for i, n in enumerate(nodes) if n.name == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise NameNotFoundError(
            f"{len(named)} nodes are called `{ref}` in {where}: name one by the tensor it writes",
            name=ref,
            suggestions=[nodes[i].output[0] for i in named if nodes[i].output],
        )
    writes = [i for i, n in enumerate(nodes) if ref in n.output]
    if len(writes) == 1:
        return writes[0]
    candidates = [n.name for n in nodes if n.name]
    candidates += [o for n in nodes if not n.name for o in n.output if o]
    error = unknown_name("node", ref, candidates, where)
    sub = _subgraph_owner(proto.graph, ref)
    if sub is not None:
        error.problems.append(
            f"`{ref}` is inside the body of {sub}: only main-graph nodes can be edited"
        )
    raise error


def _subgraph_owner(graph: onnx.GraphProto, ref: str) -> str | None:
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                for inner in body.node:
                    if ref in (inner.name, *inner.output):
                        return node_label(node)
    return None


def tensor_names(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    names += [o for n in graph.node for o in n.output if o]
    return list(dict.fromkeys(names))


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name anywhere (bodies included): a new name must clash with none."""
    names = set(tensor_names(graph)) | {v.name for v in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= all_names(body)
    return names


def unique(base: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def readers(graph: onnx.GraphProto, tensor: str) -> list[int]:
    """Indices of the main-graph nodes that read ``tensor``, directly or from a body."""
    return [i for i, n in enumerate(graph.node) if tensor in n.input or tensor in subgraph_reads(n)]


def is_read(graph: onnx.GraphProto, tensor: str) -> bool:
    return bool(readers(graph, tensor)) or tensor in {o.name for o in graph.output}


def reroute(graph: onnx.GraphProto, old: str, new: str) -> int:
    """Every read of ``old`` becomes a read of ``new`` (bodies too, where they do not
    define ``old`` themselves); returns how many nodes read it."""
    count = 0
    for node in graph.node:
        touched = False
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
                touched = True
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                if old in outer_reads(body):
                    reroute(body, old, new)
                    touched = True
        count += touched
    return count


def forget_declarations(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    """Drop value_info for ``names``: what the edit changed may no longer fit them."""
    names = set(names)
    keep = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _suggest(name: str, pool: Iterable[str]) -> str:
    near = close_matches(name, list(pool))
    return "; did you mean " + ", ".join(f"`{m}`" for m in near) + "?" if near else ""


# ------------------------------------------------------------------ attributes
def attribute_kind(proto, node: onnx.NodeProto, name: str, value, what: str) -> tuple[int, str]:
    """The type an attribute takes, and where that came from.

    Raises:
        UsageError: The op's schema does not know the attribute (with close names).
    """
    existing = next((a for a in node.attribute if a.name == name), None)
    if existing is not None:
        return existing.type, "its current value"
    schema = schema_of(node.op_type, node.domain, proto)
    if schema is None:
        return literal_type(value), "the value (no schema describes this op)"
    if name not in schema.attributes:
        known = sorted(schema.attributes)
        raise UsageError(
            f"{what}: {node.op_type} (opset {schema.since_version}) has no attribute `{name}`"
            + (_suggest(name, known) or "")
            + (f"; its attributes: {', '.join(known)}" if known else "; it takes no attributes")
        )
    return int(schema.attributes[name].type), f"the {node.op_type} schema"


def apply_set_attribute(proto, op: SetAttribute, where: str) -> dict:
    index = find_node(proto, op.node, where)
    node = proto.graph.node[index]
    what = f"set-attribute on {node_label(node)}"
    if not IDENTIFIER.match(op.attribute):
        raise UsageError(f"{what}: `{op.attribute}` is not an attribute name")
    kind, source = attribute_kind(proto, node, op.attribute, op.value, what)
    old = next((a for a in node.attribute if a.name == op.attribute), None)
    try:
        attr = make_attribute(op.attribute, op.value, kind, old)
    except UsageError as e:
        raise UsageError(
            f"{what}: `{op.attribute}` is a {type_text(kind)} attribute (from {source}), "
            f"and {e.message}"
        ) from None
    before = attribute_text(old) if old is not None else None
    kept = [a for a in node.attribute if a.name != op.attribute]
    del node.attribute[:]
    node.attribute.extend([*kept, attr])
    forget_declarations(proto.graph, node.output)
    return {
        "node": node.name or node.output[0],
        "attribute": op.attribute,
        "type": type_text(kind),
        "before": before,
        "after": attribute_text(attr),
        "text": f"{node_label(node)}.{op.attribute}: {before if before is not None else '(unset)'} -> {attribute_text(attr)}",
    }


def attribute_text(attr: onnx.AttributeProto) -> str:
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        array = numpy_helper.to_array(value)
        return f"tensor {array.dtype}{list(array.shape)}" + (
            f" {array.reshape(-1).tolist()}" if array.size <= 8 else ""
        )
    if isinstance(value, onnx.GraphProto):
        return f"graph `{value.name}`"
    # float32 values shown as float32 prints them (0.1, not 0.10000000149011612)
    if attr.type == onnx.AttributeProto.FLOAT:
        return str(np.float32(value))
    if attr.type == onnx.AttributeProto.FLOATS:
        return "[" + ", ".join(str(np.float32(v)) for v in value) + "]"
    return str(describe_value(value))


def apply_remove_attribute(proto, op: RemoveAttribute, where: str) -> dict:
    index = find_node(proto, op.node, where)
    node = proto.graph.node[index]
    what = f"remove-attribute on {node_label(node)}"
    old = next((a for a in node.attribute if a.name == op.attribute), None)
    if old is None:
        have = [a.name for a in node.attribute]
        raise UsageError(
            f"{what}: it has no attribute `{op.attribute}`"
            + _suggest(op.attribute, have)
            + (f"; it has: {', '.join(have)}" if have else "; it has none")
        )
    schema = schema_of(node.op_type, node.domain, proto)
    if schema is not None and schema.attributes.get(op.attribute) is not None:
        if schema.attributes[op.attribute].required:
            raise UsageError(f"{what}: `{op.attribute}` is required by {node.op_type}")
    kept = [a for a in node.attribute if a.name != op.attribute]
    del node.attribute[:]
    node.attribute.extend(kept)
    forget_declarations(proto.graph, node.output)
    return {
        "node": node.name or node.output[0],
        "attribute": op.attribute,
        "before": attribute_text(old),
        "text": f"{node_label(node)}.{op.attribute} removed (was {attribute_text(old)})",
    }


# ------------------------------------------------------------------ initializers
def apply_replace_initializer(proto, op: ReplaceInitializer, where: str) -> dict:
    graph = proto.graph
    index = next((i for i, t in enumerate(graph.initializer) if t.name == op.name), None)
    if index is None:
        pool = [t.name for t in graph.initializer]
        error = unknown_name("initializer", op.name, pool, where)
        if op.name in tensor_names(graph):
            error.problems.append(
                f"`{op.name}` is a tensor of {where}, but not an initializer (a weight)"
            )
        raise error
    value = op.value
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        try:
            value = load_npy(value)
        except UsageError as e:
            raise UsageError(f"initializer `{op.name}`: {e.message}", hint=e.hint) from None
    elif not isinstance(value, np.ndarray):
        raise UsageError(
            f"initializer `{op.name}`: the new value must be a numpy array or a .npy path, "
            f"not {type(value).__name__}"
        )
    elif value.dtype.kind not in "biufc":
        raise UsageError(f"initializer `{op.name}`: {value.dtype} values are not numbers")
    old = graph.initializer[index]
    before = (dtype_name(old.data_type), [int(d) for d in old.dims])
    try:
        new = numpy_helper.from_array(np.ascontiguousarray(value), op.name)
    except (TypeError, ValueError) as e:  # a dtype ONNX has no type for (e.g. float128)
        raise UsageError(f"initializer `{op.name}`: {value.dtype} cannot be stored: {e}") from None
    graph.initializer[index].CopyFrom(new)
    after = (dtype_name(new.data_type), [int(d) for d in new.dims])
    for v in graph.input:  # an initializer also listed as an input (IR < 4) follows it
        if v.name == op.name:
            v.CopyFrom(helper.make_tensor_value_info(op.name, new.data_type, after[1]))
    forget_declarations(graph, [op.name])
    changed = [
        w
        for w, a, b in (("dtype", *[before[0], after[0]]), ("shape", before[1], after[1]))
        if a != b
    ]
    source = f" from {describe_value(op.value)}" if not isinstance(op.value, np.ndarray) else ""
    return {
        "initializer": op.name,
        "before": {"dtype": before[0], "shape": before[1]},
        "after": {"dtype": after[0], "shape": after[1]},
        "changed": changed,
        "text": f"initializer `{op.name}` replaced{source}: {before[0]}{before[1]} -> {after[0]}{after[1]}"
        + (f" ({' and '.join(changed)} changed)" if changed else ""),
    }
