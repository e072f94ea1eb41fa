"""Taking quantization out of chosen nodes of a QDQ model, as ``quantize_static`` would.

onnxruntime's ``quantize_static(..., nodes_to_exclude=E)`` (QDQ format) puts a
QuantizeLinear -> DequantizeLinear pair on a tensor when *any* quantized op touches it:
each quantized op marks its inputs and its outputs, and then every reader of the tensor
(excluded ones, and ops it does not quantize such as Div, too) reads the dequantized value.
So a pair stays unless every quantized op writing or reading the tensor is excluded
(:func:`quantized_tensors` follows those rules, :func:`exclusion_names` names the ops);
excluding one node alone changes nothing when its neighbours re-quantize what it reads
and writes. That was this module's defect: it re-pointed the listed nodes' inputs only,
and on a Hardswish (``Mul`` -> Q/DQ -> ``Div`` by 6 -> Q/DQ) the ``Div`` then read its float
input but its output was rounded to a grid exactly 6 times finer than its input's, which
gives back the quantized value bit for bit.

:func:`strip_quantization` applies that rule to the QDQ model itself, giving an exact float
path through the excluded region:

* an activation pair ``x -> Q -> DQ`` the list takes away goes: its readers read ``x``;
* a weight stored quantized (``W_quantized -> DQ``) whose quantized readers are all
  excluded is read from the float model's initializer, added back under its float name;
* when quantize_static folded a Relu/Clip into the node before (it gives that node's
  output the activation's name and lets the Q's range do the clipping), ``x`` holds the
  value *before* the activation: a copy of the float model's activation node is put
  back between ``x`` and the readers, so the path stays exact;
* a graph output that was quantized after its producer takes the float value.

Q/DQ nodes and initializers nothing reads any more are removed.
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


@dataclass
class QdqPair:
    """One quantized tensor of a QDQ model: its Q (none for a weight), DQs and neighbours.

    Attributes:
        value: The float tensor the Q reads, or the quantized weight the DQ reads.
        quantize: The QuantizeLinear node (None for a weight stored quantized).
        dequantizes: The DequantizeLinear nodes restoring it.
        producer: The node computing ``value`` (None for a graph input or a weight).
        readers: The nodes reading a DQ output (not Q/DQ nodes themselves).
        outputs: The DQ outputs that are graph outputs.
    """

    value: str
    quantize: onnx.NodeProto | None
    dequantizes: list[onnx.NodeProto]
    producer: onnx.NodeProto | None
    readers: list[onnx.NodeProto]
    outputs: list[str]

    @property
    def weight(self) -> bool:
        return self.quantize is None


def qdq_pairs(graph: onnx.GraphProto) -> list[QdqPair]:
    """Every Q->DQ pair on an activation and every DQ of a stored weight, in graph order."""
    producer = {o: n for n in graph.node for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for x in dict.fromkeys(node.input):
            if x:
                readers.setdefault(x, []).append(node)
    outputs = {o.name for o in graph.output}
    qdq = ("QuantizeLinear", "DequantizeLinear")

    def pair(value, q, dqs) -> QdqPair:
        made = producer.get(value) if q is not None else None
        if made is not None and made.op_type in qdq:
            made = None  # a re-quantized DQ output: no op of the float model made it
        read = [
            r
            for d in dqs
            for r in readers.get(d.output[0], [])
            if d.output and r.op_type not in qdq
        ]
        ends = [d.output[0] for d in dqs if d.output and d.output[0] in outputs]
        unique = list({r.output[0] if r.output else r.name: r for r in read}.values())
        return QdqPair(value, q, dqs, made, unique, ends)

    result = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input and node.output:
            dqs = [d for d in readers.get(node.output[0], []) if d.op_type == "DequantizeLinear"]
            if dqs:
                result.append(pair(node.input[0], node, dqs))
        elif node.op_type == "DequantizeLinear" and node.input and node.output:
            source = producer.get(node.input[0])
            if source is None or source.op_type != "QuantizeLinear":
                result.append(pair(node.input[0], None, [node]))
    return result


# onnxruntime's removable activations: quantize_static folds one into the node before when
# that node's output is quantized and read by it alone.
_FOLDABLE = ("Relu", "Clip")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def quantized_op_types() -> frozenset[str] | None:
    """The op types quantize_static quantizes by default (its QDQ and QLinear registries),
    None when this onnxruntime lacks its quantization tools (then every op counts)."""
    try:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    except ImportError:
        return None
    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def _quantizes(node: onnx.NodeProto, ops: frozenset[str] | None) -> bool:
    return node.op_type not in _QDQ_OPS and (ops is None or node.op_type in ops)


def quantized_tensors(
    reference: Model, excluded: Iterable[str], folded: Iterable[str] = ()
) -> set[str]:
    """The float model's tensors ``quantize_static(..., nodes_to_exclude=excluded)`` puts a
    Q/DQ pair on (QDQ format, default op types), following its rules in node order:

    * a quantized op marks its inputs and outputs (initializers too: its weights);
    * a Relu/Clip marks nothing unless its input is already marked; then, when it is in
      ``folded`` (the activations the QDQ model shows folded), its input's pair goes and
      the node before writes its output instead.

    Ops quantize_static does not quantize (Div, HardSigmoid, ...) mark nothing, so a pair
    between two of them and a quantized op goes only with that op.
    """
    graph = reference.proto.graph
    skip, fold = set(excluded), set(folded)
    ops = quantized_op_types()
    readers: dict[str, int] = {}
    for node in graph.node:
        for x in dict.fromkeys(node.input):
            readers[x] = readers.get(x, 0) + 1
    ends = {v.name for v in graph.output} | {v.name for v in graph.input}
    marked: set[str] = set()
    for node in graph.node:
        if node.name in skip or not _quantizes(node, ops):
            continue
        if node.op_type in _FOLDABLE and node.input and node.output:
            x, y = node.input[0], node.output[0]
            if x not in marked:
                continue
            if node.name in fold and readers.get(x) == 1 and x not in ends:
                marked.discard(x)
            marked.add(y)
            continue
        marked.update(t for t in (*node.input, *node.output) if t)
    return marked


def exclusion_names(
    pair: QdqPair, pairing: Pairing, reference: Model, ops: frozenset[str] | None = None
) -> list[str]:
    """The ``nodes_to_exclude`` that take ``pair`` away (float-model node names): the
    quantized ops that write or read the float tensor it stands for; for a folded
    activation, the activation and the node before it."""
    ref = pairing.reference_of(pair.dequantizes[0].output[0])
    if ref is None:
        return []
    graph = reference.proto.graph
    names = []
    producer = next((n for n in graph.node if ref in n.output), None)
    if producer is not None and producer.op_type in _FOLDABLE and pair.value in pairing.refused:
        before = next((n for n in graph.node if producer.input[:1] == list(n.output[:1])), None)
        if before is None:
            before = next((n for n in graph.node if producer.input[0] in n.output), None)
        if before is not None and _quantizes(before, ops):
            names.append(before.name)
    if producer is not None and _quantizes(producer, ops):
        names.append(producer.name)
    for node in graph.node:
        if ref in node.input and _quantizes(node, ops) and node.op_type not in _FOLDABLE:
            names.append(node.name)
    return list(dict.fromkeys(n for n in names if n))


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
    """The QDQ ``candidate`` as ``quantize_static`` would make it with ``nodes`` excluded
    (see the module docstring): an exact float path through the excluded region.

    Args:
        candidate: The QDQ model.
        reference: The float model it was quantized from (weights and folded
            activations come from it).
        pairing: ``pair_tensors(candidate, reference)``.
        nodes: Names of candidate nodes (which keep their float-model names).
    """
    wanted = list(dict.fromkeys(nodes))
    excluded = set(wanted)
    model = candidate.copy()
    graph = model.proto.graph
    ref_graph = reference.proto.graph
    ref_inits = {t.name: t for t in ref_graph.initializer}
    ref_producer = {o: n for n in ref_graph.node for o in n.output if o}
    namer = _Namer(model.tensor_names())
    result = Stripped(model, wanted)
    added_nodes: list[tuple[int, onnx.NodeProto]] = []
    # by first output: protobuf hands out a new wrapper object per access, so no id()
    position = {n.output[0]: i for i, n in enumerate(graph.node) if n.output}

    def restore_activation(value: str, ref: str | None, reader: str, x: str, at: int):
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
        copy.output.append(namer(f"{ref}_float"))
        added_nodes.append((at, copy))
        result.restored.append(copy.name)
        return copy.output[0]

    def float_value(pair: QdqPair, first: str) -> str | None:
        x = pair.dequantizes[0].output[0]
        ref = pairing.reference_of(x)
        if pair.weight:
            if ref is None or ref not in ref_inits:
                result.kept.append((first, x, "no float initializer pairs with it"))
                return None
            init = onnx.TensorProto()
            init.CopyFrom(ref_inits[ref])
            init.name = namer(ref)
            graph.initializer.append(init)
            result.restored.append(init.name)
            return init.name
        if pair.value in pairing.refused:
            # quantize_static folded the float model's activation into the node before
            return restore_activation(pair.value, ref, first, x, position[pair.quantize.output[0]])
        return pair.value

    # Only pairs the list takes away: quantized with no exclusion (so the rules explain
    # the QDQ model's pair) and not with the list.
    candidate_nodes = set(candidate.node_names())
    folded = [n.name for n in ref_graph.node if n.name and n.name not in candidate_nodes]
    before = quantized_tensors(reference, (), folded)
    after = quantized_tensors(reference, excluded, folded)
    for pair in qdq_pairs(graph):
        ref = pairing.reference_of(pair.dequantizes[0].output[0])
        if ref is None or ref not in before or ref in after:
            continue
        first = pair.readers[0].name if pair.readers else ref
        value = float_value(pair, first)
        if value is None:
            continue
        dq_outputs = {d.output[0] for d in pair.dequantizes}
        for node in pair.readers:
            for i, x in enumerate(node.input):
                if x in dq_outputs:
                    node.input[i] = value
                    result.rewired.append((node.name, i, x, value))
        for g in pair.outputs:
            # the graph output keeps its name and takes the float value
            dq = next(d for d in pair.dequantizes if d.output[0] == g)
            dq.output[0] = namer(f"{g}_quantized")  # dropped below: nothing reads it
            copy = onnx.helper.make_node("Identity", [value], [g], name=namer(f"{g}_float"))
            added_nodes.append((position[g], copy))
            result.restored.append(copy.name)
            result.rewired.append((first, -1, g, value))
    # Added nodes go where the Q/DQ they replace was: after the value, before its readers.
    for at, node in sorted(added_nodes, key=lambda p: -p[0]):
        graph.node.insert(at, node)
    _drop_unread(graph)
    model.add_provenance(STRIP_EDIT, {"nodes": wanted})
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


__all__ = [
    "STRIP_EDIT",
    "QdqPair",
    "exclusion_names",
    "quantized_op_types",
    "quantized_tensors",
    "Stripped",
    "qdq_pairs",
    "strip_quantization",
]
