"""Reading the traces exporters leave on each ONNX node (surgeon's metadata, the dynamo
exporter's metadata, TorchScript-style scoped names and doc strings) into an
:class:`Origin` and the chain of modules the node sits in (see :mod:`surgeon.origin`)."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

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


def model_proto(model) -> onnx.ModelProto:
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


def user_frame_torchscript(doc: str) -> tuple[str | None, int | None]:
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


def split_call(level: str, known_levels: set[str]) -> tuple[str, int]:
    """``act_1`` -> (``act``, 1) when ``act`` is also a level in the model; a module that is
    really named ``b_1`` (no ``b`` level anywhere) keeps its name."""
    m = _CALL_SUFFIX.match(level)
    if m and m["base"] in known_levels:
        return m["base"], int(m["call"])
    return level, 0


def join_levels(levels: Iterable[str]) -> list[str]:
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
class NodeScope:
    index: int
    node: onnx.NodeProto
    origin: Origin | None
    # (module path, call chain) for every enclosing module, outermost first. The call
    # chain identifies one call of the module: TorchScript's per-level call numbers.
    frames: tuple[tuple[str, tuple[int, ...]], ...]


def scan(proto: onnx.ModelProto) -> list[NodeScope]:
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
                chain = [split_call(lv, known)[1] for lv in levels]
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
            split = [split_call(lv, known) for lv in levels]
            paths = join_levels(base for base, _ in split)
            module = paths[-1] if paths else ""
            file, line = user_frame_torchscript(node.doc_string)
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
        out.append(NodeScope(i, node, origin, frames))
    return out


def _prefixes(path: str) -> list[str]:
    atoms = path.split(".") if path else []
    return [".".join(atoms[: k + 1]) for k in range(len(atoms))]


def _frames_from_chain(module: str, levels: list[str], known: set[str]):
    """Frames for a node whose exact module path surgeon recorded, with TorchScript's
    per-level call numbers: the exact path's prefixes are aligned with the levels from
    the innermost outwards."""
    split = [split_call(lv, known) for lv in levels]
    paths = join_levels(base for base, _ in split)
    calls = [c for _, c in split]
    # Map each joined path to the full path ending with it (exact names from surgeon).
    full = []
    for p in paths:
        candidates = [q for q in _prefixes(module) if q == p or q.endswith("." + p)]
        full.append(candidates[-1] if candidates else p)
    return tuple((f, tuple(calls[: k + 1])) for k, f in enumerate(full))
