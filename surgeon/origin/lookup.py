"""Looking up the origin of a node or tensor: each model is scanned once (cached while
its proto is unchanged), so asking for every node's origin stays linear in its size."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import onnx

from surgeon.errors import unknown_name
from surgeon.origin.metadata import NodeScope, Origin, model_proto, scan

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Index:
    """A scanned model: its node scopes, and where to find a node or tensor among them
    (so that asking for every node's origin stays linear in the model's size)."""

    scopes: list[NodeScope]
    by_node: dict[str, NodeScope]
    by_tensor: dict[str, NodeScope]


def _build_index(proto: onnx.ModelProto) -> _Index:
    scanned = scan(proto)
    by_node: dict[str, NodeScope] = {}
    by_tensor: dict[str, NodeScope] = {}
    for s in scanned:
        # setdefault: the first node wins, as a search in node order would find it.
        by_node.setdefault(s.node.name, s)
        for t in s.node.output:
            by_tensor.setdefault(t, s)
    return _Index(scanned, by_node, by_tensor)


def _index(model) -> _Index:
    proto = model_proto(model)
    key = model if hasattr(model, "proto") else None
    if key is not None:
        cached = _CACHE.get(key)
        # The node count guards against a proto edited in place since it was scanned.
        if cached is not None and cached[0] is proto and cached[1] == len(proto.graph.node):
            return cached[2]
    index = _build_index(proto)
    if key is not None:
        _CACHE[key] = (proto, len(proto.graph.node), index)
    return index


def scopes(model) -> list[NodeScope]:
    """Every main-graph node of ``model`` with its origin and enclosing modules, in order."""
    return _index(model).scopes


def origins(model) -> dict[str, Origin]:
    """Every named node of the main graph that has a PyTorch origin, by node name (for a
    name several nodes share, the first one's, as :func:`node_origin` answers)."""
    return {
        name: s.origin for name, s in _index(model).by_node.items() if name and s.origin is not None
    }


def node_origin(model, node_name: str) -> Origin | None:
    """The PyTorch module (and source line) a node of ``model`` came from.

    Works from the ONNX file alone: see the module docstring for what is read.

    Args:
        model: A :class:`surgeon.model.Model` or an ``onnx.ModelProto``.
        node_name: A node name of the main graph.

    Returns:
        The Origin, or None when the node carries no exporter trace.

    Raises:
        NameNotFoundError: No node has that name.
    """
    index = _index(model)
    found = index.by_node.get(node_name)
    if found is not None:
        return found.origin
    where = getattr(model, "name", None) or "the model"
    raise unknown_name("node", node_name, [n for n in index.by_node if n], where)


def tensor_origin(model, tensor_name: str) -> Origin | None:
    """The origin of the node that produces ``tensor_name`` (None for graph inputs,
    initializers and nodes without exporter traces)."""
    found = _index(model).by_tensor.get(tensor_name)
    return found.origin if found is not None else None
