"""Where a model's declared shapes disagree with what it really produces.

Exporters often declare graph outputs (and ``value_info``) with shapes that are wrong:
stale after an edit, a batch of 1 frozen in, a rank that changed. onnxruntime runs such
models and only warns. :func:`declared_vs_actual` compares the declarations with arrays
from a run and lists every disagreement, so that a report can say where they differ.

Symbolic dims are checked for consistency: a dim named ``N`` may take any size, but the
same size everywhere it appears in one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from surgeon.model import Model, TensorInfo, value_info_to_tensor_info


@dataclass(frozen=True)
class ShapeMismatch:
    """One tensor whose declared dtype or shape is not what a run produced.

    Attributes:
        name: The tensor.
        where: Where it is declared: ``input``, ``output`` or ``value_info``.
        kind: ``dtype``, ``rank``, ``dim`` (a fixed size differs) or ``symbol`` (a named
            dim takes different sizes in one run).
        declared_dtype, declared_shape: What the model says (a shape is a tuple of ints,
            dim names and None for unknown dims).
        actual_dtype, actual_shape: What the run produced.
        message: One readable sentence.
    """

    name: str
    where: str
    kind: str
    declared_dtype: str | None
    declared_shape: tuple[int | str | None, ...] | None
    actual_dtype: str
    actual_shape: tuple[int, ...]
    message: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "where": self.where,
            "kind": self.kind,
            "declared_dtype": self.declared_dtype,
            "declared_shape": list(self.declared_shape)
            if self.declared_shape is not None
            else None,
            "actual_dtype": self.actual_dtype,
            "actual_shape": list(self.actual_shape),
            "message": self.message,
        }


def declarations(model: Model) -> list[tuple[str, TensorInfo]]:
    """Every declaration of the main graph as ``(where, info)``: inputs (initializers
    excluded), then value_info, then outputs, in model order."""
    g = model.proto.graph
    inits = {t.name for t in g.initializer}
    out = [("input", value_info_to_tensor_info(v)) for v in g.input if v.name not in inits]
    out += [("value_info", value_info_to_tensor_info(v)) for v in g.value_info]
    out += [("output", value_info_to_tensor_info(v)) for v in g.output]
    return out


def declared_names(model: Model) -> list[str]:
    """Names of main-graph tensors with a declared dtype or shape (the ones worth asking a
    run for before calling :func:`declared_vs_actual`)."""
    names = [
        info.name
        for _, info in declarations(model)
        if info.dtype is not None or info.shape is not None
    ]
    return list(dict.fromkeys(names))


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def declared_vs_actual(model: Model, values: Mapping[str, np.ndarray]) -> list[ShapeMismatch]:
    """Compare the declared dtypes and shapes of ``model`` with ``values`` from a run.

    Args:
        model: The model whose graph inputs, outputs and value_info are checked.
        values: Tensors by name, e.g. the feeds and the outputs of
            ``surgeon.run(model, feeds, outputs=declared_names(model))``. Names without a
            declaration, and non-tensor values (sequences, empty optionals), are skipped.

    Returns:
        Every disagreement, in declaration order (inputs, value_info, outputs); empty
        when the model says the truth about every tensor in ``values``.
    """
    found: list[ShapeMismatch] = []
    # symbol -> (size, tensor that fixed it)
    bound: dict[str, tuple[int, str]] = {}
    for where, info in declarations(model):
        value = values.get(info.name)
        if value is None or isinstance(value, (list, tuple, dict)):
            continue
        array = np.asarray(value)
        actual_dtype = "str" if array.dtype.kind in "OUS" else array.dtype.name
        actual_shape = tuple(int(d) for d in array.shape)
        for kind, message in _disagreements(where, info, actual_dtype, actual_shape, bound):
            found.append(
                ShapeMismatch(
                    info.name,
                    where,
                    kind,
                    info.dtype,
                    info.shape,
                    actual_dtype,
                    actual_shape,
                    message,
                )
            )
    return found


def _disagreements(
    where: str,
    info: TensorInfo,
    actual_dtype: str,
    actual_shape: tuple[int, ...],
    bound: dict[str, tuple[int, str]],
) -> list[tuple[str, str]]:
    """``(kind, message)`` for each way ``info`` disagrees with the actual value; binds
    the symbols it meets first in ``bound``."""
    out: list[tuple[str, str]] = []
    label = f"{where} `{info.name}`"
    if info.dtype is not None and info.dtype != actual_dtype:
        out.append(("dtype", f"{label} is declared {info.dtype} but is {actual_dtype}"))
    if info.shape is None:
        return out
    declared, actual = _shape_text(info.shape), _shape_text(actual_shape)
    if len(info.shape) != len(actual_shape):
        out.append(
            (
                "rank",
                f"{label} is declared {declared} (rank {len(info.shape)}) but is {actual} "
                f"(rank {len(actual_shape)})",
            )
        )
        return out
    for axis, (want, got) in enumerate(zip(info.shape, actual_shape, strict=True)):
        if isinstance(want, int) and want != got:
            out.append(
                (
                    "dim",
                    f"{label} is declared {declared} but is {actual}: dim {axis} is {got}, "
                    f"not {want}",
                )
            )
            break
        if isinstance(want, str):
            first = bound.setdefault(want, (got, info.name))
            if first[0] != got:
                out.append(
                    (
                        "symbol",
                        f"{label} is declared {declared} but is {actual}: dim {axis} `{want}` "
                        f"is {got} here but {first[0]} in `{first[1]}`",
                    )
                )
                break
    return out
