"""The rename edit: new names for a model's inputs, outputs (and other tensors or nodes).

"Unchanged" for a rename means: the renamed model gives the same values, bit for bit,
under the new names. Every reference is updated: node inputs and outputs, graph inputs
and outputs, value_info, initializers, quantization annotations, and the outer-scope
reads of If/Loop/Scan bodies (a body that defines a tensor of the same name shadows the
outer one, so its references are left alone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import onnx

from surgeon.compare import Tolerance
from surgeon.edits import Edited
from surgeon.edits.contract import Check, Correspondence, apply_edit
from surgeon.errors import NameNotFoundError, UsageError, unknown_name
from surgeon.feeds import FeedOptions
from surgeon.model import Model, iter_graphs
from surgeon.runner import RunOptions


def parse_regex(spec: str | tuple[str, str]) -> tuple[re.Pattern, str]:
    """``'PATTERN=REPLACEMENT'`` (split at the last ``=``, so lookaheads like ``(?=x)``
    stay in the pattern) or a ``(pattern, replacement)`` pair, compiled.

    Raises:
        UsageError: No ``=``, or the pattern is not a valid regular expression.
    """
    if isinstance(spec, str):
        pattern, sep, repl = spec.rpartition("=")
        if not sep or not pattern:
            raise UsageError(
                f"cannot read the regex `{spec}`: expected PATTERN=REPLACEMENT, e.g. '^output(\\d+)$=preds\\1'"
            )
    else:
        pattern, repl = spec
    try:
        return re.compile(pattern), repl
    except re.error as e:
        raise UsageError(f"`{pattern}` is not a valid regular expression: {e}") from None


def _apply(name: str, prefix: str | None, regex: tuple[re.Pattern, str] | None) -> str:
    if regex is not None:
        try:
            name = regex[0].sub(regex[1], name)
        except (re.error, IndexError) as e:  # a bad group reference in the replacement
            raise UsageError(f"cannot apply the replacement `{regex[1]}`: {e}") from None
    if prefix:
        name = prefix + name
    return name


def _all_tensor_names(proto: onnx.ModelProto) -> dict[str, str]:
    """Every tensor name in the model (subgraphs included) -> what it is."""
    roles: dict[str, str] = {}
    main = proto.graph
    for g in iter_graphs(main):
        where = "" if g is main else " inside a subgraph"
        for v in g.input:
            roles.setdefault(v.name, "a graph input" + where)
        for t in g.initializer:
            roles.setdefault(t.name, "an initializer" + where)
        for n in g.node:
            for o in n.output:
                if o:
                    roles.setdefault(o, "an intermediate tensor" + where)
        for v in g.output:
            roles.setdefault(v.name, "a graph output" + where)
    for v in main.output:  # an output's role wins over "intermediate" in messages
        roles[v.name] = "a graph output"
    return roles


def plan_rename(
    model: Model,
    mapping: Mapping[str, str] | None = None,
    *,
    prefix: str | None = None,
    regex: str | tuple[str, str] | None = None,
    nodes: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """Work out the tensor and node renames, and check them.

    Explicit ``mapping`` entries may name any main-graph tensor; ``prefix`` and
    ``regex`` apply to the graph inputs and outputs not named in ``mapping`` (the regex
    first, then the prefix), and with ``nodes`` to main-graph node names as well.

    Returns:
        ``(tensor_map, node_map)``, old -> new, without entries that change nothing.

    Raises:
        NameNotFoundError: ``mapping`` names tensors that do not exist.
        UsageError: Nothing to do, a regex that matches nothing, empty new names, or
            collisions (every one is listed).
    """
    mapping = dict(mapping or {})
    compiled = parse_regex(regex) if regex is not None else None
    if not mapping and not prefix and compiled is None:
        raise UsageError(f"nothing to rename in {model.name}: give a mapping, a prefix or a regex")
    proto = model.proto
    roles = _all_tensor_names(proto)
    main_tensors = model.tensor_names()
    unknown = [
        unknown_name("tensor", old, main_tensors, model.name, model_path=model.path)
        for old in mapping
        if old not in set(main_tensors)
    ]
    if len(unknown) == 1:
        raise unknown[0]
    if unknown:
        raise NameNotFoundError(
            f"{len(unknown)} unknown tensor names to rename in {model.name}",
            name=unknown[0].name,
            suggestions=unknown[0].suggestions,
            problems=[e.message for e in unknown],
        )
    io_names = list(dict.fromkeys(model.input_names + model.output_names))
    tensor_map = dict(mapping)
    if prefix or compiled is not None:
        for name in io_names:
            if name not in tensor_map:
                tensor_map[name] = _apply(name, prefix, compiled)
    node_map: dict[str, str] = {}
    if nodes:
        if not prefix and compiled is None:
            raise UsageError(
                "renaming nodes (nodes=True; --nodes on the command line) needs a prefix or a "
                "regex; give one"
            )
        for n in proto.graph.node:
            if n.name:
                node_map[n.name] = _apply(n.name, prefix, compiled)
    if compiled is not None and not prefix:
        targets = io_names + (list(node_map) if nodes else [])
        if not any(compiled[0].search(t) for t in targets):
            raise UsageError(
                f"the regex `{compiled[0].pattern}` matches none of the "
                f"{'inputs, outputs or nodes' if nodes else 'inputs or outputs'} of {model.name}",
                hint="Inputs and outputs: " + ", ".join(f"`{n}`" for n in io_names[:10]),
            )
    tensor_map = {k: v for k, v in tensor_map.items() if k != v}
    node_map = {k: v for k, v in node_map.items() if k != v}
    problems = _collisions(tensor_map, roles, "tensor")
    problems += _collisions(
        node_map,
        {n.name: "node" for g in iter_graphs(proto.graph) for n in g.node if n.name},
        "node",
    )
    if problems:
        raise UsageError(
            f"cannot rename in {model.name}: {len(problems)} name collision"
            + ("s" if len(problems) > 1 else ""),
            problems=problems,
            hint="Choose new names that are not taken, or rename the existing ones too.",
        )
    return tensor_map, node_map


def _collisions(mapping: Mapping[str, str], existing: Mapping[str, str], kind: str) -> list[str]:
    problems = []
    targets: dict[str, list[str]] = {}
    for old, new in mapping.items():
        if not new:
            problems.append(f"{kind} `{old}` would get an empty name")
            continue
        targets.setdefault(new, []).append(old)
    for new, olds in targets.items():
        if len(olds) > 1:
            problems.append(
                f"{', '.join(f'`{o}`' for o in olds)} would {'both' if len(olds) == 2 else 'all'} "
                f"become {kind} `{new}`"
            )
        # A name being renamed away is free (this allows swaps: a->b, b->a).
        if new in existing and new not in mapping:
            problems.append(
                f"`{olds[0]}` -> `{new}`: `{new}` is already taken by {existing[new]}"
                if kind == "tensor"
                else f"node `{olds[0]}` -> `{new}`: a node is already called `{new}`"
            )
    return problems


def _rename_graph(graph: onnx.GraphProto, tmap: Mapping[str, str], nmap: Mapping[str, str]) -> None:
    def r(name: str) -> str:
        return tmap.get(name, name)

    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = r(v.name)
    for t in graph.initializer:
        t.name = r(t.name)
    for s in graph.sparse_initializer:
        s.values.name = r(s.values.name)
    for q in graph.quantization_annotation:
        q.tensor_name = r(q.tensor_name)
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x:
                n.input[i] = r(x)
        for i, x in enumerate(n.output):
            if x:
                n.output[i] = r(x)
        if n.name in nmap:
            n.name = nmap[n.name]
        for attr in n.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                # Names the body defines itself shadow the outer ones: leave them alone.
                local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
                local |= {o for m in sub.node for o in m.output if o}
                inner = {k: v for k, v in tmap.items() if k not in local}
                if inner:
                    _rename_graph(sub, inner, {})


def rename(
    model: Model,
    mapping: Mapping[str, str] | None = None,
    *,
    prefix: str | None = None,
    regex: str | tuple[str, str] | None = None,
    nodes: bool = False,
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    verify: bool = True,
    tolerance: Tolerance = Tolerance(),
) -> Edited:
    """Rename tensors (usually graph inputs and outputs) and, optionally, nodes.

    Args:
        model: The model (not modified).
        mapping: Old tensor name -> new name; any main-graph tensor may be named.
        prefix: Put in front of every graph input and output name not in ``mapping``
            (and every node name with ``nodes``).
        regex: ``'PATTERN=REPLACEMENT'`` or ``(pattern, replacement)``: ``re.sub`` on the
            same names (applied before ``prefix``).
        nodes: Also rename main-graph node names with ``prefix``/``regex``.
        feeds, feed_options, options: Inputs and onnxruntime settings for the check.
        verify: Check that every output (and renamed intermediate tensor) has the same
            values under its new name: bit for bit, unless ``tolerance`` relaxes it.

    Returns:
        Edited; ``details["tensors"]`` lists ``{old, new, role}`` and
        ``details["nodes"]`` ``{old, new}``.

    Raises:
        NameNotFoundError: Unknown old names (with suggestions).
        UsageError: Collisions with existing names (all listed), empty names, a regex
            that matches nothing.
    """
    tensor_map, node_map = plan_rename(model, mapping, prefix=prefix, regex=regex, nodes=nodes)
    params = {
        "mapping": dict(mapping or {}),
        "prefix": prefix,
        "regex": regex if isinstance(regex, str) or regex is None else "=".join(regex),
        "nodes": nodes,
    }
    inputs, outputs = set(model.input_names), model.output_names
    inits = {t.name for t in model.proto.graph.initializer}

    def correspondence(renamed: Model) -> Correspondence:
        # Same values under the new names: every output, and every renamed intermediate
        # tensor; inputs are checked by feeding them under their new names, initializers
        # are constants.
        pairs = [(tensor_map.get(o, o), o) for o in outputs]
        pairs += [
            (new, old)
            for old, new in tensor_map.items()
            if old not in inputs and old not in set(outputs) and old not in inits
        ]
        return Correspondence(
            "rename: same values under the new names", pairs=pairs, name_map=tensor_map
        )

    def role(name: str) -> str:
        if name in inputs:
            return "input"
        if name in set(outputs):
            return "output"
        return "initializer" if name in inits else "tensor"

    return apply_edit(
        model,
        "rename",
        params,
        lambda proto: _rename_graph(proto.graph, tensor_map, node_map),
        correspondence,
        check=Check(verify, feeds, feed_options, options, tolerance),
        label="renamed",
        details=lambda renamed, report: {
            "tensors": [{"old": o, "new": n, "role": role(o)} for o, n in tensor_map.items()],
            "nodes": [{"old": o, "new": n} for o, n in node_map.items()],
        },
    )
