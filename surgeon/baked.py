"""Baked-constant analysis: which integer constants in a model hold a size seen at export.

An exporter that traces ``x.view(x.shape[0], 3, H * W)`` with Python ints writes
``H * W`` as a number into the Reshape's shape input; the model then runs only at the
export size (or silently gives wrong shapes elsewhere). This module finds such constants
statically, for the two places that explain a failing dynamic dim:
:func:`surgeon.dynamic.check_dynamic` (its suspects) and the export check of
:func:`surgeon.torch.export` (its pitfalls). Each caller words the findings its own way.

* :func:`export_products` lists the sizes an export may have baked in: every product of
  some dims of one input that involves a dynamic dim (``3072 = 3*H*W`` at 32x32);
* :func:`find_baked_constants` finds the shape-like inputs (:data:`SHAPE_INPUTS`) whose
  constant holds one of them, directly or through shape plumbing (a ``Concat`` of a
  traced dim and constants), and optionally a Reshape on a dynamic path whose constant
  shape has no 0 or -1 (it fixes the element count).

A value of 1 is never a suspect: it is far too common to mean anything (this is also why
a batch folded by ``view(1, -1, C)`` is found by running the items, not here; see
:func:`surgeon.dynamic.batch.find_batch_mixer`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from surgeon.model import Model

# The inputs of each op whose values are a shape, sizes or positions (and their role): a
# constant there that equals an export size is how an export bakes a size into the graph.
SHAPE_INPUTS = {
    "Reshape": {1: "shape"},
    "Expand": {1: "shape"},
    "Tile": {1: "repeats"},
    "ConstantOfShape": {0: "shape"},
    "Resize": {3: "sizes"},
    "Slice": {1: "starts", 2: "ends"},
    "Upsample": {1: "scales"},
    "Range": {0: "start", 1: "limit"},
    "Split": {1: "split"},
    "Pad": {1: "pads"},
}

# Ops that only assemble a shape vector from pieces: a baked size may sit a few of these
# upstream of the Reshape that reads it (`x.view(x.shape[0], 3, 64)` gives a Concat of a
# traced dim and constants).
SHAPE_PLUMBING = {"Concat", "Unsqueeze", "Squeeze", "Cast", "Identity"}

# Shape vectors are short; a larger integer tensor is data, not a shape.
_MAX_ELEMENTS = 64


@dataclass(frozen=True)
class Factor:
    """One dim of an input at export: its size, its label (the symbol of a dynamic dim,
    the number of a static one) and whether it is dynamic."""

    size: int
    label: str
    dynamic: bool


@dataclass(frozen=True)
class BakedConstant:
    """A shape-like input of ``node`` read from a constant that looks baked in.

    Attributes:
        node: The node reading the constant.
        index: Which input of the node.
        role: What the input means (``shape``, ``ends``, ...).
        tensor: The constant tensor holding the values (the input itself when direct).
        holder: The Constant node's name, or the initializer's.
        values: The constant's values.
        hit: The value that equals an export size (a key of the products), or None for
            a Reshape whose shape fixes the element count on a dynamic path.
        direct: Whether the node reads the constant itself (not through plumbing).
    """

    node: onnx.NodeProto
    index: int
    role: str
    tensor: str
    holder: str
    values: list[int]
    hit: int | None
    direct: bool

    @property
    def name(self) -> str:
        """The node's name, or the constant's tensor name for an unnamed node."""
        return self.node.name or self.node.input[self.index]


def integer_constants(model: Model) -> dict[str, tuple[str, np.ndarray]]:
    """Small integer constants of the main graph by tensor name: (holder, values), where
    the holder is the Constant node's name (or its output's) or the initializer's."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    g = model.proto.graph
    for t in g.initializer:
        if len(t.dims) <= 1 and (not t.dims or t.dims[0] <= _MAX_ELEMENTS):
            arr = model.tensor_array(t)  # from the model's folder if it is external
            if arr.dtype.kind in "iu":
                out[t.name] = (t.name, arr)
    for n in g.node:
        if n.op_type != "Constant" or not n.output:
            continue
        for a in n.attribute:
            arr = None
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                arr = onnx.numpy_helper.to_array(a.t)
            elif a.name == "value_ints":
                arr = np.array(list(a.ints), dtype=np.int64)
            elif a.name == "value_int":
                arr = np.array(a.i, dtype=np.int64)
            if arr is not None and arr.dtype.kind in "iu" and arr.size <= _MAX_ELEMENTS:
                out[n.output[0]] = (n.name or n.output[0], arr)
    return out


def export_products(
    inputs: Iterable[Sequence[Factor | None]], max_factors: int = 6
) -> dict[int, list[tuple[Factor, ...]]]:
    """The sizes an export may have baked in, with the dims that give each.

    Args:
        inputs: Each input's dims at export; None for a dim whose export size is unknown.
        max_factors: The most dims one product may multiply.

    Returns:
        Value -> every combination of dims of one input giving it that involves a
        dynamic dim, fewest factors first (values of 1 left out). Static dims of size 1
        are left out of the combinations: they add nothing to a product.
    """
    products: dict[int, list[tuple[Factor, ...]]] = {}
    for dims in inputs:
        usable = [d for d in dims if d is not None and (d.dynamic or d.size != 1)]
        for count in range(1, min(max_factors, len(usable)) + 1):
            for combo in itertools.combinations(usable, count):
                if not any(d.dynamic for d in combo):
                    continue
                value = int(np.prod([d.size for d in combo]))
                if value > 1:
                    products.setdefault(value, []).append(combo)
    return products


def constant_sources(
    tensor: str,
    producers: Mapping[str, onnx.NodeProto],
    constants: Mapping[str, tuple[str, np.ndarray]],
    depth: int = 6,
) -> Iterator[tuple[str, str, np.ndarray]]:
    """(tensor, holder, values) of the integer constants that flow into ``tensor``
    through shape plumbing only (``tensor`` itself first)."""
    if tensor in constants:
        holder, values = constants[tensor]
        yield tensor, holder, values
        return
    node = producers.get(tensor)
    if node is None or depth == 0 or node.op_type not in SHAPE_PLUMBING:
        return
    for t in node.input:
        if t:
            yield from constant_sources(t, producers, constants, depth - 1)


def find_baked_constants(
    model: Model, products: Mapping[int, object], *, dynamic_reach: set[str] | None = None
) -> list[BakedConstant]:
    """The shape-like constant inputs that look baked in, in node order.

    Args:
        model: The model to scan (main graph).
        products: Sizes seen at export (see :func:`export_products`); a constant holding
            one of them is reported with that value as ``hit``.
        dynamic_reach: The tensors whose shape follows a dynamic dim. When given, a
            Reshape on such a tensor whose constant shape has no 0 or -1 is reported too
            (``hit`` None): it fixes the element count.
    """
    constants = integer_constants(model)
    producers = model.producers()
    found = []
    for node in model.proto.graph.node:
        for index, role in SHAPE_INPUTS.get(node.op_type, {}).items():
            if index >= len(node.input) or not node.input[index]:
                continue
            if node.op_type == "Slice" and model.opset < 10:
                continue  # starts/ends were attributes then
            name = node.input[index]
            baked = None
            for tensor, holder, array in constant_sources(name, producers, constants):
                values = [int(v) for v in np.ravel(array)]
                hits = [v for v in values if v in products]
                if hits:
                    baked = BakedConstant(
                        node, index, role, tensor, holder, values, hits[0], tensor == name
                    )
                    break
            if baked is None and dynamic_reach is not None and name in constants:
                holder, array = constants[name]
                values = [int(v) for v in np.ravel(array)]
                if (
                    node.op_type == "Reshape"
                    and node.input[0] in dynamic_reach
                    and values
                    and all(v > 0 for v in values)
                ):
                    baked = BakedConstant(node, index, role, name, holder, values, None, True)
            if baked is not None:
                found.append(baked)
    return found
