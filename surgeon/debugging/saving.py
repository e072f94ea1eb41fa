"""``debug --save`` without holding every activation at once: the tapped tensors are
fetched in chunks whose total size stays under a budget, one onnxruntime run per chunk,
and each chunk is written into the ``.npz`` before the next run.

Why: fetching every tapped tensor in one run kept them all alive until the file was
written (2.6x to 3.2x the memory of a plain run). Peak memory is now about a plain run
plus one chunk (at least the largest activation) plus the file buffer; the cost is one
run per chunk (see :func:`plan_chunks`; the report says how many).

Values equal the one-run fetch for float32 and integer models. For float16 models,
onnxruntime's CPU rounds a float16 tensor only where it is fetched (it computes float16
chains in float32): a tensor downstream of one fetched in another chunk may differ in
its last bits from the one-run values, as it already does between a tapped and a plain
run (the tap check's float16 tolerance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from surgeon.debugging.results import DebugOptions, DebugReport
from surgeon.model import Model
from surgeon.runner import RunOptions, run

# Fetched bytes per run. Large enough that the CNN and YOLOv8n-size benchmark models
# (~170-330 MiB of activations) need a handful of runs, small against their plain run.
SAVE_CHUNK_BYTES = 64 * 2**20


def plan_chunks(report: DebugReport, budget: int | None = None) -> list[list[str]]:
    """The tapped tensors in graph order, grouped so each group's total size (from the
    statistics of the debug run) stays under ``budget``; a tensor larger than the budget
    is a group of its own, one whose size is unknown too (``budget`` defaults to
    :data:`SAVE_CHUNK_BYTES`)."""
    budget = SAVE_CHUNK_BYTES if budget is None else budget
    chunks: list[list[str]] = []
    current: list[str] = []
    total = 0
    for s in report.stats:
        size = _nbytes(s.shape, s.dtype)
        if size is None or (current and total + size > budget):
            if current:
                chunks.append(current)
            current, total = [], 0
        current.append(s.name)
        total += size or 0
        if size is None:
            chunks.append(current)
            current, total = [], 0
    if current:
        chunks.append(current)
    return chunks


def _nbytes(shape, dtype: str | None) -> int | None:
    if shape is None or dtype is None:
        return None
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # bfloat16, float8 ... (ml_dtypes names numpy may not know)
        return None
    return int(np.prod(shape, dtype=np.int64)) * itemsize


class _ChunkedValues(Mapping):
    """The feeds and the tapped values, produced chunk by chunk as ``items()`` is walked
    (the .npz writer walks it once, in order); no more than one chunk is alive."""

    def __init__(self, model: Model, feeds, chunks, options: RunOptions) -> None:
        self.model, self.feeds, self.chunks, self.options = model, feeds, chunks, options
        self.names = [*feeds, *(t for c in chunks for t in c if t not in feeds)]

    def __getitem__(self, key):
        raise KeyError(key)  # values are only produced in order (items())

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:  # type: ignore[override]
        yield from ((k, v) for k, v in self.feeds.items() if isinstance(v, np.ndarray))
        for chunk in self.chunks:
            wanted = [t for t in chunk if t not in self.feeds]
            if not wanted:
                continue
            values = run(self.model, self.feeds, outputs=wanted, options=self.options)
            for t in wanted:
                # Tensors only: a sequence or an empty optional has no .npz form.
                value = values.pop(t)
                if isinstance(value, np.ndarray):
                    yield t, value
            del values


def save_values_streamed(
    model: Model,
    report: DebugReport,
    path: str | Path,
    options: DebugOptions,
    chunks: Sequence[Sequence[str]],
) -> Path:
    """Write the feeds and the tapped tensors of ``report`` to ``path`` (an ``.npz``,
    keys = tensor names) atomically, running ``model`` once per chunk of
    :func:`plan_chunks`.

    Raises:
        RuntimeFailure: onnxruntime cannot run the model.
        OutputPathError: ``path`` cannot be written.
    """
    from surgeon.fileio import save_npz

    run_options = RunOptions(
        optimization=options.optimization,
        custom_op_libraries=tuple(options.custom_op_libraries),
    )
    # As the statistics mode runs: each tensor freed once its consumers ran.
    run_options = dataclasses.replace(run_options, execution_order="priority", memory_arena=False)
    values = _ChunkedValues(model, dict(report.feed_values), [list(c) for c in chunks], run_options)
    return save_npz(path, values)


__all__ = ["SAVE_CHUNK_BYTES", "plan_chunks", "save_values_streamed"]
