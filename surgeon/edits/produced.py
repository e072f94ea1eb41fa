"""What a model's outputs really are when it runs: the dtype and dims onnxruntime produces,
for ``reshape_io`` to replace a stale output declaration (an exporter that wrote
``[1, seqlen]`` for an output that is really ``[W/8, 1, 8210]``).

The model runs at the sizes :func:`surgeon.dynamic.check_dynamic` would try (every dynamic
input dim at its first size, then one varied at a time). An output dim that keeps its size
in every run is static; one that changes is dynamic, named after the input dim it equals
in every run, else after a name the old declaration gave it, else unnamed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from surgeon.dims import Dim, dims_text
from surgeon.dynamic.check import plan_cases, run_cases
from surgeon.errors import UsageError
from surgeon.feeds import FeedOptions
from surgeon.model import Model
from surgeon.runner import RunOptions


@dataclass
class Produced:
    """One output as the model produces it.

    Attributes:
        dims: Static sizes, input dim names, kept names or None (dynamic, unnamed).
        elem_type: The ONNX element type of the value (0: not known).
        shape: The shape of the first run, and ``sizes`` its dim sizes (for messages).
    """

    dims: tuple[Dim, ...]
    elem_type: int
    shape: tuple[int, ...]
    sizes: dict[str, int]

    def where(self) -> str:
        at = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"[{', '.join(map(str, self.shape))}]" + (f" at {at}" if at else "")


def _elem_type(value: np.ndarray) -> int:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, TypeError, ValueError):
        return 0  # a dtype onnx cannot name: the declared one stays


def produced_outputs(
    model: Model,
    *,
    sizes: Mapping[str, Sequence[int]] | None = None,
    export: Mapping[str, int] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    batch: Sequence[str] | None = None,
    old: Mapping[str, Sequence[Dim] | None] | None = None,
) -> dict[str, Produced]:
    """Run ``model`` at several sizes and say what each tensor output really is.

    Args:
        model: The model, with the input dims it will have (its output dims are ignored).
        sizes, export, feed_options, options, batch: As for :func:`check_dynamic`.
        old: The old declared dims per output, whose names are kept for dynamic dims
            that follow no input dim.

    Returns:
        Output name -> Produced; outputs that are not tensors (sequences, optionals)
        are left out.

    Raises:
        UsageError: A dynamic input dim that no run could vary (every such run failed),
            or an output whose rank changes with the sizes.
        RuntimeFailure: onnxruntime cannot load the model, or its first run fails.
    """
    from surgeon.runner import Session

    given, _, variables, cases = plan_cases(model, sizes, export, batch, feed_options)
    session = Session(model, options=options)
    runs, failed = [], []
    for i, (case, _, values, e) in enumerate(run_cases(model, session, cases, feed_options, given)):
        if e is None:
            runs.append((case.dims, values))
        elif i == 0:
            raise e  # not even the first sizes run: nothing to declare
        else:
            failed.append((case, e.message.splitlines()[0]))
    unvaried = [
        v.name for v in variables if not any(d[v.name] != runs[0][0][v.name] for d, _ in runs)
    ]
    if unvaried:
        raise UsageError(
            f"cannot tell which output dims of {model.name} follow the input dim(s) "
            f"{', '.join(f'`{n}`' for n in unvaried)}: the model ran at one size of them only",
            problems=[
                f"{', '.join(f'{k}={v}' for k, v in c.dims.items())}: {msg}" for c, msg in failed
            ],
            hint="Try other sizes, or make those dims static.",
        )
    input_names = {d for i in model.inputs for d in (i.shape or ()) if isinstance(d, str)}
    result: dict[str, Produced] = {}
    problems = []
    for name in model.output_names:
        values = [v[name] for _, v in runs]
        if not all(isinstance(v, np.ndarray) for v in values):
            continue
        shapes = [tuple(int(s) for s in v.shape) for v in values]
        if len({len(s) for s in shapes}) > 1:
            problems.append(
                f"output `{name}` changes rank with the sizes: "
                + "; ".join(f"{list(s)} at {d}" for s, (d, _) in zip(shapes, runs, strict=True))
            )
            continue
        dims = _dims(shapes, [d for d, _ in runs], input_names, (old or {}).get(name))
        result[name] = Produced(dims, _elem_type(values[0]), shapes[0], dict(runs[0][0]))
    if problems:
        raise UsageError(f"cannot declare the outputs of {model.name}", problems=problems)
    return result


def _dims(
    shapes: Sequence[tuple[int, ...]],
    run_dims: Sequence[Mapping[str, int]],
    input_names: set[str],
    old: Sequence[Dim] | None,
) -> tuple[Dim, ...]:
    """The dims of one output from its shape in each run (the module docstring's rule)."""
    rank = len(shapes[0])
    # Names the old declaration gave dims of its own (seqlen), not copies of input dims:
    # at the same axis when the rank is unchanged, else in order.
    spare = [d for d in old or () if isinstance(d, str) and d not in input_names]
    same_rank = old is not None and len(old) == rank
    dims: list[Dim] = []
    for axis in range(rank):
        seen = [s[axis] for s in shapes]
        if len(set(seen)) == 1:
            dims.append(seen[0])
            continue
        follows = [
            var
            for var in run_dims[0]
            if all(d[var] == n for d, n in zip(run_dims, seen, strict=True))
        ]
        if follows:
            # An unnamed input dim (x[0]) is no name to declare: the dim stays unnamed.
            dims.append(follows[0] if follows[0] in input_names else None)
        elif same_rank and isinstance(old[axis], str) and old[axis] in spare:
            dims.append(old[axis])
            spare.remove(old[axis])
        elif spare and not same_rank:
            dims.append(spare.pop(0))
        else:
            dims.append(None)
    return tuple(dims)


def rank_problem(name: str, dims: Sequence[Dim], produced: Produced | None) -> str | None:
    """Why the new ``dims`` of output ``name`` cannot be its rank, or None when they can."""
    if produced is None:
        return f"output `{name}` is not a tensor when the model runs; its rank cannot change"
    if len(produced.dims) == len(dims):
        return None
    return (
        f"output `{name}` is {produced.where()} when the model runs (rank "
        f"{len(produced.shape)}); the new dims {dims_text(dims)} have rank {len(dims)}"
    )
