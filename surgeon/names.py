"""Resolving what the user names: tensor names, node names (meaning their outputs),
globs (``'backbone/*'``), op types and ``all``.

Unknown names raise one NameNotFoundError listing every unknown name with close matches.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from surgeon.errors import (
    NameNotFoundError,
    UsageError,
    close_matches,
    names_hint,
    raise_name_errors,
    unknown_name,
)
from surgeon.model import Model

GLOB_CHARS = set("*?[")


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def intermediate_tensors(model: Model) -> list[str]:
    """Every tensor a main-graph node produces, in node order (graph outputs included)."""
    names = []
    for n in model.proto.graph.node:
        names += [o for o in n.output if o]
    return list(dict.fromkeys(names))


def subgraph_tensors(model: Model) -> dict[str, str]:
    """Tensors produced inside If/Loop/Scan bodies -> the main-graph node that holds them.

    These cannot be exposed as outputs of the main graph.
    """
    from surgeon.model import iter_graphs

    found: dict[str, str] = {}
    for n in model.proto.graph.node:
        for attr in n.attribute:
            subs = [attr.g] if attr.type == attr.GRAPH else list(attr.graphs)
            for sub in subs:
                for g in iter_graphs(sub):
                    for inner in g.node:
                        for o in inner.output:
                            if o:
                                found.setdefault(o, n.name or n.op_type)
    return found


def resolve_tensors(
    model: Model,
    specs: Iterable[str],
    *,
    ops: Iterable[str] = (),
    allow_inputs: bool = True,
    what: str = "node or tensor",
    bodies: bool = False,
) -> list[str]:
    """Turn user names into tensor names of ``model``'s main graph, in the order given.

    Each spec is ``all`` (every node output), a tensor name, a node name (its outputs),
    or a glob over node and tensor names. ``ops`` adds every output of every node of
    those op types. A name that is both a node and a tensor means the tensor.
    With ``allow_inputs=False`` only node outputs and node names are accepted (and
    suggested); a graph input or weight named there is an error that says so.
    With ``bodies=True`` tensors inside If/Loop/Scan bodies count too, under their
    qualified names (``If_0/then_branch/x``, see :mod:`surgeon.edits.tap_bodies`): ``all``
    and globs include them, a qualified node name means its outputs, and a plain body
    name is accepted where it is unique (several bodies holding it is an error listing
    the qualified names).

    Raises:
        NameNotFoundError: Some names match nothing (all of them are listed, with
            suggestions; names inside subgraphs are explained).
    """
    proto = model.proto
    tensors = set(intermediate_tensors(model))
    if allow_inputs:
        tensors |= {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node if n.name}
    out: list[str] = []
    problems: list[NameNotFoundError] = []
    inner = None
    body = _BodyNames(model) if bodies else None
    graph_inputs = {v.name for v in proto.graph.input}
    weights = {t.name for t in proto.graph.initializer}
    hint = names_hint(model.path)
    for spec in specs:
        if spec == "all":
            out += intermediate_tensors(model)
            out += list(body.tensors) if body else []
        elif spec in tensors:
            out.append(spec)
        elif spec in nodes:
            out += [o for o in nodes[spec].output if o]
        elif body is not None and (found_in_body := body.resolve(spec, problems)) is not None:
            out += found_in_body
        elif is_glob(spec):
            hits = [n for n in nodes if fnmatch.fnmatchcase(n, spec)]
            found = [o for h in hits for o in nodes[h].output if o]
            ordered = list(
                dict.fromkeys([*(v.name for v in proto.graph.input), *intermediate_tensors(model)])
            )
            found += [t for t in ordered if t in tensors and fnmatch.fnmatchcase(t, spec)]
            found += body.glob(spec) if body else []
            if not found:
                problems.append(
                    NameNotFoundError(
                        f"`{spec}` matches no node or tensor in {model.name}"
                        + ("" if allow_inputs else " output"),
                        name=spec,
                        hint=hint,
                    )
                )
            out += found
        elif not allow_inputs and (spec in graph_inputs or spec in weights):
            what_it_is = "a weight (initializer)" if spec in weights else "a graph input"
            problems.append(
                NameNotFoundError(
                    f"`{spec}` is {what_it_is} of {model.name}, not a node output: its value "
                    "is known without running the model; name node outputs or nodes",
                    name=spec,
                    hint=hint,
                )
            )
        else:
            inner = subgraph_tensors(model) if inner is None else inner
            if spec in inner:
                problems.append(
                    NameNotFoundError(
                        f"`{spec}` lives inside the subgraph of node `{inner[spec]}` and cannot be exposed from the main graph",
                        name=spec,
                    )
                )
            else:
                problems.append(
                    unknown_name(
                        what,
                        spec,
                        list(nodes) + sorted(tensors) + (body.suggestible() if body else []),
                        model.name,
                        model_path=model.path,
                    )
                )
    op_list = list(ops)
    if op_list:
        present = sorted({n.op_type for n in proto.graph.node} | (body.ops() if body else set()))
        for op in op_list:
            matched = [n for n in proto.graph.node if n.op_type == op]
            if not matched and not (body and body.of_op(op)):
                problems.append(
                    NameNotFoundError(
                        f"no op type `{op}` in {model.name}"
                        + (
                            "; did you mean " + ", ".join(f"`{m}`" for m in near) + "?"
                            if (near := close_matches(op, present))
                            else ""
                        ),
                        name=op,
                        suggestions=near,
                        hint="Ops in the model: " + ", ".join(present) if present else None,
                    )
                )
            for n in matched:
                out += [o for o in n.output if o]
            out += body.of_op(op) if body else []
    raise_name_errors(problems, f"{len(problems)} names not found in {model.name}", hint)
    return list(dict.fromkeys(out))


class _BodyNames:
    """The names of tensors and nodes inside If/Loop/Scan bodies, for resolve_tensors."""

    def __init__(self, model: Model):
        from surgeon.edits.tap_bodies import body_tensors  # edits import names

        self.tensors = body_tensors(model)
        self.plain: dict[str, list[str]] = {}
        self.nodes: dict[str, list[str]] = {}
        self.plain_nodes: dict[str, list[str]] = {}
        for name, t in self.tensors.items():
            self.plain.setdefault(t.tensor, []).append(name)
            self.nodes.setdefault(t.node, []).append(name)
        for node in self.nodes:
            self.plain_nodes.setdefault(node.rsplit("/", 1)[-1], []).append(node)

    def resolve(self, spec: str, problems: list) -> list[str] | None:
        """The qualified tensors ``spec`` names (None: no body name; an ambiguous plain
        name adds a problem and gives [])."""
        if spec in self.tensors:
            return [spec]
        if spec in self.nodes:
            return list(self.nodes[spec])
        for table, kind in ((self.plain, "tensor"), (self.plain_nodes, "node")):
            hits = table.get(spec)
            if not hits:
                continue
            if len(hits) == 1:
                return [hits[0]] if kind == "tensor" else list(self.nodes[hits[0]])
            problems.append(
                NameNotFoundError(
                    f"`{spec}` names a {kind} in {len(hits)} bodies; name one by where it "
                    "lives: " + ", ".join(f"`{h}`" for h in hits[:8]),
                    name=spec,
                    suggestions=hits[:3],
                )
            )
            return []
        return None

    def glob(self, pattern: str) -> list[str]:
        """Qualified tensors whose qualified or plain name, or node, matches ``pattern``."""
        return [
            name
            for name, t in self.tensors.items()
            if fnmatch.fnmatchcase(name, pattern)
            or fnmatch.fnmatchcase(t.tensor, pattern)
            or fnmatch.fnmatchcase(t.node, pattern)
        ]

    def suggestible(self) -> list[str]:
        """Names to suggest: plain body names where unique, and every qualified name."""
        plain = [name for name, hits in self.plain.items() if len(hits) == 1]
        return [*plain, *self.tensors]

    def of_op(self, op: str) -> list[str]:
        return [name for name, t in self.tensors.items() if t.op == op]

    def ops(self) -> set[str]:
        return {t.op for t in self.tensors.values()}


def resolve_one_tensor(model: Model, spec: str, *, role: str) -> str:
    """A single tensor for ``spec``: a tensor name, or a node with exactly one output.

    Raises:
        UsageError: ``spec`` is a node with several outputs (the user must pick one).
    """
    names = resolve_tensors(model, [spec])
    if len(names) != 1:
        raise UsageError(
            f"{role} `{spec}` is a node with {len(names)} outputs; name one tensor: "
            + ", ".join(f"`{n}`" for n in names)
        )
    return names[0]
