"""Reading ``surgeon edit``'s operations from command-line specs and ``--plan`` files.

Node and tensor names come from untrusted models and may hold ``.``, ``=``, ``:`` or any
other character, so a spec is never split blindly: every way of splitting it that the
syntax allows is tried, and the one whose name exists in the model is taken. Attribute
names are identifiers and op types too, which is what makes this work:

- ``NODE.ATTR=VALUE``: at each ``=``, the text before it split at its last ``.``;
- ``NODE.ATTR``: split at the last ``.``;
- ``NAME=FILE.npy``: at each ``=``, the text before it an initializer;
- ``TENSOR:OP[:ATTR=V,...]``: at each ``:``, the text before it a tensor and the next
  part an op type; attributes are split at commas outside brackets (``perm=[0,2,1]``);
- ``NODE=OP`` / ``NODE=DOMAIN::OP``: at each ``=``, the text before it a node;
- ``NODE`` (bypass, delete): the whole text.

When two splits both name something, the spec is ambiguous and refused, pointing to
``--plan edits.json``, a JSON list whose objects name every part separately (see
:data:`PLAN_KEYS`; a relative ``npy`` path is relative to the plan file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx

from surgeon.edits.node_edits_graph import find_node, tensor_names
from surgeon.edits.node_edits_ops import (
    IDENTIFIER,
    BypassNode,
    ChangeOpType,
    DeleteNode,
    InsertNode,
    RemoveAttribute,
    ReplaceInitializer,
    SetAttribute,
)
from surgeon.errors import SurgeonError, UsageError, did_you_mean, unknown_name

# flag -> (operation, what the spec looks like)
FLAGS = {
    "--set-attribute": (SetAttribute, "NODE.ATTR=VALUE"),
    "--remove-attribute": (RemoveAttribute, "NODE.ATTR"),
    "--initializer": (ReplaceInitializer, "NAME=FILE.npy"),
    "--bypass": (BypassNode, "NODE"),
    "--delete": (DeleteNode, "NODE"),
    "--insert-after": (InsertNode, "TENSOR:OP[:ATTR=V,...]"),
    "--op-type": (ChangeOpType, "NODE=OP"),
}
# A plan object's "op" -> the operation, its required keys, its optional keys
PLAN_KEYS = {
    "set-attribute": (SetAttribute, ("node", "attribute", "value"), ()),
    "remove-attribute": (RemoveAttribute, ("node", "attribute"), ()),
    "initializer": (ReplaceInitializer, ("name", "npy"), ()),
    "bypass": (BypassNode, ("node",), ()),
    "delete": (DeleteNode, ("node",), ()),
    "insert-after": (
        InsertNode,
        ("tensor", "op_type"),
        ("attributes", "domain", "name", "extra_inputs"),
    ),
    "op-type": (ChangeOpType, ("node", "op_type"), ("domain",)),
}
_OP = re.compile(r"(?:([A-Za-z0-9_.]+)::)?([A-Za-z_][A-Za-z0-9_]*)\Z")


def _ambiguous(flag: str, spec: str, readings: list[str]) -> UsageError:
    return UsageError(
        f"`{flag} {spec}` can be read {len(readings)} ways in this model",
        problems=readings,
        hint="Name each part separately in a --plan edits.json file.",
    )


def _is_node(proto: onnx.ModelProto, name: str) -> bool:
    nodes = proto.graph.node
    return any(n.name == name for n in nodes) or any(name in n.output for n in nodes)


def _splits(spec: str, sep: str) -> list[tuple[str, str]]:
    return [(spec[:i], spec[i + 1 :]) for i, c in enumerate(spec) if c == sep]


def parse_spec(flag: str, spec: str, proto: onnx.ModelProto, where: str):
    """One operation from ``flag`` and its text, read against ``proto``.

    Raises:
        UsageError: The text does not have the flag's form, or reads several ways.
        NameNotFoundError: The names it holds are not in the model (close matches).
    """
    cls, form = FLAGS[flag]
    wrong = UsageError(f"cannot read `{flag} {spec}`: expected {form}")
    if cls in (BypassNode, DeleteNode):
        if not spec:
            raise wrong
        return cls(spec)
    if cls is RemoveAttribute:
        node, dot, attr = spec.rpartition(".")
        if not dot or not node or not IDENTIFIER.match(attr):
            raise wrong
        return cls(node, attr)
    if cls is SetAttribute:
        found = []
        for key, value in _splits(spec, "="):
            node, dot, attr = key.rpartition(".")
            if dot and node and IDENTIFIER.match(attr) and _is_node(proto, node):
                found.append(SetAttribute(node, attr, value))
        if len(found) > 1:  # a reading whose value cannot be the attribute's is no reading
            found = [op for op in found if _fits(proto, op, where)] or found
        return _one(flag, spec, found, wrong, lambda: _guess_node(spec, proto, where, "="))
    if cls is ReplaceInitializer:
        inits = {t.name for t in proto.graph.initializer}
        found = [ReplaceInitializer(n, p) for n, p in _splits(spec, "=") if n in inits and p]
        if not found and "=" in spec:
            name = spec.rpartition("=")[0]
            raise unknown_name("initializer", name, sorted(inits), where)
        return _one(flag, spec, found, wrong, None)
    if cls is ChangeOpType:
        found = []
        for node, op in _splits(spec, "="):
            match = _OP.match(op)
            if match and node and _is_node(proto, node):
                found.append(ChangeOpType(node, match[2], match[1]))
        return _one(
            flag, spec, found, wrong, lambda: _guess_node(spec, proto, where, "=", last=True)
        )
    return _parse_insert(flag, spec, proto, where, wrong)


def _fits(proto: onnx.ModelProto, op: SetAttribute, where: str) -> bool:
    """Whether ``op`` could be applied to ``proto`` (on a copy)."""
    from surgeon.edits.node_edits_graph import apply_set_attribute

    copy = onnx.ModelProto()
    copy.graph.CopyFrom(proto.graph)
    copy.opset_import.extend(proto.opset_import)
    try:
        apply_set_attribute(copy, op, where)
    except SurgeonError:
        return False
    return True


def _one(flag, spec, found, wrong, guess):
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise _ambiguous(flag, spec, [_reading(op) for op in found])
    if guess is not None:
        guess()
    raise wrong


def _reading(op) -> str:
    parts = ", ".join(f"{k} `{v}`" for k, v in vars(op).items() if v not in (None, (), ""))
    return f"{op.kind}: {parts}"


def _guess_node(spec: str, proto, where: str, sep: str, last: bool = False) -> None:
    """Raise the unknown-node error for the likeliest reading of ``spec``."""
    if sep not in spec:
        return
    key = spec.rpartition(sep)[0] if last else spec.partition(sep)[0]
    node = key if last else key.rpartition(".")[0]
    if node:
        find_node(proto, node, where)


def _parse_insert(flag, spec, proto, where, wrong) -> InsertNode:
    tensors = set(tensor_names(proto.graph))
    found = []
    for tensor, rest in _splits(spec, ":"):
        op, _, attrs = rest.partition(":")
        if tensor in tensors and IDENTIFIER.match(op):
            found.append((tensor, op, attrs))
    if not found:
        if ":" in spec:
            raise unknown_name("tensor", spec.partition(":")[0], sorted(tensors), where)
        raise wrong
    if len(found) > 1:
        raise _ambiguous(flag, spec, [f"tensor `{t}`, op {o}" for t, o, _ in found])
    tensor, op, attrs = found[0]
    return InsertNode(tensor, op, parse_attributes(attrs, flag, spec))


def parse_attributes(text: str, flag: str = "--insert-after", spec: str = "") -> dict[str, str]:
    """``a=1,perm=[0,2,1],mode=linear`` into a dict of texts (commas inside brackets
    belong to the value).

    Raises:
        UsageError: A part without ``=`` or a name given twice.
    """
    if not text:
        return {}
    parts, depth, current = [], 0, ""
    for c in text:
        depth += c == "["
        depth -= c == "]"
        if c == "," and depth <= 0:
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    out: dict[str, str] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq or not IDENTIFIER.match(name.strip()):
            raise UsageError(f"cannot read `{part}` in `{flag} {spec}`: expected ATTR=VALUE")
        if name.strip() in out:
            raise UsageError(f"attribute `{name.strip()}` is given twice in `{flag} {spec}`")
        out[name.strip()] = value
    return out


# ------------------------------------------------------------------ --plan
def read_plan(path: str) -> list:
    """The operations of a ``--plan`` JSON file (see :data:`PLAN_KEYS`), in order.

    Raises:
        UsageError: Not readable, not JSON, not a list of objects, or objects with an
            unknown op, unknown keys or missing keys (every problem listed).
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read the plan `{path}`: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"the plan `{path}` is not JSON: {e}") from None
    if not isinstance(data, list):
        raise UsageError(
            f"the plan `{path}` must be a JSON list of operations, not a {type(data).__name__}",
            hint='e.g. [{"op": "bypass", "node": "n3"}]',
        )
    operations, problems = [], []
    for i, item in enumerate(data, 1):
        try:
            operations.append(_plan_operation(item, file.parent))
        except SurgeonError as e:
            problems.append(f"operation {i}: {e.message}")
    if problems:
        raise UsageError(f"the plan `{path}` has {len(problems)} problem(s)", problems=problems)
    if not operations:
        raise UsageError(f"the plan `{path}` holds no operation")
    return operations


def _plan_operation(item, folder: Path):
    if not isinstance(item, dict):
        raise UsageError(f"expected an object, not {type(item).__name__}")
    kind = item.get("op")
    if kind not in PLAN_KEYS:
        hint = did_you_mean(str(kind), PLAN_KEYS) if isinstance(kind, str) else None
        raise UsageError(
            f"`op` is {kind!r}; expected one of {', '.join(PLAN_KEYS)}"
            + (f"; {hint}" if hint else "")
        )
    cls, required, optional = PLAN_KEYS[kind]
    keys = set(item) - {"op"}
    unknown = sorted(keys - set(required) - set(optional))
    missing = [k for k in required if k not in item]
    if unknown or missing:
        raise UsageError(
            f"{kind}: "
            + "; ".join(
                [f"unknown key `{k}` (keys: {', '.join(required + optional)})" for k in unknown]
                + [f"missing key `{k}`" for k in missing]
            )
        )
    values = {k: item[k] for k in keys}
    if cls is ReplaceInitializer:
        npy = values.pop("npy")
        if not isinstance(npy, str):
            raise UsageError(f"initializer: `npy` must be a path, not {type(npy).__name__}")
        values["value"] = str(folder / npy)
    if "extra_inputs" in values and isinstance(values["extra_inputs"], list):
        values["extra_inputs"] = tuple(values["extra_inputs"])
    return cls(**values)


def list_npy_files(operations) -> list[str]:
    """The .npy files the operations read."""
    return [
        str(op.value)
        for op in operations
        if isinstance(op, ReplaceInitializer) and isinstance(op.value, str)
    ]
