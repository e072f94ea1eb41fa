"""Facts about a model's main graph that the debugging modules read: which node produces
each tensor, its label and inputs, what each node reads (outer-scope reads of its
If/Loop/Scan bodies included), and which tensors are computed from constants only.

This is the one place in the debugging package that derives them from the proto, each
at most once per ``debug`` run, so switching to a shared graph-facts layer means
changing this module only.
"""

from __future__ import annotations

import functools

import onnx

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


class GraphFacts:
    """Read-only facts of ``model``'s main graph, each computed on first use.

    The model must not be edited while the facts are in use (``debug`` never edits it).
    """

    def __init__(self, model: Model):
        self.model = model
        self.nodes = list(model.proto.graph.node)

    @functools.cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """tensor -> the node that produces it."""
        return {o: n for n in self.nodes for o in n.output if o}

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
        # Imported here: the edit modules import much of surgeon, the debugging package
        # should not pull them in before a debug run needs them.
        from surgeon.edits.extract import subgraph_reads

        return {id(n): [x for x in [*n.input, *subgraph_reads(n)] if x] for n in self.nodes}

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
        # ONNX requires topological order; an unsorted graph only loses precision here.
        for node in self.nodes:
            if node.op_type in _VALUE_FREE_OPS and _is_default_domain(node):
                constant.update(o for o in node.output if o)
            elif node.op_type not in _RANDOM_OPS and all(x in constant for x in self.reads(node)):
                constant.update(o for o in node.output if o)
        return constant
