"""Cut a model at a named tensor into two parts that chain back to the original.

Writes ``before.onnx``, everything the tensor `at` needs, and ``after.onnx``, the
outputs computed from what crosses the cut (`at`, plus any other tensor made before the
cut that the rest still reads, such as a skip connection). Named by where they sit
relative to the cut, not head/tail: a detector's own ``head/*`` nodes land in
``after.onnx``, and a model may be split more than once. Typical use: an operator the
target runtime lacks sits after `at`, so the part before runs there and the part after
elsewhere. Three checks: each part against the original (bit-identical), and the chain
before -> after against the original.

    surgeon run split_model tiny_yolo.onnx --param at=backbone/act2_out -o parts/
    # parts/before.onnx, parts/after.onnx
"""

from __future__ import annotations

import surgeon

MODELS = ("model",)
OUTPUTS = ("before", "after")
PARAMS = {
    "at": (str, ..., "the tensor (or single-output node) to cut at"),
}


def plan_cut(model: surgeon.Model, at: str) -> tuple[list[str], list[str], list[str]]:
    """The graph inputs the part before the cut reads, the tensors that cross the cut
    (made before it, read after it or by an output; `at` first) and the graph inputs the
    part after the cut reads directly."""
    graph = model.proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    before, stack = set(), [at]
    while stack:  # every node `at` depends on
        t = stack.pop()
        node = producer.get(t)
        if node is None or id(node) in before:
            continue
        before.add(id(node))
        stack.extend(x for x in node.input if x)
    after_nodes = [n for n in graph.node if id(n) not in before]
    read_after = {x for n in after_nodes for x in n.input} | set(model.output_names)
    made_before = [o for n in graph.node if id(n) in before for o in n.output if o]
    cut = [at] + [t for t in made_before if t in read_after and t != at]
    after_graph_inputs = [i for i in model.input_names if i in read_after and i not in cut]
    read_before = {x for n in graph.node if id(n) in before for x in n.input}
    before_graph_inputs = [i for i in model.input_names if i in read_before]
    return before_graph_inputs, cut, after_graph_inputs


def recipe(models: list[surgeon.Model], at: str):
    """Return {"before": Edited, "after": Edited}; the chain is verified as a step too."""
    model = models[0]
    model.require_tensor(at)
    before_inputs, cut, after_graph_inputs = plan_cut(model, at)
    before = surgeon.extract(model, before_inputs, cut)
    after = surgeon.extract(model, cut + after_graph_inputs, model.output_names)
    chain = surgeon.Chain([before.model, after.model])
    # Feeds for every input of the original: the part after may read inputs the part
    # before does not.
    feeds = surgeon.make_feeds(model)
    report = surgeon.verify(
        model,
        chain,
        feeds=feeds,
        tolerance=surgeon.EXACT,
        title="split: before -> after equals the original",
    )
    # Verified by hand, so recorded by hand (building an Edited records nothing).
    surgeon.record_edit(surgeon.Edited(after.model, report, "split-check", {"at": at, "cut": cut}))
    return {"before": before, "after": after}
