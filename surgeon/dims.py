"""Dims of inputs and outputs as users write them: ``Bx3xHxW`` specs, ``NAME:DIMS``
I/O specs, input shapes (``images:1x3x640x640``, ``H=480``), sizes to try (``H=224,320``)
and batch dim lists, and their text form.

A dim is an integer (static, 1 to 2^63-1), a symbol (named dynamic) or None (unnamed
dynamic). Shared by ``reshape-io``, ``check-dynamic`` and their Python twins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from surgeon.errors import UsageError
from surgeon.model import dim_param_name

Dim = int | str | None

# ONNX stores dims (and onnxruntime shapes) as int64: a larger number is no dim at all.
MAX_DIM = 2**63 - 1


def too_large_dim(value: int, where: str) -> UsageError | None:
    """The error for a dim that does not fit an int64 (None when it fits)."""
    if value <= MAX_DIM:
        return None
    return UsageError(
        f"{where}: {value} is larger than any tensor dim can be "
        f"(at most 2^63-1 = {MAX_DIM}, the int64 of ONNX)"
    )


def parse_shape_args(args: Iterable[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Parse ``name:1x3x64x64`` (an input's shape) and ``DIM=64`` (a symbolic dim).

    The same input or dim given twice must say the same thing: conflicting repeats are
    refused, all at once (a silent "last one wins" would run another shape than meant).

    Raises:
        UsageError: An argument matches neither form, or repeats conflict.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    dims: dict[str, int] = {}
    conflicts: list[str] = []
    for arg in args:
        if ":" in arg:
            name, _, spec = arg.rpartition(":")
            name = name.strip()
            spec = spec.strip().strip("[]()")
            parts = [p for p in spec.replace(",", "x").split("x")] if spec else []
            try:
                shape = tuple(int(p) for p in parts)
            except ValueError:
                raise UsageError(
                    f"cannot read the shape in `{arg}`: expected NAME:1x3x224x224 with integer dims"
                ) from None
            if not name or any(d < 0 for d in shape):
                raise UsageError(f"cannot read the shape `{arg}`: expected NAME:1x3x224x224")
            for d in shape:
                if error := too_large_dim(d, f"the shape `{arg}`"):
                    raise error
            if name in shapes and shapes[name] != shape:
                conflicts.append(
                    f"`{name}` is given two shapes: {dims_text(shapes[name])} and {dims_text(shape)}"
                )
                continue
            shapes[name] = shape
        elif "=" in arg:
            name, _, value = arg.partition("=")
            name = name.strip()
            earlier = dims.get(name)
            try:
                dims[name] = int(value)
            except ValueError:
                raise UsageError(
                    f"cannot read the dim size `{arg}`: expected DIM=integer, e.g. H=480"
                ) from None
            if not name:
                raise UsageError(
                    f"cannot read the dim size `{arg}`: the dim has no name; expected DIM=integer, e.g. H=480"
                )
            if dims[name] < 0:
                raise UsageError(f"the dim size `{arg}`: a dim cannot be negative")
            if error := too_large_dim(dims[name], f"the dim size `{arg}`"):
                raise error
            if earlier is not None and earlier != dims[name]:
                conflicts.append(f"`{name}` is given two sizes: {earlier} and {dims[name]}")
                dims[name] = earlier
        else:
            raise UsageError(
                f"cannot read the shape `{arg}`: use INPUT:1x3x224x224 for an input's shape or DIM=224 for a named dim"
            )
    if conflicts:
        raise UsageError("conflicting shapes", problems=conflicts)
    return shapes, dims


def parse_dims(text: str, *, what: str = "shape") -> tuple[Dim, ...]:
    """Parse ``Bx3xHxW`` (or ``B,3,H,W``, ``[B, 3, H, W]``) into dims.

    Each dim is an integer (static), a symbol (named dynamic), or ``?``/``-1`` (unnamed
    dynamic, returned as None). Use commas when a symbol contains an ``x``
    (``batch,max_len``).

    Raises:
        UsageError: An empty spec, or a dim that is neither an integer from 1 to 2^63-1
            nor a name.
    """
    spec = text.strip().strip("[]()").strip()
    if not spec:
        raise UsageError(f"cannot read the {what} `{text}`: it has no dims; expected e.g. Bx3xHxW")
    parts = [p.strip() for p in (spec.split(",") if "," in spec else spec.split("x"))]
    dims: list[Dim] = []
    for p in parts:
        if p in ("?", "-1"):
            dims.append(None)
        elif re.fullmatch(r"\d+", p):
            where = f"the {what}" + ("" if text in what else f" `{text}`")
            if error := _static_dim_error(int(p), where):
                raise error
            dims.append(int(p))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", p):
            dims.append(p)
        else:
            raise UsageError(
                f"cannot read dim `{p}` in the {what} `{text}`: each dim is an integer, a name "
                "(symbolic) or ? for an unnamed dynamic dim, e.g. Bx3xHxW or 1x3x640x640"
            )
    return tuple(dims)


def parse_io_spec(arg: str, *, what: str = "dims") -> tuple[str, tuple[Dim, ...]]:
    """Parse ``NAME:DIMS`` (split at the last ``:``, so names like ``input:0`` work).

    Raises:
        UsageError: No ``:`` or no name.
    """
    name, sep, dims = arg.rpartition(":")
    if not sep or not name.strip():
        raise UsageError(f"cannot read the {what} `{arg}`: expected NAME:DIMS, e.g. images:Bx3xHxW")
    return name.strip(), parse_dims(dims, what=f"{what} `{arg}`")


def _static_dim_error(value: int, where: str) -> UsageError | None:
    """Why ``value`` cannot be a static dim, or None. 0 is refused too: surgeon (like most
    tools) reads a dim_value of 0 as "not static", so it would silently mean dynamic."""
    if value < 1:
        return UsageError(
            f"dim {value} in {where} cannot be a static dim: use an integer >= 1, or a name "
            "or ? for a dynamic dim"
        )
    return too_large_dim(value, f"dim {value} in {where}")


def as_dims(spec: str | Sequence[Dim]) -> tuple[Dim, ...]:
    """Dims from a spec string or a sequence of ints, names and None (``-1``/``?``:
    unnamed dynamic).

    Raises:
        UsageError: A dim that is not an integer >= 1 (below 2^63), a name, or None.
    """
    if isinstance(spec, str):
        return parse_dims(spec)
    dims = []
    for d in spec:
        if d is None or (isinstance(d, int) and d == -1):
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            if error := _static_dim_error(int(d), f"{list(spec)}"):
                raise error
            dims.append(int(d))
        elif isinstance(d, str) and d.strip():
            dims.append(dim_param_name(d))  # `?` and `-1` are unnamed, as in a spec
        else:
            raise UsageError(f"dim {d!r} is not an integer >= 1, a name, or None")
    return tuple(dims)


def dims_text(dims: Sequence[Dim] | None) -> str:
    """``1x3xHx?`` (``?`` for unknown rank, ``scalar`` for rank 0)."""
    if dims is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in dims) if dims else "scalar"


def dims_list(dims: Sequence[Dim] | None) -> list | None:
    """Dims as a JSON list (None for unknown rank)."""
    return list(dims) if dims is not None else None


def parse_batch(items: Iterable[str]) -> list[str] | None:
    """Parse batch dim lists (``B``, ``B,N``; several items allowed): None when none is
    given (the naming rule decides), ``[]`` for ``none``.

    Raises:
        UsageError: ``none`` together with dim names, or an empty name.
    """
    names = [n.strip() for item in items for n in item.split(",")]
    if not names:
        return None
    if "none" in names:
        if names != ["none"]:
            raise UsageError("the batch dims `none` cannot be combined with batch dim names")
        return []
    if not all(names):
        raise UsageError(
            "cannot read the batch dims: an empty name; expected DIM[,DIM...] or none, e.g. B"
        )
    return list(dict.fromkeys(names))


def parse_sizes(items: Iterable[str]) -> dict[str, list[int]]:
    """Parse sizes to try, ``H=224,320`` (one item per dim).

    Raises:
        UsageError: An item is not ``DIM=INT[,INT...]``, a size does not fit an int64, or
            one dim is given different sizes (every conflict listed).
    """
    out: dict[str, list[int]] = {}
    conflicts: list[str] = []
    for item in items:
        name, sep, values = item.rpartition("=")
        try:
            parsed = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            parsed = []
        if not sep or not name.strip() or not parsed:
            raise UsageError(
                f"cannot read the sizes `{item}`: expected DIM=SIZE[,SIZE...], e.g. H=224,320"
            )
        for value in parsed:
            if error := too_large_dim(value, f"the sizes `{item}`"):
                raise error
        name = name.strip()
        if name in out and out[name] != parsed:
            conflicts.append(
                f"`{name}` is given two lists of sizes: {_sizes(out[name])} and {_sizes(parsed)}"
            )
            continue
        out[name] = parsed
    if conflicts:
        raise UsageError("conflicting sizes", problems=conflicts)
    return out


def _sizes(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)
