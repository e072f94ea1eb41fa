"""What the debugging modules read about a model's main graph, on top of the shared
graph facts (:mod:`surgeon.graph_facts`: producers, what each node reads with its bodies'
outer-scope reads, topological order): node labels and infos as reports show them,
Constant nodes, and which tensors are computed from constants only.
"""

from __future__ import annotations

import functools

import onnx

from surgeon.graph_facts import graph_facts
from surgeon.model import Model

# Ops whose output is the same whatever the values of their inputs (only shapes count).
_VALUE_FREE_OPS = {"Constant", "ConstantOfShape"}
# Ops whose values are random even when their inputs are constants.
_RANDOM_OPS = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


class DebugFacts:
    """Read-only facts of ``model``'s main graph, each computed on first use.

    The model must not be edited while the facts are in use (``debug`` never edits it).
    """

    def __init__(self, model: Model):
        self.model = model
        self.shared = graph_facts(model)
        self.nodes = list(model.proto.graph.node)

    @functools.cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """tensor -> the node that produces it."""
        return self.shared.producer_nodes()

    @functools.cached_property
    def labels(self) -> dict[int, str]:
        """id(node) -> its name, or ``#index`` for an unnamed node."""
        return {id(n): n.name or f"#{i}" for i, n in enumerate(self.nodes)}

    @functools.cached_property
    def node_info(self) -> dict[str, tuple[str, str, list[str]]]:
        """tensor -> (node label, op type, node inputs) for main-graph node outputs."""
        labels = self.labels
        return {
            o: (labels[id(n)], n.op_type, [x for x in n.input if x])
            for n in self.nodes
            for o in n.output
            if o
        }

    @functools.cached_property
    def node_outputs(self) -> list[str]:
        """Every node output, in graph order."""
        return [o for n in self.nodes for o in n.output if o]

    @functools.cached_property
    def constant_nodes(self) -> dict[str, onnx.NodeProto]:
        """tensor -> the Constant node that holds its value."""
        return {
            o: n
            for n in self.nodes
            if n.op_type == "Constant" and _is_default_domain(n)
            for o in n.output
            if o
        }

    @functools.cached_property
    def _reads(self) -> dict[int, list[str]]:
        return {id(n): self.shared.reads(i) for i, n in enumerate(self.nodes)}

    def reads(self, node: onnx.NodeProto) -> list[str]:
        """The tensors ``node`` reads: its inputs and what its bodies read from outside."""
        return self._reads[id(node)]

    @functools.cached_property
    def constants(self) -> set[str]:
        """Main-graph tensors computed from constants only: initializers, Constant and
        ConstantOfShape outputs (whose fill value does not depend on the data, even when
        the shape does), and outputs of nodes whose inputs (and outer-scope reads of
        their bodies) are all such tensors."""
        graph = self.model.proto.graph
        feeds = set(self.model.input_names)
        constant = {t.name for t in graph.initializer if t.name not in feeds}
        constant |= {t.values.name for t in graph.sparse_initializer}
        # In topological order, so that an unsorted graph loses nothing either.
        for index in self.shared.node_order():
            node = self.nodes[index]
            if node.op_type in _VALUE_FREE_OPS and _is_default_domain(node):
                constant.update(o for o in node.output if o)
            elif node.op_type not in _RANDOM_OPS and all(x in constant for x in self.reads(node)):
                constant.update(o for o in node.output if o)
        return constant
