"""The operations that rewire the graph: bypass, delete, insert-after, op-type.

What each does exactly is in :mod:`surgeon.edits.node_edits_graph`'s docstring; the
attribute and initializer operations live there too. Every function checks its operation
against the model as the operations before it left it, raises a
:class:`~surgeon.errors.SurgeonError` before changing anything, and returns a record.
"""

from __future__ import annotations

import onnx
from onnx import helper

from surgeon.edits.node_edits_graph import (
    all_names,
    attribute_kind,
    attribute_text,
    find_node,
    forget_declarations,
    is_read,
    node_label,
    readers,
    reroute,
    tensor_names,
    unique,
)
from surgeon.edits.node_edits_ops import (
    IDENTIFIER,
    BypassNode,
    ChangeOpType,
    DeleteNode,
    InsertNode,
    make_attribute,
    opset_version,
    schema_of,
    type_text,
)
from surgeon.errors import UsageError, close_matches, unknown_name


def _dtypes(proto: onnx.ModelProto) -> dict[str, str]:
    """Element types ONNX shape inference knows (empty where it gives up)."""
    from surgeon.graph_facts import inferred_infos
    from surgeon.model import Model

    return {k: v.dtype for k, v in inferred_infos(Model(proto)).items() if v.dtype}


def _pass_on(proto, index: int, what: str) -> dict:
    """Remove node ``index``, its readers reading its first input instead (see the
    module docstring of node_edits_graph). Returns the record's wiring facts."""
    graph = proto.graph
    node = graph.node[index]
    source = next((x for x in node.input if x), None)
    outputs = [o for o in node.output if o]
    graph_outputs = {o.name for o in graph.output}
    first = outputs[0] if outputs else None
    others = [o for o in outputs[1:] if is_read(graph, o)]
    if others:
        raise UsageError(
            f"{what}: only its first output can be passed on, and "
            + ", ".join(f"`{o}`" for o in others)
            + " is read too"
        )
    if first is None or not is_read(graph, first):
        del graph.node[index]
        return {"rewired": 0, "from": first, "to": source, "identity": False}
    if source is None:
        raise UsageError(
            f"{what}: it has no input to pass on, and `{first}` is read",
            hint="Change the value it gives instead (a Constant's `value` attribute), or delete its readers first.",
        )
    types = _dtypes(proto)
    if types.get(source) and types.get(first) and types[source] != types[first]:
        raise UsageError(
            f"{what}: its input `{source}` is {types[source]} but its output `{first}` is "
            f"{types[first]}; the readers of `{first}` would get the wrong type",
            hint="Insert a Cast, or change the op type instead.",
        )
    if first in graph_outputs:
        # The output keeps its name: an Identity of the input writes it.
        identity = helper.make_node(
            "Identity",
            [source],
            [first],
            name=unique(f"{node.name or first}__bypass", [n.name for n in graph.node]),
        )
        graph.node[index].CopyFrom(identity)
        forget_declarations(graph, [first])
        return {
            "rewired": len(readers(graph, first)),
            "from": first,
            "to": source,
            "identity": True,
        }
    del graph.node[index]
    count = reroute(graph, first, source)
    forget_declarations(graph, outputs)
    return {"rewired": count, "from": first, "to": source, "identity": False}


def apply_bypass(proto, op: BypassNode, where: str) -> dict:
    index = find_node(proto, op.node, where)
    node = onnx.NodeProto()
    node.CopyFrom(proto.graph.node[index])
    facts = _pass_on(proto, index, f"bypass {node_label(node)}")
    return {
        "node": node.name or node.output[0],
        "op_type": node.op_type,
        **facts,
        "text": _wired_text(node, facts),
    }


def _wired_text(node, facts) -> str:
    text = f"{node_label(node)} removed"
    if facts["identity"]:
        return text + f"; graph output `{facts['from']}` is now Identity(`{facts['to']}`)"
    if facts["rewired"]:
        return text + f"; {facts['rewired']} reader(s) of `{facts['from']}` read `{facts['to']}`"
    return text + " (its outputs were not read)"


def apply_delete(proto, op: DeleteNode, where: str) -> dict:
    graph = proto.graph
    index = find_node(proto, op.node, where)
    node = onnx.NodeProto()
    node.CopyFrom(graph.node[index])
    upstream = _ancestors(graph, index)
    facts = _pass_on(proto, index, f"delete {node_label(node)}")
    removed_nodes, removed_inits = _prune(graph, upstream)
    text = _wired_text(node, facts)
    if removed_nodes or removed_inits:
        text += f"; {len(removed_nodes)} node(s) and {len(removed_inits)} initializer(s) that only fed it removed"
    return {
        "node": node.name or node.output[0],
        "op_type": node.op_type,
        **facts,
        "removed_nodes": removed_nodes,
        "removed_initializers": removed_inits,
        "text": text,
    }


def _ancestors(graph: onnx.GraphProto, index: int) -> set[str]:
    """Output names of every node upstream of node ``index`` (the first one of each
    node identifies it), and the tensors it reads."""
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    from surgeon.graph_facts import subgraph_reads

    seen: set[int] = set()
    names: set[str] = set()
    stack = [index]
    while stack:
        i = stack.pop()
        node = graph.node[i]
        for name in [x for x in node.input if x] + subgraph_reads(node):
            names.add(name)
            j = producers.get(name)
            if j is not None and j not in seen:
                seen.add(j)
                stack.append(j)
    return names


def _prune(graph: onnx.GraphProto, upstream: set[str]) -> tuple[list[str], list[str]]:
    """Remove nodes writing only ``upstream`` tensors that nothing reads any more, until
    none is left; then initializers in ``upstream`` that nothing reads."""
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        for i in range(len(graph.node) - 1, -1, -1):
            node = graph.node[i]
            outs = [o for o in node.output if o]
            if (
                outs
                and all(o in upstream for o in outs)
                and not any(is_read(graph, o) for o in outs)
            ):
                removed.append(node.name or outs[0])
                del graph.node[i]
                changed = True
    inputs = {v.name for v in graph.input}
    keep, dropped = [], []
    for t in graph.initializer:
        if t.name in upstream and t.name not in inputs and not is_read(graph, t.name):
            dropped.append(t.name)
        else:
            keep.append(t)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed, dropped


# ------------------------------------------------------------------ insert-after
def _check_op(proto, op_type: str, domain: str, what: str):
    """The schema of a known op; None for a custom domain. Raises for an unknown op."""
    if not IDENTIFIER.match(op_type):
        raise UsageError(f"{what}: `{op_type}` is not an op type name")
    schema = schema_of(op_type, domain, proto)
    if schema is None and domain in ("", "ai.onnx"):
        version = opset_version(proto, "")
        known = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""})
        near = close_matches(op_type, known)
        raise UsageError(
            f"{what}: ONNX has no op `{op_type}` at opset {version}"
            + ("; did you mean " + ", ".join(f"`{m}`" for m in near) + "?" if near else ""),
            hint="A custom op needs its domain (domain in the API or a --plan file).",
        )
    return schema


def _attributes(proto, node: onnx.NodeProto, attributes, what: str) -> list:
    made, problems = [], []
    for key, value in (attributes or {}).items():
        if not isinstance(key, str) or not IDENTIFIER.match(key):
            problems.append(f"`{key}` is not an attribute name")
            continue
        try:
            kind, source = attribute_kind(proto, node, key, value, what)
            made.append(make_attribute(key, value, kind))
        except UsageError as e:
            problems.append(e.message)
    if problems:
        raise UsageError(f"{what}: bad attributes", problems=problems)
    return made


def _required_missing(schema, node: onnx.NodeProto) -> list[str]:
    have = {a.name for a in node.attribute}
    return sorted(n for n, a in schema.attributes.items() if a.required and n not in have)


def apply_insert(proto, op: InsertNode, where: str) -> dict:
    graph = proto.graph
    what = f"insert-after `{op.tensor}`"
    names = tensor_names(graph)
    missing = [t for t in (op.tensor, *op.extra_inputs) if t not in names]
    if missing:
        raise unknown_name("tensor", missing[0], names, where)
    domain = op.domain or ""
    schema = _check_op(proto, op.op_type, domain, what)
    taken_nodes = [n.name for n in graph.node]
    if op.name is not None and op.name in taken_nodes:
        raise UsageError(f"{what}: a node is already called `{op.name}`")
    node = helper.make_node(
        op.op_type,
        [op.tensor, *op.extra_inputs],
        ["pending"],
        name=op.name or unique(f"{op.op_type}_after_{op.tensor}", taken_nodes),
        domain=domain,
    )
    node.attribute.extend(_attributes(proto, node, op.attributes, what))
    if schema is not None:
        given = 1 + len(op.extra_inputs)
        if not schema.min_input <= given <= schema.max_input:
            raise UsageError(
                f"{what}: {op.op_type} takes {schema.min_input}..{schema.max_input} inputs, "
                f"not {given}",
                hint="Name its other inputs with extra_inputs (in the API or a --plan file).",
            )
        if _required_missing(schema, node):
            raise UsageError(
                f"{what}: {op.op_type} requires attribute(s) "
                + ", ".join(_required_missing(schema, node))
            )
    if domain not in ("", "ai.onnx") and opset_version(proto, domain) is None:
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    taken = all_names(graph)
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    graph_outputs = {o.name for o in graph.output}
    renamed = None
    if op.tensor in graph_outputs and op.tensor in producers:
        # The graph output keeps its name: the producer's output is renamed and the
        # new node writes the output's name; every other reader reads the new value.
        renamed = unique(f"{op.tensor}__before_{op.op_type}", taken)
        producer = graph.node[producers[op.tensor]]
        producer.output[list(producer.output).index(op.tensor)] = renamed
        node.input[0] = renamed
        node.output[0] = op.tensor
        count = len(readers(graph, op.tensor))
    else:
        node.output[0] = unique(f"{op.tensor}__{op.op_type}", taken)
        count = reroute(graph, op.tensor, node.output[0])
    position = max(
        [producers[x] + 1 for x in [op.tensor, *op.extra_inputs] if x in producers] or [0]
    )
    graph.node.insert(position, node)
    forget_declarations(graph, [op.tensor])
    _toposort(graph)
    text = f"{node.op_type} `{node.name}` inserted after `{op.tensor}`"
    if renamed:
        text += f" (writes graph output `{op.tensor}`; the old value is `{renamed}`)"
    elif count:
        text += f"; {count} reader(s) read `{node.output[0]}`"
    return {
        "node": node.name,
        "op_type": node.op_type,
        "domain": domain,
        "tensor": op.tensor,
        "output": node.output[0],
        "renamed": renamed,
        "attributes": {a.name: attribute_text(a) for a in node.attribute},
        "text": text,
    }


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder the nodes topologically when they are not (keeping the order otherwise)."""
    from surgeon.graph_facts import GraphFacts

    order = GraphFacts(graph).node_order()
    if order != list(range(len(graph.node))) and len(order) == len(graph.node):
        nodes = [graph.node[i] for i in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes, strict=True):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


# ------------------------------------------------------------------ op-type
def apply_op_type(proto, op: ChangeOpType, where: str) -> dict:
    graph = proto.graph
    index = find_node(proto, op.node, where)
    node = graph.node[index]
    what = f"op-type of {node_label(node)}"
    domain = node.domain if op.domain is None else op.domain
    schema = _check_op(proto, op.op_type, domain, what)
    before = (node.op_type, node.domain)
    if schema is not None:
        problems = []
        for attr in node.attribute:
            spec = schema.attributes.get(attr.name)
            if spec is None:
                problems.append(
                    f"attribute `{attr.name}` ({attribute_text(attr)}) is unknown to {op.op_type}"
                    + " (remove it first: operations apply in the order given)"
                )
            elif int(spec.type) != attr.type:
                problems.append(
                    f"attribute `{attr.name}` is {type_text(attr.type)}; {op.op_type} takes "
                    f"{type_text(int(spec.type))}"
                )
        inputs = len(node.input)
        if not schema.min_input <= inputs <= schema.max_input:
            problems.append(
                f"it has {inputs} input(s); {op.op_type} takes {schema.min_input}..{schema.max_input}"
            )
        if len(node.output) > schema.max_output:
            problems.append(
                f"it has {len(node.output)} outputs; {op.op_type} at most {schema.max_output}"
            )
        problems += [
            f"{op.op_type} requires attribute `{a}`" for a in _required_missing(schema, node)
        ]
        if problems:
            raise UsageError(f"{what}: cannot become {op.op_type}", problems=problems)
    if domain not in ("", "ai.onnx") and opset_version(proto, domain) is None:
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    node.op_type = op.op_type
    node.domain = domain
    forget_declarations(graph, node.output)
    old = before[0] if before[1] in ("", "ai.onnx") else f"{before[1]}::{before[0]}"
    new = op.op_type if domain in ("", "ai.onnx") else f"{domain}::{op.op_type}"
    return {
        "node": node.name or node.output[0],
        "before": old,
        "after": new,
        "text": f"{node_label(node)}: op type {old} -> {new}",
    }
