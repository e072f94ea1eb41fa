"""Which outputs of the first model feed which inputs of the second, in a merge.

An explicit map of ``(first_output, second_input)`` pairs; or, without one, the second's
inputs that have the name of a first output; or the single output of the first into the
single input of the second when their dtype and rank agree. Otherwise it stops and lists
the candidates. Every connection is checked (dtype, rank, static dims).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from surgeon.errors import UsageError, close_matches
from surgeon.model import Model, TensorInfo


def describe_tensor(info: TensorInfo | None) -> str:
    """``float32[batch, 7, 64]`` for messages."""
    if info is None:
        return "?"
    return f"{info.dtype or '?'}{info.shape_text()}"


def compatibility_problems(
    out: TensorInfo, inp: TensorInfo, first_name: str, second_name: str
) -> list[str]:
    """Why ``out`` of the first model cannot feed ``inp`` of the second (empty if it can).

    Unknown dtypes, ranks and symbolic dims are accepted; only facts both models state
    can conflict.
    """
    what = (
        f"`{out.name}` of {first_name} ({describe_tensor(out)}) -> "
        f"`{inp.name}` of {second_name} ({describe_tensor(inp)})"
    )
    problems = []
    if out.dtype and inp.dtype and out.dtype != inp.dtype:
        problems.append(f"{what}: dtype {out.dtype} does not match {inp.dtype}")
    if out.shape is not None and inp.shape is not None:
        if len(out.shape) != len(inp.shape):
            problems.append(f"{what}: rank {len(out.shape)} does not match rank {len(inp.shape)}")
        else:
            for axis, (a, b) in enumerate(zip(out.shape, inp.shape, strict=True)):
                if isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b:
                    problems.append(f"{what}: dim {axis} is {a} but the input wants {b}")
    return problems


def _candidates(first: Model, second: Model) -> list[str]:
    return [
        f"outputs of {first.name}: "
        + (", ".join(f"`{o.name}` {describe_tensor(o)}" for o in first.outputs) or "none"),
        f"inputs of {second.name}: "
        + (", ".join(f"`{i.name}` {describe_tensor(i)}" for i in second.inputs) or "none"),
    ]


def plan_connections(
    first: Model,
    second: Model,
    io_map: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """Decide which output of ``first`` feeds which input of ``second``.

    Args:
        io_map: ``(first_output, second_input)`` pairs, or a mapping output -> input.
            None or empty: connect by equal names, else single output to single input.

    Returns:
        The pairs and how they were found: ``"map"``, ``"names"`` or ``"single"``.

    Raises:
        SurgeonError: Unknown names in ``io_map``, an input fed twice, or no way to
            decide without ``io_map`` (the candidates are listed).
    """
    outputs = {o.name: o for o in first.outputs}
    inputs = {i.name: i for i in second.inputs}
    pairs = list(io_map.items() if isinstance(io_map, Mapping) else (io_map or []))
    if pairs:
        problems = []
        fed: dict[str, str] = {}
        for out, inp in pairs:
            if out not in outputs:
                near = close_matches(out, outputs)
                problems.append(
                    f"`{out}` is not an output of {first.name}"
                    + (
                        "; did you mean " + ", ".join(f"`{m}`" for m in near) + "?"
                        if near
                        else f"; its outputs: {', '.join(f'`{o}`' for o in outputs)}"
                    )
                )
            if inp not in inputs:
                near = close_matches(inp, inputs)
                problems.append(
                    f"`{inp}` is not an input of {second.name}"
                    + (
                        "; did you mean " + ", ".join(f"`{m}`" for m in near) + "?"
                        if near
                        else f"; its inputs: {', '.join(f'`{i}`' for i in inputs)}"
                    )
                )
            elif inp in fed and fed[inp] != out:
                problems.append(
                    f"input `{inp}` of {second.name} is fed twice: by `{fed[inp]}` and `{out}`"
                )
            fed.setdefault(inp, out)
        if problems:
            raise UsageError(
                f"cannot connect {first.name} to {second.name}: unknown names in the map",
                problems=problems,
            )
        return list(dict.fromkeys(pairs)), "map"
    by_name = [(i, i) for i in inputs if i in outputs]
    if by_name:
        return by_name, "names"
    if len(outputs) == 1 and len(inputs) == 1:
        (out,) = outputs.values()
        (inp,) = inputs.values()
        if (
            out.dtype
            and out.dtype == inp.dtype
            and out.shape is not None
            and inp.shape is not None
            and len(out.shape) == len(inp.shape)
        ):
            return [(out.name, inp.name)], "single"
    raise UsageError(
        f"cannot tell which outputs of {first.name} feed which inputs of {second.name}: "
        "no names are equal"
        + (
            " and the single output and input differ in dtype or rank"
            if len(outputs) == 1 and len(inputs) == 1
            else ""
        ),
        problems=_candidates(first, second),
        hint="Say which output feeds which input with io_map={OUTPUT: INPUT} "
        "(--map OUTPUT=INPUT on the command line).",
    )
