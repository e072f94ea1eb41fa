"""Weights embedded in a model file, left in that file by reference.

A model exported as one ``.onnx`` file holds its weights inside the protobuf. Parsed as
is, every weight is copied into Python, and every onnxruntime session built from the
model gets another copy. Instead, :func:`skeleton_without_weights` walks the file's
protobuf wire format (the ModelProto's graph, its initializers, each one's
``raw_data``), and returns the file's bytes with the large ``raw_data`` fields left out,
plus where each left-out block lies in the file. The loader parses that skeleton and
turns each such initializer into an external-data reference into the model file itself
(location = the file's name, offset, length): the weights stay on disk, onnxruntime
reads them from the file, and saving streams them, as for a model exported with
external data.

The walk is advisory: anything it does not recognise as a plain initializer (typed data
fields, a second ``raw_data``, a length that disagrees with the dims, an element type
without a fixed width, malformed or truncated wire data) is copied verbatim, and a file
the walk cannot follow to its end is parsed whole, as before. So the parsed model is the
same model either way, values included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from surgeon.protos import INLINE_EXTERNAL_BELOW, encode_varint

# Embedded initializers at least this large stay in the file (as external tensors of
# that size do); smaller ones (shapes, axes, scales) are parsed into memory, where the
# graph logic that reads small constants finds them. Read at each load (tests lower it).
ON_DISK_FROM = INLINE_EXTERNAL_BELOW

# TensorProto element types with a fixed byte width, and that width (packed 4-bit and
# string types are left embedded).
_ITEM_SIZE = {
    1: 4,  # FLOAT
    2: 1,  # UINT8
    3: 1,  # INT8
    4: 2,  # UINT16
    5: 2,  # INT16
    6: 4,  # INT32
    7: 8,  # INT64
    9: 1,  # BOOL
    10: 2,  # FLOAT16
    11: 8,  # DOUBLE
    12: 4,  # UINT32
    13: 8,  # UINT64
    14: 8,  # COMPLEX64
    15: 16,  # COMPLEX128
    16: 2,  # BFLOAT16
}

# Field numbers (onnx.proto).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
# A tensor with only these fields besides one raw_data is a plain initializer
# (dims, data_type, name, doc_string, metadata_props); any other field (typed data,
# segment, external data, data location) leaves the tensor as it is.
_PLAIN_TENSOR_FIELDS = {1, 2, 8, 12, 16}


# A tensor of higher rank stays embedded (the product of a million dims is slow).
_MAX_RANK = 64
# A model or graph of more fields is parsed whole: a crafted file of millions of tiny fields
# would cost seconds in this walk and nothing in protobuf's parser.
_MAX_GRAPH_FIELDS = 2**20


class _Malformed(Exception):
    """The wire data is not what the walk can follow; parse the file whole."""


@dataclass(frozen=True)
class LeftOut:
    """One initializer whose ``raw_data`` the skeleton leaves out.

    Attributes:
        index: Its position among the graph's initializers (in the parsed skeleton).
        name: Its name (checked against the parsed tensor).
        offset: Where its bytes start in the file.
        length: How many bytes.
    """

    index: int
    name: str
    offset: int
    length: int


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data, start: int, end: int):
    """(field number, wire type, field start, value start, value end) of each field
    of the message in ``data[start:end]``."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        if wire == 0:
            _, value_end = _varint(data, pos, end)
        elif wire == 1:
            value_end = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            value_end = pos + length
        elif wire == 5:
            value_end = pos + 4
        else:  # groups (long deprecated) or garbage
            raise _Malformed
        if value_end > end:
            raise _Malformed
        yield number, wire, field_start, pos, value_end
        pos = value_end


def _plain_raw_data(data, start: int, end: int) -> tuple[str, int, int, int] | None:
    """(name, where its raw_data field starts, where its bytes start, their length) of a
    plain initializer, or None when the tensor is anything else (see
    ``_PLAIN_TENSOR_FIELDS``)."""
    dims: list[int] = []
    data_type = 0
    name = None
    raw = None
    for number, wire, field_start, value_start, value_end in _fields(data, start, end):
        if len(dims) > _MAX_RANK:
            return None
        if number == _TENSOR_RAW_DATA and wire == 2 and raw is None:
            raw = (field_start, value_start, value_end - value_start)
        elif number == _TENSOR_DIMS and wire == 0:
            dims.append(_varint(data, value_start, value_end)[0])
        elif number == _TENSOR_DIMS and wire == 2:  # packed dims
            pos = value_start
            while pos < value_end:
                dim, pos = _varint(data, pos, value_end)
                dims.append(dim)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = _varint(data, value_start, value_end)[0]
        elif number == _TENSOR_NAME and wire == 2:
            try:
                name = bytes(data[value_start:value_end]).decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif number not in _PLAIN_TENSOR_FIELDS:
            return None
    if raw is None or name is None or data_type not in _ITEM_SIZE:
        return None
    # dims are int64 on the wire: a negative one reads as a huge varint and never
    # matches the length below.
    if math.prod(dims) * _ITEM_SIZE[data_type] != raw[2]:
        return None
    return name, *raw


def _graph_skeleton(data, start: int, end: int, base: int, threshold: int, left_out: list):
    """The GraphProto in ``data[start:end]`` with the large raw_data left out; its
    initializers are counted from ``base`` (a graph field may appear more than once)."""
    parts = []
    index = base
    copied = start  # data[copied:field_start] is still to be copied verbatim
    for count, (number, wire, field_start, value_start, value_end) in enumerate(
        _fields(data, start, end)
    ):
        if count > _MAX_GRAPH_FIELDS:
            raise _Malformed
        if number != _GRAPH_INITIALIZER or wire != 2:
            continue
        plain = _plain_raw_data(data, value_start, value_end)
        if plain is not None and plain[3] >= threshold:
            parts.append(data[copied:field_start])
            copied = value_end
            name, raw_field, offset, length = plain
            left_out.append(LeftOut(index, name, offset, length))
            # the tensor's fields around its one raw_data field, as they are
            body = b"".join((data[value_start:raw_field], data[offset + length : value_end]))
            parts.append(_key(_GRAPH_INITIALIZER) + encode_varint(len(body)) + body)
        index += 1
    parts.append(data[copied:end])
    return parts, index


def _key(number: int) -> bytes:
    return encode_varint(number << 3 | 2)


def skeleton_without_weights(data: bytes, threshold: int) -> tuple[bytes, list[LeftOut]] | None:
    """The model file ``data`` without the ``raw_data`` of its plain initializers of at
    least ``threshold`` bytes, and where each of those lies in ``data``.

    None when there is nothing to leave out or the walk cannot follow the file (the
    caller then parses ``data`` whole, which reports a damaged file as such).
    """
    view = memoryview(data)
    try:
        parts = []
        left_out: list[LeftOut] = []
        initializers = 0
        copied = 0
        for count, (number, wire, field_start, value_start, value_end) in enumerate(
            _fields(view, 0, len(view))
        ):
            if count > _MAX_GRAPH_FIELDS:
                raise _Malformed
            if number != _MODEL_GRAPH or wire != 2:
                continue
            parts.append(view[copied:field_start])
            copied = value_end
            graph, initializers = _graph_skeleton(
                view, value_start, value_end, initializers, threshold, left_out
            )
            body = b"".join(graph)
            parts.append(_key(_MODEL_GRAPH) + encode_varint(len(body)) + body)
        parts.append(view[copied:])
    except _Malformed:
        return None
    if not left_out:
        return None
    return b"".join(parts), left_out
