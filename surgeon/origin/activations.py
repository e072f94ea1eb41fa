"""Mapping captured PyTorch module activations to the ONNX tensors that hold the same
values (:func:`match_activations`; the rule is in the :mod:`surgeon.origin` docstring)."""

from __future__ import annotations

from collections.abc import Iterable

from surgeon.origin.lookup import scopes
from surgeon.origin.metadata import model_proto


class ActivationMatch(dict):
    """Module key -> ONNX tensor name.

    ``unmatched`` says why the other keys have none (key -> sentence), and ``kinds``
    classifies it (key -> ``root``, ``no-metadata``, ``ambiguous``, ``no-nodes``,
    ``calls`` or ``no-output``).
    """

    def __init__(self, matched=(), unmatched=None, kinds=None):
        super().__init__(matched)
        self.unmatched: dict[str, str] = dict(unmatched or {})
        self.kinds: dict[str, str] = dict(kinds or {})


def split_key(key: str) -> tuple[str, int]:
    """``act@1`` -> (``act``, 1); ``conv0`` -> (``conv0``, 0)."""
    path, sep, call = key.rpartition("@")
    if sep and call.isdigit():
        return path, int(call)
    return key, 0


def resolve_path(path: str, module_paths: set[str]) -> str | None:
    """The module path a recorded path stands for: itself, or the unique known path that
    ends with it (TorchScript names drop uncalled containers: ``a.conv`` is ``enc.a.conv``)."""
    if path in module_paths:
        return path
    found = [m for m in module_paths if m.endswith("." + path)]
    return found[0] if len(found) == 1 else None


def match_activations(model, keys: Iterable[str]) -> ActivationMatch:
    """Map captured module activations to the ONNX tensors holding the same values.

    Args:
        model: The exported model (Model or ModelProto).
        keys: Module paths as :func:`surgeon.torch.capture` records them: ``conv1``,
            ``backbone.0.conv``; ``act@1`` for the second call of ``act``.

    Returns:
        An :class:`ActivationMatch`: key -> ONNX tensor for each matched key, with
        ``.unmatched`` (key -> reason) for the rest. See the module docstring for the rule.
    """
    keys = list(dict.fromkeys(keys))
    scanned = scopes(model)
    proto = model_proto(model)
    graph_outputs = {o.name for o in proto.graph.output}
    consumers: dict[str, list[int]] = {}
    for s in scanned:
        for t in s.node.input:
            if t:
                consumers.setdefault(t, []).append(s.index)
    calls_of: dict[str, int] = {}
    for k in keys:
        path, call = split_key(k)
        calls_of[path] = max(calls_of.get(path, 0), call + 1)
    module_paths = set(calls_of)

    # Each node's enclosing modules, resolved to the keys' module paths.
    members: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    ambiguous: set[str] = set()
    for s in scanned:
        for path, chain in s.frames:
            resolved = resolve_path(path, module_paths)
            if resolved is None:
                if any(m.endswith("." + path) for m in module_paths):
                    ambiguous.update(m for m in module_paths if m.endswith("." + path))
                continue
            members.setdefault(resolved, []).append((s.index, chain))

    has_traces = any(s.origin is not None for s in scanned)
    matched: dict[str, str] = {}
    unmatched: dict[str, str] = {}
    kinds: dict[str, str] = {}

    def skip(key: str, kind: str, why: str) -> None:
        unmatched[key] = why
        kinds[key] = kind

    for key in keys:
        path, call = split_key(key)
        if not path:
            skip(key, "root", "the top-level module's outputs are the graph outputs")
            continue
        if not has_traces:
            skip(
                key,
                "no-metadata",
                "the model has no PyTorch exporter metadata or scoped node names",
            )
            continue
        if path in ambiguous:
            skip(
                key,
                "ambiguous",
                "several modules end with this name, and TorchScript node names drop the containers that would tell them apart",
            )
            continue
        entries = members.get(path)
        if not entries:
            skip(
                key,
                "no-nodes",
                "no ONNX node belongs to this module: the exporter folded it into a neighbour "
                "(e.g. BatchNorm into Conv), it does nothing in eval mode (Dropout, Identity), "
                "or its work was constant-folded",
            )
            continue
        groups = _call_groups(entries, scanned)
        total = calls_of[path]
        if total > 1 and len(groups) != total:
            skip(
                key,
                "calls",
                f"`{path}` is called {total} times, and its {len(groups)} group(s) of nodes "
                "cannot be told apart call by call",
            )
            continue
        group = groups[call] if total > 1 else sorted(i for g in groups for i in g)
        tensor = _escaping_output(group, scanned, consumers, graph_outputs)
        if tensor is None:
            skip(key, "no-output", "no tensor produced by this module's nodes is read outside them")
            continue
        matched[key] = tensor
    return ActivationMatch(matched, unmatched, kinds)


def _call_groups(entries, scanned) -> list[list[int]]:
    """Split a module's nodes into one group per call, in order of first node."""
    chains = {chain for _, chain in entries}
    if len(chains) > 1 or any(chain for chain in chains):
        by_chain: dict[tuple, list[int]] = {}
        for index, chain in entries:
            by_chain.setdefault(chain, []).append(index)
        return sorted((sorted(v) for v in by_chain.values()), key=lambda g: g[0])
    # No call information (dynamo): connected groups of nodes, through tensors.
    indices = sorted({i for i, _ in entries})
    inside = set(indices)
    parent = {i: i for i in indices}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {}
    for i in indices:
        for t in scanned[i].node.output:
            if t:
                producer[t] = i
    for i in indices:
        for t in scanned[i].node.input:
            j = producer.get(t)
            if j is not None and j in inside:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _escaping_output(group, scanned, consumers, graph_outputs) -> str | None:
    inside = set(group)
    best = None
    for i in sorted(group):
        for t in scanned[i].node.output:
            if not t:
                continue
            readers = consumers.get(t, [])
            if t in graph_outputs or any(r not in inside for r in readers):
                best = t
                break
    return best
