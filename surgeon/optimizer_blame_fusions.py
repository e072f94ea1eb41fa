"""What one onnxruntime optimisation did to a graph: the nodes it fused and what into.

``surgeon blame`` saves the graph onnxruntime optimised twice, once with a pass enabled
and once with it disabled (everything else equal), and hands both here: the nodes only
the "without" graph has are the ones the pass consumed, the nodes only the "with" graph
has are the ones it made. Each made node is traced back, through consumed nodes, from
its outputs to its inputs: those consumed nodes are what it fused.

Pure graph work on ``onnx.GraphProto``: no onnxruntime here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx


@dataclass(frozen=True)
class GraphNode:
    """A node as the report shows it: its name (or, unnamed, its op and first output)."""

    name: str
    op_type: str
    domain: str = ""
    in_original: bool = False  # the name is a node of the model as the user gave it

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "in_original": self.in_original,
        }


@dataclass
class Fusion:
    """Nodes a pass made (one fused node, or a connected group such as a layout change),
    and the nodes they replaced."""

    nodes: list[GraphNode]
    replaced: list[GraphNode] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "replaced": [n.to_dict() for n in self.replaced],
        }


@dataclass
class GraphChanges:
    """What a pass changed: nodes it made from others (``fusions``), nodes it dropped
    without a replacement (``removed``)."""

    fusions: list[Fusion] = field(default_factory=list)
    removed: list[GraphNode] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "fusions": [f.to_dict() for f in self.fusions],
            "removed": [n.to_dict() for n in self.removed],
        }


def _key(node: onnx.NodeProto) -> tuple:
    # A node is "the same" in both graphs when it computes the same outputs from the same
    # inputs with the same op: a fold that keeps a Conv's name but gives it new weights
    # (a new initializer) or a new output counts as a new node.
    return (node.domain, node.op_type, tuple(node.input), tuple(node.output))


def _shown(node: onnx.NodeProto, original: set[str]) -> GraphNode:
    name = node.name or f"{node.op_type}({node.output[0] if node.output else ''})"
    return GraphNode(name, node.op_type, node.domain, bool(node.name) and node.name in original)


def _groups(made: list[onnx.NodeProto]) -> list[list[onnx.NodeProto]]:
    """The made nodes in connected groups (one reads what another writes), in order."""
    parent = list(range(len(made)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    writer = {out: i for i, n in enumerate(made) for out in n.output if out}
    for i, node in enumerate(made):
        for tensor in node.input:
            if tensor in writer:
                parent[root(i)] = root(writer[tensor])
    groups: dict[int, list[onnx.NodeProto]] = {}
    for i, node in enumerate(made):
        groups.setdefault(root(i), []).append(node)
    return list(groups.values())


def graph_changes(
    without: onnx.GraphProto, with_pass: onnx.GraphProto, original_names: set[str]
) -> GraphChanges:
    """Compare the main graph optimised without a pass against the one optimised with it.

    Args:
        without: The graph onnxruntime saved with the pass disabled.
        with_pass: The graph it saved with the pass enabled (all else equal).
        original_names: Node names of the model as given, to mark which replaced nodes
            are the user's own (others were made by passes that always run).

    Returns:
        The fusions (made nodes -> replaced nodes) and the nodes removed outright.
    """
    with_keys = {_key(n) for n in with_pass.node}
    without_keys = {_key(n) for n in without.node}
    consumed = [n for n in without.node if _key(n) not in with_keys]
    made = [n for n in with_pass.node if _key(n) not in without_keys]
    producer = {out: n for n in consumed for out in n.output if out}
    order = {id(n): i for i, n in enumerate(without.node)}
    assigned: set[int] = set()
    changes = GraphChanges()
    for group in _groups(made):
        written = {t for n in group for t in n.output}
        stop = {t for n in group for t in n.input if t not in written}
        # Walk back from what the group writes, through consumed nodes, to what it reads:
        # those consumed nodes computed the same tensors before the pass.
        replaced: dict[int, onnx.NodeProto] = {}
        pending = [t for t in written if t in producer]
        seen: set[str] = set()
        while pending:
            tensor = pending.pop()
            if tensor in seen or tensor in stop:
                continue
            seen.add(tensor)
            source = producer.get(tensor)
            if source is not None and id(source) not in replaced:
                replaced[id(source)] = source
                pending.extend(source.input)
        assigned.update(replaced)
        changes.fusions.append(
            Fusion(
                [_shown(n, original_names) for n in group],
                [
                    _shown(n, original_names)
                    for n in sorted(replaced.values(), key=lambda n: order[id(n)])
                ],
            )
        )
    changes.removed = [_shown(n, original_names) for n in consumed if id(n) not in assigned]
    return changes
