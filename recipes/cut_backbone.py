"""Cut the backbone out of a detector, as its own model.

The backbone is the subgraph from the model's inputs to the tensors where the nodes
named ``<prefix>...`` hand over to the rest of the network (by default the tensors that
``backbone/*`` nodes produce and other nodes read). Typical uses: run the backbone on
one device and the head on another, or benchmark it alone. The cut is verified: the
backbone, fed the same images, reproduces the original's values at the cut bit for bit
(checked exactly: the same kernels run the same nodes on the same inputs, so any
difference at all would be a wrong cut).

    surgeon run cut_backbone tiny_yolo.onnx -o backbone.onnx
"""

from __future__ import annotations

import surgeon

MODELS = ("detector",)
OUTPUTS = ("backbone",)
PARAMS = {
    "prefix": (str, "backbone/", "node-name prefix of the backbone's nodes"),
    "outputs": (
        str,
        "",
        "comma-separated tensors where the backbone ends (default: found from the prefix)",
    ),
    "inputs": (str, "", "comma-separated tensors where it starts (default: the model's inputs)"),
}


def handover_tensors(model: surgeon.Model, prefix: str) -> list[str]:
    """Tensors produced by ``prefix`` nodes and read by other nodes or the graph outputs."""
    nodes = model.proto.graph.node
    inside = {o for n in nodes if n.name.startswith(prefix) for o in n.output if o}
    read_outside = {x for n in nodes if not n.name.startswith(prefix) for x in n.input}
    read_outside |= set(model.output_names)
    return [
        t
        for t in dict.fromkeys(o for n in nodes for o in n.output)
        if t in inside and t in read_outside
    ]


def recipe(
    models: list[surgeon.Model], prefix: str = "backbone/", outputs: str = "", inputs: str = ""
):
    """Extract the backbone of ``models[0]``; returns the verified Edited."""
    model = models[0]
    cut_outputs = [t for t in outputs.split(",") if t] or handover_tensors(model, prefix)
    if not cut_outputs:
        names = [n.name for n in model.proto.graph.node if n.name][:5]
        raise surgeon.UsageError(
            f"no node of {model.name} is named `{prefix}...`, so the backbone's end is unknown",
            hint="Give prefix= or outputs=; node names look like: " + ", ".join(names),
        )
    cut_inputs = [t for t in inputs.split(",") if t] or model.input_names
    return surgeon.extract(model, cut_inputs, cut_outputs, tolerance=surgeon.EXACT)
