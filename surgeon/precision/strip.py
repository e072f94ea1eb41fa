"""Taking quantization out of chosen nodes of a QDQ model: an exact float path for them.

A QDQ model (onnxruntime's ``quantize_static`` with ``QuantFormat.QDQ``) computes every
op in float on dequantized values, so a node is "unquantized" by letting it read the
float values again:

* an input that comes through ``x -> QuantizeLinear -> DequantizeLinear`` is read from
  ``x`` itself;
* a weight stored quantized (``W_quantized -> DequantizeLinear``) is read from the float
  model's initializer, added back under its float name;
* when quantize_static folded a Relu/Clip into the node before (it gives that node's
  output the activation's name and lets the Q's range do the clipping), ``x`` holds the
  value *before* the activation: a copy of the float model's activation node is put
  back between ``x`` and the reader, so the path stays exact.

Only the chosen readers are rewired; a Q/DQ pair that other nodes still read stays, and
one nobody reads any more is removed (as is a weight nothing reads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from surgeon.model import Model
from surgeon.precision.pairing import Pairing

STRIP_EDIT = "strip-qdq"


@dataclass
class Stripped:
    """The model with quantization taken out of ``nodes``.

    Attributes:
        model: The new model (the input is untouched).
        nodes: The nodes whose inputs now read float values.
        rewired: (node, input position, DQ output it read, float tensor it reads now).
        restored: Float initializers added back, and activation nodes put back.
        kept: (node, input, why) for quantized inputs that could not be made float.
    """

    model: Model
    nodes: list[str]
    rewired: list[tuple[str, int, str, str]] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)


class _Namer:
    """Tensor names not yet used in the graph."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)

    def __call__(self, wanted: str) -> str:
        name, k = wanted, 1
        while name in self.taken:
            name, k = f"{wanted}_{k}", k + 1
        self.taken.add(name)
        return name


def strip_quantization(
    candidate: Model, reference: Model, pairing: Pairing, nodes: Iterable[str]
) -> Stripped:
    """Let ``nodes`` of the QDQ ``candidate`` read float values (see the module docstring).

    Args:
        candidate: The QDQ model.
        reference: The float model it was quantized from (weights and folded
            activations come from it).
        pairing: ``pair_tensors(candidate, reference)``.
        nodes: Names of candidate nodes (which keep their float-model names).
    """
    wanted = list(dict.fromkeys(nodes))
    model = candidate.copy()
    graph = model.proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    ref_graph = reference.proto.graph
    ref_inits = {t.name: t for t in ref_graph.initializer}
    ref_producer = {o: n for n in ref_graph.node for o in n.output if o}
    namer = _Namer(model.tensor_names())
    result = Stripped(model, wanted)
    made: dict[str, str] = {}  # DQ output -> its float replacement (made once)
    added_nodes: list[tuple[int, onnx.NodeProto]] = []

    def position_of(node: onnx.NodeProto) -> int:
        return next(i for i, n in enumerate(graph.node) if n.output[:1] == node.output[:1])

    def restore_activation(
        value: str, ref: str | None, reader: str, x: str, position: int, out: str | None = None
    ) -> str | None:
        """A copy of the float model's activation producing ``ref``, reading ``value``."""
        act = ref_producer.get(ref) if ref is not None else None
        if act is None or any(i and i not in ref_inits for i in list(act.input)[1:]):
            result.kept.append((reader, x, f"`{value}` holds a folded activation"))
            return None
        copy = onnx.NodeProto()
        copy.CopyFrom(act)
        copy.name = namer(f"{act.name or act.op_type}_restored")
        for k in range(1, len(copy.input)):
            if copy.input[k]:
                init = onnx.TensorProto()
                init.CopyFrom(ref_inits[copy.input[k]])
                init.name = namer(copy.input[k])
                graph.initializer.append(init)
                copy.input[k] = init.name
        copy.input[0] = value
        del copy.output[:]
        copy.output.append(out or namer(f"{ref}_float"))
        added_nodes.append((position, copy))
        result.restored.append(copy.name)
        return copy.output[0]

    def float_source(x: str, reader: str) -> str | None:
        if x in made:
            return made[x]
        dq = producer.get(x)
        if dq is None or dq.op_type != "DequantizeLinear" or not dq.input:
            return None
        source = dq.input[0]
        ref = pairing.reference_of(x)
        if source in pairing.constants:  # a quantized weight (or bias)
            if ref is None or ref not in ref_inits:
                result.kept.append((reader, x, "no float initializer pairs with it"))
                return None
            init = onnx.TensorProto()
            init.CopyFrom(ref_inits[ref])
            init.name = namer(ref)
            graph.initializer.append(init)
            result.restored.append(init.name)
            made[x] = init.name
            return init.name
        q = producer.get(source)
        if q is None or q.op_type != "QuantizeLinear" or not q.input:
            return None
        value = q.input[0]
        if value in pairing.refused:
            # quantize_static folded the float model's activation into the node before
            value = restore_activation(value, ref, reader, x, position_of(q))
            if value is None:
                return None
        made[x] = value
        return value

    names = set(wanted)
    for node in graph.node:
        if node.name not in names:
            continue
        for i, x in enumerate(node.input):
            if not x:
                continue
            source = float_source(x, node.name)
            if source is not None:
                node.input[i] = source
                result.rewired.append((node.name, i, x, source))
    # A listed node's output quantized on its way to a graph output: the graph output
    # takes the float value (through an Identity, or the folded activation put back).
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.name not in names:
            continue
        for o in node.output:
            for q in [
                n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[:1] == [o]
            ]:
                for dq in [
                    n
                    for n in graph.node
                    if n.op_type == "DequantizeLinear"
                    and n.input[:1] == q.output[:1]
                    and n.output[:1]
                    and n.output[0] in outputs
                ]:
                    g = dq.output[0]
                    position = position_of(dq)
                    dq.output[0] = namer(f"{g}_quantized")  # dropped below: nothing reads it
                    if o in pairing.refused:
                        made_out = restore_activation(
                            o, pairing.reference_of(g), node.name, g, position, out=g
                        )
                        if made_out is None:
                            dq.output[0] = g
                            continue
                    else:
                        copy = onnx.helper.make_node(
                            "Identity", [o], [g], name=namer(f"{node.name}_float_output")
                        )
                        added_nodes.append((position, copy))
                        result.restored.append(copy.name)
                    result.rewired.append((node.name, -1, g, o))
    # Activation copies go where the Q they replace was: still before every reader.
    for position, node in sorted(added_nodes, key=lambda p: -p[0]):
        graph.node.insert(position, node)
    _drop_unread(graph)
    model.with_provenance(STRIP_EDIT, {"nodes": wanted})
    return result


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes and initializers nothing reads any more."""
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        read = {x for n in graph.node for x in n.input if x} | outputs
        for i in reversed(range(len(graph.node))):
            node = graph.node[i]
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(
                o in read for o in node.output if o
            ):
                del graph.node[i]
                changed = True
    read = {x for n in graph.node for x in n.input if x} | outputs
    inputs = {v.name for v in graph.input}
    keep = [t for t in graph.initializer if t.name in read or t.name in inputs]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


__all__ = ["STRIP_EDIT", "Stripped", "strip_quantization"]
