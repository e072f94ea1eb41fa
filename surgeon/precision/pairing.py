"""Pairing a converted model's tensors with its reference's, through what converters insert.

A float16 or int8 model keeps most tensor names of the float32 model it came from, but the
converters put nodes in between that carry a value under another name or dtype:

* float16 converters (onnxconverter-common's ``convert_float_to_float16``) insert Casts:
  ``x`` -> Cast -> ``x_cast_to_<node>`` at the inputs, and at a float32 output they rename
  the producer's output (``<node>_cast_to_<output>``) and let a Cast restore the name;
  blocked nodes get ``<node>_input_cast_<i>`` / ``<node>_output_cast_<i>`` around them.
  Either side of such a Cast holds the reference's value in another float dtype.
* onnxruntime's ``quantize_static`` (QDQ format) puts QuantizeLinear -> DequantizeLinear
  after tensors: ``x`` -> Q -> ``x_QuantizeLinear_Output`` -> DQ ->
  ``x_DequantizeLinear_Output``; the DQ output holds ``x`` up to the quantization error.
  Weights are stored quantized (``W_quantized``) and read through a DQ whose output is
  ``W_DequantizeLinear_Output``.

:func:`pair_tensors` pairs by name first, then propagates pairs across float-to-float
Casts and Q->DQ chains (both ways) until nothing changes, and records how each pair was
made. A same-name pair is refused when the reference model is known and the two producers
are different ops (quantize_static fuses a Relu into the MatMul before it and gives the
MatMul's output the Relu's name), unless the candidate's producer only carries a value
(Cast, DequantizeLinear, Identity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from surgeon.graph_facts import inferred_graph
from surgeon.model import Model, dtype_name

# Ops whose output holds their input's value (re-typed, or quantized and restored): a
# same-name pair through them stands even when the reference produced the name otherwise.
VALUE_CARRIERS = frozenset({"Cast", "DequantizeLinear", "Identity"})
FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})
# onnxruntime quantize_static's names for a quantized weight and its dequantized value.
_DQ_OUTPUT_SUFFIX = "_DequantizeLinear_Output"
_QUANTIZED_SUFFIX = "_quantized"


@dataclass(frozen=True)
class Pair:
    """One candidate tensor and the reference tensor whose value it holds.

    Attributes:
        tensor: The candidate's tensor name.
        reference: The reference's tensor name.
        how: ``name`` (same name, or the caller's name map), ``cast`` (across a Cast a
            converter inserted) or ``qdq`` (across a QuantizeLinear -> DequantizeLinear
            chain, or a weight's DequantizeLinear).
        via: The node the pair was made through (for ``cast`` and ``qdq``).
    """

    tensor: str
    reference: str
    how: str
    via: str | None = None

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor,
            "reference": self.reference,
            "how": self.how,
            "via": self.via,
        }


@dataclass
class Pairing:
    """Every pair found, and what could not be paired.

    Attributes:
        pairs: Candidate tensor -> its Pair.
        refused: Candidate tensor -> why a same-name pair was refused.
        unpaired_inputs: Node label -> its inputs that are neither paired nor constants
            (initializers, or computed from constants only); such a node cannot be
            checked on its own.
        reference_constants: The reference model's initializers (values read on demand),
            empty when the reference is only a set of names.
        reference_model: The reference Model, whose folder external constants are read
            from (None when the reference is only a set of names).
        constants: The candidate's tensors computed from constants only.
        dtypes: Candidate tensor -> numpy dtype name, where known.
    """

    pairs: dict[str, Pair] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    unpaired_inputs: dict[str, list[str]] = field(default_factory=dict)
    reference_constants: Mapping[str, onnx.TensorProto] = field(default_factory=dict)
    reference_model: Model | None = None
    constants: set[str] = field(default_factory=set)
    dtypes: dict[str, str] = field(default_factory=dict)

    def reference_of(self, tensor: str) -> str | None:
        pair = self.pairs.get(tensor)
        return pair.reference if pair is not None else None

    def counts(self) -> dict[str, int]:
        """How many pairs each way made."""
        out = {"name": 0, "cast": 0, "qdq": 0}
        for p in self.pairs.values():
            out[p.how] = out.get(p.how, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "pairs": [self.pairs[t].to_dict() for t in sorted(self.pairs)],
            "refused": dict(sorted(self.refused.items())),
            "unpaired_inputs": dict(sorted(self.unpaired_inputs.items())),
        }


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or ``Op->first output`` for an unnamed one (never its position, so a
    label does not change with the node order)."""
    if node.name:
        return node.name
    first = next((o for o in node.output if o), "")
    return f"{node.op_type}->{first}"


def holds_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def constant_tensors(proto: onnx.ModelProto) -> set[str]:
    """Main-graph tensors computed from constants only: initializers (not fed as inputs),
    Constant outputs, and outputs of nodes all of whose inputs are such tensors.

    Iterated to a fixpoint rather than in one pass, so the answer does not depend on the
    node order (ONNX requires topological order, but not every file keeps it).
    """
    graph = proto.graph
    fed = {v.name for v in graph.input}
    constant = {t.name for t in graph.initializer if t.name not in fed}
    constant |= {t.values.name for t in graph.sparse_initializer if t.values.name not in fed}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            outs = [o for o in node.output if o]
            if not outs or all(o in constant for o in outs) or holds_subgraph(node):
                continue
            if node.op_type in ("RandomNormal", "RandomUniform"):  # a fresh value each run
                continue
            if all(x in constant for x in node.input if x):
                constant.update(outs)
                changed = True
    return constant


def candidate_dtypes(model: Model, values: Mapping[str, object] | None = None) -> dict[str, str]:
    """Tensor -> numpy dtype name: from ``values`` where given, else from what the model
    declares or onnx's type inference tells."""
    proto = model.proto
    out: dict[str, str] = {}
    # The shared inference of the model's skeleton (weights left out, cached per model);
    # when inference gives up, the declared types remain.
    g = inferred_graph(model) or proto.graph
    for v in list(g.value_info) + list(g.input) + list(g.output):
        elem = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
        name = dtype_name(elem) if elem else None
        if name:
            out[v.name] = name
    for t in proto.graph.initializer:
        name = dtype_name(t.data_type)
        if name:
            out[t.name] = name
    for node in proto.graph.node:
        if node.op_type == "Cast" and node.output and node.output[0]:
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            name = dtype_name(to) if to else None
            if name:
                out[node.output[0]] = name
    for name, value in (values or {}).items():
        if isinstance(value, np.ndarray):
            out[name] = value.dtype.name
    return out


def pair_tensors(
    candidate: Model,
    reference: Model | Iterable[str],
    *,
    name_map: Mapping[str, str] | None = None,
    candidate_values: Mapping[str, object] | None = None,
) -> Pairing:
    """Pair the candidate's tensors with the reference's.

    Args:
        candidate: The converted model (float16, QDQ int8, ...).
        reference: The reference Model, or the names the reference has values for (e.g.
            the keys of saved activations). With a Model, same-name pairs whose producers
            are different ops are refused (see the module docstring) and the reference's
            initializers can pair with dequantized weights.
        name_map: Reference name -> candidate name, for tensors named differently.
        candidate_values: The candidate's tapped values, used only for their dtypes.

    Returns:
        The :class:`Pairing`; each pair says how it was made.
    """
    proto = candidate.proto
    graph = proto.graph
    if isinstance(reference, Model):
        ref_names = set(reference.tensor_names())
        ref_producers = {t: n.op_type for t, n in reference.producers().items()}
        ref_constants = {t.name: t for t in reference.proto.graph.initializer}
    else:
        ref_names, ref_producers, ref_constants = set(reference), None, {}
    to_candidate = dict(name_map or {})  # reference -> candidate
    to_reference = {c: r for r, c in to_candidate.items()}
    producers = candidate.producers()
    dtypes = candidate_dtypes(candidate, candidate_values)
    pairing = Pairing(
        reference_constants=ref_constants,
        reference_model=reference if isinstance(reference, Model) else None,
        constants=constant_tensors(proto),
        dtypes=dtypes,
    )
    pairs = pairing.pairs
    refused_refs: dict[str, str] = {}

    for t in candidate.tensor_names():
        ref = to_reference.get(t, t)
        if ref not in ref_names:
            continue
        mine = producers[t].op_type if t in producers else None
        theirs = ref_producers.get(ref) if ref_producers is not None else None
        if (
            mine is not None
            and theirs is not None
            and mine != theirs
            and mine not in VALUE_CARRIERS
        ):
            pairing.refused[t] = (
                f"produced by {mine} here but by {theirs} in the reference (a converter "
                "reused the name for another value)"
            )
            refused_refs[t] = ref
            continue
        pairs[t] = Pair(t, ref, "name")

    # Weights quantized by quantize_static: W_quantized -> DQ -> W_DequantizeLinear_Output.
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.output or node.output[0] in pairs:
            continue
        out, source = node.output[0], node.input[0] if node.input else ""
        if source not in pairing.constants:
            continue
        for guess in (
            out[: -len(_DQ_OUTPUT_SUFFIX)] if out.endswith(_DQ_OUTPUT_SUFFIX) else None,
            source[: -len(_QUANTIZED_SUFFIX)] if source.endswith(_QUANTIZED_SUFFIX) else None,
        ):
            if guess and to_reference.get(guess, guess) in ref_names:
                pairs[out] = Pair(out, to_reference.get(guess, guess), "qdq", node_label(node))
                break

    _propagate(graph, pairs, dtypes, refused_refs)
    for node in graph.node:
        loose = [
            x
            for x in dict.fromkeys(node.input)
            if x and x not in pairs and x not in pairing.constants
        ]
        if loose:
            pairing.unpaired_inputs[node_label(node)] = loose
    return pairing


def _is_float(dtype: str | None) -> bool:
    return dtype is None or dtype in FLOAT_DTYPES


def _propagate(
    graph: onnx.GraphProto,
    pairs: dict[str, Pair],
    dtypes: Mapping[str, str],
    refused: Mapping[str, str],
) -> None:
    """Carry pairs across float-to-float Casts and Q->DQ chains, both ways, to a fixpoint.

    A Q->DQ chain whose input had its same-name pair refused still pairs its DQ output
    with that name: quantize_static names the quantized tensor after the value it stands
    for (a MatMul output quantized with a Relu's range holds the Relu's value).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for x in node.input:
            if x:
                consumers.setdefault(x, []).append(node)
    links: list[tuple[str, str, str, str]] = []  # (one side, other side, how, via)
    for node in graph.node:
        if not node.input or not node.output or not node.input[0] or not node.output[0]:
            continue
        if node.op_type == "Cast":
            a, b = node.input[0], node.output[0]
            # Casts to or from integers (shapes, indices) change the value's meaning.
            if _is_float(dtypes.get(a)) and _is_float(dtypes.get(b)):
                links.append((a, b, "cast", node_label(node)))
        elif node.op_type == "QuantizeLinear":
            for dq in consumers.get(node.output[0], []):
                if dq.op_type == "DequantizeLinear" and dq.input[0] == node.output[0] and dq.output:
                    links.append((node.input[0], dq.output[0], "qdq", node_label(dq)))
    for a, b, how, via in links:
        if how == "qdq" and a in refused and b not in pairs:
            pairs[b] = Pair(b, refused[a], how, via)
    changed = True
    while changed:
        changed = False
        for a, b, how, via in links:
            for known, other in ((a, b), (b, a)):
                # a refused name holds another value: no pair may come back to it
                if known in pairs and other and other not in pairs and other not in refused:
                    pairs[other] = Pair(other, pairs[known].reference, how, via)
                    changed = True
