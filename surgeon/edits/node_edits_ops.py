"""The operations of ``surgeon edit`` / :func:`surgeon.edit_nodes`, and their values.

One frozen dataclass per operation (the Python API builds them; the command line and a
``--plan`` JSON file are read into the same objects by :mod:`surgeon.edits.node_edits_cli`):

- :class:`SetAttribute` / :class:`RemoveAttribute`: a node's attribute;
- :class:`ReplaceInitializer`: an initializer's value, from an array or a ``.npy`` file;
- :class:`BypassNode`: the node goes, its readers read its first input instead;
- :class:`DeleteNode`: a bypass, and what only fed the node goes too;
- :class:`InsertNode`: a new node reads a tensor, the tensor's readers read its output;
- :class:`ChangeOpType`: a node's op type (and domain).

Attribute values are typed by what the model already says: the attribute the node has,
else the op's schema at the model's opset, else (an op no schema describes: a custom
domain) the value itself. A string value for an attribute that is not a string is read
as text (``"3"``, ``"0.5"``, ``"[1,2]"``, ``"1,2"``), the way the command line gives it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from surgeon.annotations import checked_init
from surgeon.errors import UsageError

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# numpy kinds an initializer may hold: bool, ints, unsigned ints, floats, complex. Text
# and objects are refused (an object array would need pickle, which is never allowed).
NUMERIC_KINDS = frozenset("biufc")


@checked_init
@dataclass(frozen=True)
class SetAttribute:
    """Set (add or replace) attribute ``attribute`` of node ``node`` to ``value``.

    ``value``: an int, float, str, bytes, a list of those, or an array (a tensor
    attribute); a str for a non-string attribute is read as text (``"[1,2]"``).
    """

    node: str
    attribute: str
    value: object

    kind = "set-attribute"


@checked_init
@dataclass(frozen=True)
class RemoveAttribute:
    """Remove attribute ``attribute`` of node ``node`` (refused when the schema requires it)."""

    node: str
    attribute: str

    kind = "remove-attribute"


@checked_init
@dataclass(frozen=True)
class ReplaceInitializer:
    """Replace the value of initializer ``name`` by ``value``: an array, or the path of a
    ``.npy`` file (read without pickle). A new dtype or shape is allowed and reported."""

    name: str
    value: object

    kind = "initializer"


@checked_init
@dataclass(frozen=True)
class BypassNode:
    """Remove node ``node``; whatever read its first output reads its first input."""

    node: str

    kind = "bypass"


@checked_init
@dataclass(frozen=True)
class DeleteNode:
    """Remove node ``node`` as :class:`BypassNode` does, then every node and initializer
    upstream of it that fed nothing else."""

    node: str

    kind = "delete"


@checked_init
@dataclass(frozen=True)
class InsertNode:
    """Insert a node of ``op_type`` reading ``tensor`` (then ``extra_inputs``); every
    reader of ``tensor`` reads the new node's output instead. After a graph output, the
    new node's output takes the output's name.

    Attributes:
        tensor: The tensor the new node reads first.
        op_type: Its op type (checked against the schema at the model's opset).
        attributes: Attribute name -> value (typed as :class:`SetAttribute` types them).
        domain: Its domain ("" for the default ONNX domain).
        name: Its node name (default: made from the op type and the tensor).
        extra_inputs: More existing tensors it reads, after ``tensor``.
    """

    tensor: str
    op_type: str
    attributes: Mapping[str, object] | None = None
    domain: str = ""
    name: str | None = None
    extra_inputs: Sequence[str] = ()

    kind = "insert-after"


@checked_init
@dataclass(frozen=True)
class ChangeOpType:
    """Change node ``node``'s op type to ``op_type`` (``domain``: None keeps its own),
    keeping its inputs, outputs and attributes (which the new op must know)."""

    node: str
    op_type: str
    domain: str | None = None

    kind = "op-type"


OPERATIONS = (
    SetAttribute,
    RemoveAttribute,
    ReplaceInitializer,
    BypassNode,
    DeleteNode,
    InsertNode,
    ChangeOpType,
)
Operation = (
    SetAttribute
    | RemoveAttribute
    | ReplaceInitializer
    | BypassNode
    | DeleteNode
    | InsertNode
    | ChangeOpType
)


def describe_operation(op: Operation) -> dict:
    """The operation as JSON-able parameters (arrays by dtype and shape, not by value)."""
    out: dict = {"op": op.kind}
    for key, value in vars(op).items():
        out[key] = describe_value(value)
    return out


def describe_value(value):
    if isinstance(value, np.ndarray):
        return {"array": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return {str(k): describe_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------ attribute values
ATTRIBUTE_TYPES = {
    AttributeProto.INT: "int",
    AttributeProto.FLOAT: "float",
    AttributeProto.STRING: "string",
    AttributeProto.INTS: "ints",
    AttributeProto.FLOATS: "floats",
    AttributeProto.STRINGS: "strings",
    AttributeProto.TENSOR: "tensor",
}


def type_text(kind: int) -> str:
    return ATTRIBUTE_TYPES.get(kind) or AttributeProto.AttributeType.Name(kind).lower()


def opset_version(proto: onnx.ModelProto, domain: str) -> int | None:
    """The model's opset of ``domain`` ("" and "ai.onnx" are one), or None."""
    wanted = {"", "ai.onnx"} if domain in ("", "ai.onnx") else {domain}
    return next((int(o.version) for o in proto.opset_import if o.domain in wanted), None)


def schema_of(op_type: str, domain: str, proto: onnx.ModelProto):
    """The op's schema at the model's opset of its domain, or None (no such op there)."""
    version = opset_version(proto, domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(op_type, version, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None


def literal_type(value) -> int:
    """The attribute type a value says it is, for an op no schema describes."""
    if isinstance(value, str):
        text = value.strip()
        for parse, kind in ((int, AttributeProto.INT), (float, AttributeProto.FLOAT)):
            try:
                parse(text)
                return kind
            except ValueError:
                pass
        if text.startswith("["):
            items = _list_items(text)
            if items is not None:
                return literal_type(items)
        return AttributeProto.STRING
    if isinstance(value, np.ndarray):
        return AttributeProto.TENSOR
    if isinstance(value, bool | int | np.integer):
        return AttributeProto.INT
    if isinstance(value, float | np.floating):
        return AttributeProto.FLOAT
    if isinstance(value, bytes):
        return AttributeProto.STRING
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str | bytes) for v in value):
            return AttributeProto.STRINGS
        if all(isinstance(v, bool | int | np.integer) for v in value):
            return AttributeProto.INTS
        return AttributeProto.FLOATS
    raise UsageError(f"cannot tell the attribute type of a {type(value).__name__} value")


def _list_items(text: str):
    """``[1, 2]`` / ``["a","b"]`` read as JSON, or None."""
    try:
        items = json.loads(text)
    except ValueError:
        return None
    return items if isinstance(items, list) else None


def _split_list(value) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            items = _list_items(text)
            if items is None:
                raise UsageError(f"`{value}` is not a list: write [1,2] or 1,2")
            return items
        return [] if not text else [part.strip() for part in text.split(",")]
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _int(value) -> int:
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    raise UsageError(f"`{describe_value(value)}` is not an integer")


def _float(value) -> float:
    if isinstance(value, bool | np.bool_):
        raise UsageError(f"`{value}` is not a number")
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise UsageError(f"`{describe_value(value)}` is not a number")


def _string(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise UsageError(f"`{describe_value(value)}` is not a string")


def _tensor(value, name: str, like: onnx.TensorProto | None) -> onnx.TensorProto:
    if isinstance(value, str | os.PathLike) and str(value).endswith(".npy"):
        array = load_npy(value)
    elif isinstance(value, str):
        try:  # a number or a list of numbers, as JSON writes them
            array = np.asarray(json.loads(value))
        except ValueError:
            raise UsageError(f"`{value}` is neither a .npy file nor numbers like [1, 2]") from None
    else:
        array = np.asarray(value)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise UsageError(f"a tensor attribute takes numbers, not {array.dtype} values")
    if like is not None:  # the tensor keeps its dtype: 0.5 for a float16 value stays float16
        want = helper.tensor_dtype_to_np_dtype(like.data_type)
        cast = array.astype(want)
        if array.dtype != want and not np.array_equal(cast, array):
            raise UsageError(f"the values do not fit the attribute's dtype {np.dtype(want)}")
        array = cast
    elif array.dtype == np.float64:  # a literal 0.5 is a float32 tensor, as ONNX models use
        array = array.astype(np.float32)
    elif array.dtype.kind == "i" and array.dtype != np.int64:
        array = array.astype(np.int64)
    return numpy_helper.from_array(array, name)


def make_attribute(
    name: str, value, kind: int, existing: AttributeProto | None = None
) -> AttributeProto:
    """``value`` as attribute ``name`` of type ``kind``.

    Raises:
        UsageError: The value does not fit the type, or the type cannot be set this way
            (a graph: an If/Loop body).
    """
    if kind == AttributeProto.INT:
        return helper.make_attribute(name, _int(value))
    if kind == AttributeProto.FLOAT:
        return helper.make_attribute(name, _float(value))
    if kind == AttributeProto.STRING:
        return helper.make_attribute(name, _string(value))
    if kind == AttributeProto.INTS:
        return helper.make_attribute(
            name, [_int(v) for v in _split_list(value)], attr_type=AttributeProto.INTS
        )
    if kind == AttributeProto.FLOATS:
        return helper.make_attribute(
            name, [_float(v) for v in _split_list(value)], attr_type=AttributeProto.FLOATS
        )
    if kind == AttributeProto.STRINGS:
        return helper.make_attribute(
            name, [_string(v) for v in _split_list(value)], attr_type=AttributeProto.STRINGS
        )
    if kind == AttributeProto.TENSOR:
        like = existing.t if existing is not None and existing.HasField("t") else None
        return helper.make_attribute(name, _tensor(value, name, like))
    raise UsageError(
        f"a {type_text(kind)} attribute cannot be set this way (only int, float, string, "
        "ints, floats, strings and tensor attributes can)"
    )


# ------------------------------------------------------------------ .npy files
def load_npy(path) -> np.ndarray:
    """A plain numeric array from a ``.npy`` file, read without pickle.

    Raises:
        UsageError: The file is missing, not a ``.npy`` (an ``.npz`` included), holds
            objects (pickled data is never loaded) or text, or is damaged.
    """
    shown = os.fspath(path)
    if not Path(shown).is_file():
        raise UsageError(f"no .npy file `{shown}`")
    try:
        # allow_pickle=False: a .npy can carry pickled objects, which run code on load
        value = np.load(shown, allow_pickle=False)
    except ValueError as e:
        why = (
            "it holds Python objects (pickled data is never loaded)"
            if "pickle" in str(e)
            else str(e)
        )
        raise UsageError(f"cannot read `{shown}` as a plain array: {why}") from None
    except (OSError, EOFError) as e:
        raise UsageError(f"cannot read `{shown}` as a .npy array: {e}") from None
    if not isinstance(value, np.ndarray):
        value.close()
        raise UsageError(
            f"`{shown}` is an .npz archive, not a .npy array",
            hint="Save one array with numpy.save(path, array).",
        )
    if value.dtype.kind not in NUMERIC_KINDS:
        raise UsageError(
            f"`{shown}` holds {value.dtype} values; an initializer takes numbers or booleans"
        )
    return value
