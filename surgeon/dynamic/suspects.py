"""The suspects of a failed dynamic check: nodes that likely hold a size baked in at
export, found by :mod:`surgeon.baked` and named by onnxruntime in its errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from surgeon.baked import Factor, export_products, find_baked_constants
from surgeon.dynamic.results import DimVariable, SizeCase, Suspect
from surgeon.model import Model


def _export_factors(model: Model, variables: Sequence[DimVariable]) -> list[list[Factor | None]]:
    """Each input's dims at export: static dims as they are, dynamic ones at their export
    size when known (None when not)."""
    names = {ax: v for v in variables for ax in v.axes}
    inputs = []
    for info in model.inputs:
        if info.shape is None:
            continue
        dims: list[Factor | None] = []
        for axis, d in enumerate(info.shape):
            var = names.get((info.name, axis))
            if var is None:
                dims.append(Factor(int(d), str(d), False))
            elif var.export:
                dims.append(Factor(var.export, var.name, True))
            else:
                dims.append(None)
        inputs.append(dims)
    return inputs


def _dynamic_reach(model: Model) -> set[str]:
    """Tensors whose shape may follow a dynamic input dim (downstream of one)."""
    from surgeon.graph_facts import subgraph_reads

    reach = {i.name for i in model.inputs if i.is_dynamic}
    for n in model.proto.graph.node:
        if n.op_type == "Shape":  # its output's shape is the rank: static
            continue
        if any(x in reach for x in list(n.input) + subgraph_reads(n)):
            reach.update(o for o in n.output if o)
    return reach


def add_origins(model: Model, suspects: list[Suspect]) -> None:
    """Name the PyTorch module and line of each suspect, when the file says."""
    from surgeon.errors import NameNotFoundError
    from surgeon.origin import node_origin

    for suspect in suspects:
        try:
            origin = node_origin(model, suspect.node)
        except NameNotFoundError:  # a suspect named by onnxruntime, not a node of the file
            origin = None
        suspect.origin = origin.describe() if origin is not None else None


def find_suspects(
    model: Model, variables: Sequence[DimVariable], cases: Sequence[SizeCase] = ()
) -> list[Suspect]:
    """Nodes that likely hold a size baked in at export, most certain first.

    Named by onnxruntime in a failed run; or a shape-like constant input (see
    :data:`surgeon.baked.SHAPE_INPUTS`) holding an export size, directly or through
    shape plumbing; or a Reshape on a dynamic path whose constant shape has no 0 or -1
    (so it fixes the element count).
    """
    g = model.proto.graph
    nodes = {n.name: n for n in g.node if n.name}
    products = {
        value: "*".join(f.label for f in combos[0])
        for value, combos in export_products(_export_factors(model, variables)).items()
    }
    by_node: dict[int, list[Suspect]] = {}
    for b in find_baked_constants(model, products, dynamic_reach=_dynamic_reach(model)):
        if b.hit is not None:
            where = f"{b.hit} = {products[b.hit]} at export"
            factors = products[b.hit].split("*")
            known = ", ".join(
                f"{x.name}={x.export}" for x in variables if x.export and x.name in factors
            )
            if "*" in products[b.hit] and known:
                where += f" ({known})"
            reason = "contains " + where
        else:
            reason = (
                f"has no 0 or -1, so it fixes the element count at {int(np.prod(b.values))} "
                "although its input follows a dynamic dim"
            )
        suspect = Suspect(b.name, b.node.op_type, reason, b.tensor, b.role, b.values)
        by_node.setdefault(id(b.node), []).append(suspect)
    found: list[Suspect] = []
    seen: set[tuple[str, str | None]] = set()

    def add(s: Suspect) -> None:
        if (s.node, s.constant) not in seen:
            seen.add((s.node, s.constant))
            found.append(s)

    for case in cases:
        if case.failed_node and case.failed_node in nodes:
            node = nodes[case.failed_node]
            hits = by_node.get(id(node), [])
            for s in hits:
                add(Suspect(**{**vars(s), "source": "onnxruntime"}))
            if not hits:
                add(_failed_node_suspect(model, node, case))
    for suspects in by_node.values():
        for s in suspects:
            add(s)
    return found


def _failed_node_suspect(model: Model, node: onnx.NodeProto, case: SizeCase) -> Suspect:
    """A node onnxruntime named in a failed run, with the constants it reads."""
    initializers = {t.name for t in model.proto.graph.initializer}
    consts = [
        f"`{x}` of shape {list(model.value_infos()[x].shape or ())}"
        for x in node.input
        if x in initializers
    ]
    reason = f"failed at {case.label}: {case.error}"
    if consts:
        reason += "; it reads constant " + ", ".join(consts)
    return Suspect(node.name, node.op_type, reason, source="onnxruntime")
