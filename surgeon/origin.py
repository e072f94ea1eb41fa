"""Where an ONNX node came from in PyTorch, read from the ONNX file alone (no torch needed).

Exporters leave three kinds of traces, read in this order of preference:

* **surgeon's own node metadata** (``surgeon.torch.module``, ``surgeon.torch.class``,
  ``surgeon.torch.source``), written by :func:`surgeon.torch.export` for TorchScript
  exports, where it knows the real module tree.
* **The dynamo exporter's node metadata** (``torch.onnx.export(..., dynamo=True)``, the
  default since torch 2.9): ``pkg.torch.onnx.name_scopes`` is the list of module paths
  the node sits in, outermost first, ending with the FX node name
  (``['', 'backbone', 'backbone.0', 'conv2d']``); ``pkg.torch.onnx.class_hierarchy`` the
  matching classes, ending with the aten op; ``pkg.torch.onnx.stack_trace`` the Python
  stack, outermost frame first.
* **TorchScript-style node names** (``dynamo=False``): ``/backbone/backbone.0/conv/Conv``.
  Each ``/`` level is one module call, named by the module's attribute name with
  numeric atoms kept (``layers.0``); a module called again gets a ``_1`` suffix
  (``/act_1/Relu``). Containers that are never called (ModuleList, ModuleDict) leave no
  level, so their names are lost: ``enc.a.conv`` in the module tree is ``/a/conv/Conv``
  in the file. When the export ran with ``verbose=True``, ``doc_string`` holds the stack
  (innermost frame first), which gives the source line.

:func:`match_activations` maps PyTorch module paths (as recorded by forward hooks) to the
ONNX tensor holding that module's output. The rule, for a module ``M``:

1. ``M``'s nodes are the nodes whose scope is ``M`` or a module inside it.
2. Its output is the last tensor, in topological order, that one of those nodes
   produces and that is read outside them (by another node, or as a graph output).
3. A module called several times (keys ``act``, ``act@1``, ...) has one set of nodes
   per call: TorchScript names tell calls apart (``act``, ``act_1``); for dynamo exports
   the module's nodes are split into connected groups, and the calls are matched to the
   groups in order only when there are exactly as many groups as calls.

What cannot be matched, and is reported as such: modules with no node of their own
(folded into a neighbour, e.g. a BatchNorm folded into the Conv before it; Dropout and
Identity in eval mode; modules whose only work was constant-folded); modules called
several times whose calls the metadata cannot tell apart; modules absent from the
model's metadata altogether (a model exported by another tool, or edited by a tool that
dropped node metadata). Modules whose output is a tuple or dict are not captured at all
(see :func:`surgeon.torch.capture`). A folded module's node carries only one scope, so
the tensor it produces is matched to one module: with dynamo, the outer (e.g. the
BatchNorm); with TorchScript, the inner (the Conv), which
:func:`surgeon.torch.capture` corrects using the data flow it observed.
"""

from __future__ import annotations

import ast
import os
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from surgeon.errors import unknown_name

# Keys of the dynamo exporter's node metadata (verified on torch 2.13.0).
DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"
DYNAMO_CLASSES = "pkg.torch.onnx.class_hierarchy"
DYNAMO_STACK = "pkg.torch.onnx.stack_trace"
# Keys surgeon.torch.export writes on TorchScript exports.
SURGEON_MODULE = "surgeon.torch.module"
SURGEON_CLASS = "surgeon.torch.class"
SURGEON_SOURCE = "surgeon.torch.source"

# Frames inside these packages are skipped when picking the source line: the user wants
# their own `self.conv1(x)` line, not torch/nn/modules/conv.py.
_LIBRARY_FRAME = re.compile(
    r"([/\\](site|dist)-packages[/\\](torch|torchvision|onnxscript|transformers)[/\\])"
    r"|([/\\]torch[/\\](nn|jit|fx|_dynamo|export|onnx|utils)[/\\])"
)
# dynamo: 'File "/path/model.py", line 8, in forward' (outermost frame first)
_DYNAMO_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
# TorchScript doc_string: '/path/model.py(9): forward' (innermost frame first)
_TORCHSCRIPT_FRAME = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\): (?P<func>\S+)$")
_CALL_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<call>\d+)$")


@dataclass(frozen=True)
class Origin:
    """The PyTorch origin of one ONNX node.

    Attributes:
        node: The ONNX node name.
        module: Module path (``backbone.conv1``); ``""`` is the top-level module. For
            TorchScript names without surgeon's metadata, uncalled containers are
            missing from it (see the module docstring).
        module_class: Short class name (``Conv2d``), None when the file does not say.
        file: Source file of the line that called the module, when known.
        line: That line's number.
        code: That line's text (dynamo exports only).
        exporter: ``dynamo``, ``torchscript`` or ``surgeon`` (surgeon's metadata).
        call: Which call of a module used several times (0 = first).
        scopes: Module paths from the outermost to this node's module.
    """

    node: str
    module: str
    module_class: str | None = None
    file: str | None = None
    line: int | None = None
    code: str | None = None
    exporter: str = "dynamo"
    call: int = 0
    scopes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One phrase for reports: ``"`conv1` (Conv2d), model.py:5"``."""
        what = f"`{self.module}`" if self.module else "the top-level module"
        extras = [self.module_class] if self.module_class else []
        if self.call:
            extras.append(f"call {self.call + 1}")
        if extras:
            what += f" ({', '.join(extras)})"
        if self.file:
            what += f", {os.path.basename(self.file)}"
            if self.line is not None:
                what += f":{self.line}"
        return what

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "module": self.module,
            "module_class": self.module_class,
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "exporter": self.exporter,
            "call": self.call,
            "scopes": list(self.scopes),
            "description": self.describe(),
        }


def _proto(model) -> onnx.ModelProto:
    return model.proto if hasattr(model, "proto") else model


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _literal_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _short_class(qualified: str | None) -> str | None:
    if not qualified:
        return None
    return qualified.rsplit(".", 1)[-1]


def _user_frame_dynamo(stack: str) -> tuple[str | None, int | None, str | None]:
    """The innermost frame outside torch in a dynamo stack trace (outermost first)."""
    lines = stack.splitlines()
    best = (None, None, None)
    for i, text in enumerate(lines):
        m = _DYNAMO_FRAME.search(text)
        if not m or _LIBRARY_FRAME.search(m["file"]):
            continue
        code = lines[i + 1].strip() if i + 1 < len(lines) else None
        if code and _DYNAMO_FRAME.search(code):
            code = None
        best = (m["file"], int(m["line"]), code)
    return best


def _user_frame_torchscript(doc: str) -> tuple[str | None, int | None]:
    """The innermost frame outside torch in a TorchScript doc_string (innermost first)."""
    for text in doc.splitlines():
        m = _TORCHSCRIPT_FRAME.match(text.strip())
        if m and not _LIBRARY_FRAME.search(m["file"]):
            return m["file"], int(m["line"])
    return None, None


def torchscript_levels(node: onnx.NodeProto) -> list[str] | None:
    """The scope levels of a TorchScript-style name (``/a/conv/Conv`` -> ``['a', 'conv']``),
    or None when the name is not one."""
    name = node.name
    if not name.startswith("/") or not node.op_type:
        return None
    parts = name.split("/")[1:]
    if not parts:
        return None
    last = parts[-1]
    # The last part is the op type, possibly numbered (`Conv`, `Constant_3`).
    if last != node.op_type and not re.fullmatch(re.escape(node.op_type) + r"_\d+", last):
        return None
    if any(not p for p in parts[:-1]):
        return None
    return parts[:-1]


def _split_call(level: str, known_levels: set[str]) -> tuple[str, int]:
    """``act_1`` -> (``act``, 1) when ``act`` is also a level in the model; a module that is
    really named ``b_1`` (no ``b`` level anywhere) keeps its name."""
    m = _CALL_SUFFIX.match(level)
    if m and m["base"] in known_levels:
        return m["base"], int(m["call"])
    return level, 0


def _join_levels(levels: Iterable[str]) -> list[str]:
    """Module paths of nested TorchScript levels, outermost first.

    A Sequential's children repeat its name (``deep``, ``deep.0``, ``deep.0.0``): such a
    level extends the previous one instead of nesting a new attribute under it.
    """
    parts: list[str] = []
    paths: list[str] = []
    for level in levels:
        if parts and level.startswith(parts[-1] + "."):
            parts[-1] = level
        else:
            parts.append(level)
        paths.append(".".join(parts))
    return paths


@dataclass(frozen=True)
class _NodeScope:
    index: int
    node: onnx.NodeProto
    origin: Origin | None
    # (module path, call chain) for every enclosing module, outermost first. The call
    # chain identifies one call of the module: TorchScript's per-level call numbers.
    frames: tuple[tuple[str, tuple[int, ...]], ...]


def _scan(proto: onnx.ModelProto) -> list[_NodeScope]:
    nodes = list(proto.graph.node)
    levels_of = [torchscript_levels(n) for n in nodes]
    known = {lv for levels in levels_of if levels for lv in levels}
    out = []
    for i, (node, levels) in enumerate(zip(nodes, levels_of, strict=True)):
        props = _props(node)
        origin = None
        frames: tuple = ()
        if SURGEON_MODULE in props:
            module = props[SURGEON_MODULE]
            file, line = None, None
            source = props.get(SURGEON_SOURCE)
            if source and ":" in source:
                f, _, ln = source.rpartition(":")
                file, line = f, int(ln) if ln.isdigit() else None
            call = 0
            if levels:
                chain = [_split_call(lv, known)[1] for lv in levels]
                call = chain[-1] if chain else 0
                frames = _frames_from_chain(module, levels, known)
            else:
                frames = tuple((p, ()) for p in _prefixes(module))  # no call information available
            origin = Origin(
                node.name,
                module,
                props.get(SURGEON_CLASS) or None,
                file,
                line,
                None,
                "surgeon",
                call,
                tuple(p for p, _ in frames),
            )
        elif DYNAMO_SCOPES in props:
            scopes = _literal_list(props[DYNAMO_SCOPES]) or []
            classes = _literal_list(props.get(DYNAMO_CLASSES)) or []
            modules = scopes[1:-1]  # drop the root '' and the trailing FX node name
            module = modules[-1] if modules else ""
            # class_hierarchy is [root class, one class per module..., aten op]
            cls = classes[len(modules)] if len(classes) > len(modules) else None
            file, line, code = _user_frame_dynamo(props.get(DYNAMO_STACK, ""))
            frames = tuple((m, ()) for m in modules)
            origin = Origin(
                node.name,
                module,
                _short_class(cls),
                file,
                line,
                code,
                "dynamo",
                0,
                tuple(modules),
            )
        elif levels is not None:
            split = [_split_call(lv, known) for lv in levels]
            paths = _join_levels(base for base, _ in split)
            module = paths[-1] if paths else ""
            file, line = _user_frame_torchscript(node.doc_string)
            calls = [c for _, c in split]
            frames = tuple((p, tuple(calls[: k + 1])) for k, p in enumerate(paths))
            origin = Origin(
                node.name,
                module,
                None,
                file,
                line,
                None,
                "torchscript",
                calls[-1] if calls else 0,
                tuple(paths),
            )
        out.append(_NodeScope(i, node, origin, frames))
    return out


def _prefixes(path: str) -> list[str]:
    atoms = path.split(".") if path else []
    return [".".join(atoms[: k + 1]) for k in range(len(atoms))]


def _frames_from_chain(module: str, levels: list[str], known: set[str]):
    """Frames for a node whose exact module path surgeon recorded, with TorchScript's
    per-level call numbers: the exact path's prefixes are aligned with the levels from
    the innermost outwards."""
    split = [_split_call(lv, known) for lv in levels]
    paths = _join_levels(base for base, _ in split)
    calls = [c for _, c in split]
    # Map each joined path to the full path ending with it (exact names from surgeon).
    full = []
    for p in paths:
        candidates = [q for q in _prefixes(module) if q == p or q.endswith("." + p)]
        full.append(candidates[-1] if candidates else p)
    return tuple((f, tuple(calls[: k + 1])) for k, f in enumerate(full))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Index:
    """A scanned model: its node scopes, and where to find a node or tensor among them
    (so that asking for every node's origin stays linear in the model's size)."""

    scopes: list[_NodeScope]
    by_node: dict[str, _NodeScope]
    by_tensor: dict[str, _NodeScope]


def _build_index(proto: onnx.ModelProto) -> _Index:
    scanned = _scan(proto)
    by_node: dict[str, _NodeScope] = {}
    by_tensor: dict[str, _NodeScope] = {}
    for s in scanned:
        # setdefault: the first node wins, as a search in node order would find it.
        by_node.setdefault(s.node.name, s)
        for t in s.node.output:
            by_tensor.setdefault(t, s)
    return _Index(scanned, by_node, by_tensor)


def _index(model) -> _Index:
    proto = _proto(model)
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


def _scopes(model) -> list[_NodeScope]:
    return _index(model).scopes


def origins(model) -> dict[str, Origin]:
    """Every named node of the main graph that has a PyTorch origin, by node name."""
    return {s.node.name: s.origin for s in _scopes(model) if s.origin is not None and s.node.name}


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


def _resolve_path(path: str, module_paths: set[str]) -> str | None:
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
    scanned = _scopes(model)
    proto = _proto(model)
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
            resolved = _resolve_path(path, module_paths)
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
