"""Verification helpers of edits that must hold at every size and may break the runtime.

Folding and opset conversion must not change values at any input size the model takes,
so when an input has dynamic dims the edit is verified at the caller's sizes and again at
another size; the second run's rows join the report, their names tagged with the size.
And an edited model that onnxruntime cannot run is a failed edit (exit 1), not bad input:
:func:`runtime_problem` tells the two apart by running the original where the edited
model failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from surgeon.compare import DiffReport, TensorDiff, Tolerance
from surgeon.edits.contract import Correspondence
from surgeon.feeds import FeedOptions, resolve_shapes
from surgeon.model import Model
from surgeon.runner import RunOptions


def other_shapes(
    model: Model, feed_options: FeedOptions, fixed: Mapping[str, np.ndarray] | None = None
) -> dict[str, tuple[int, ...]] | None:
    """Shapes for every input, each dynamic dim changed from the first run's size, or
    None when no input has a dynamic dim left to vary (static, or given in the ``.npz``).

    The first dim of a rank > 1 input (a batch, by convention) goes from 1 to 2; every
    other dynamic dim is halved (64 -> 32), which keeps strides of 2**k that detectors
    need, and goes up when halving would reach 0.
    """
    given = set(fixed or {})
    if feed_options.npz:
        with np.load(feed_options.npz) as data:
            given = set(data.files)
    first = resolve_shapes(model, with_fixed(feed_options, fixed))
    changed = False
    shapes: dict[str, tuple[int, ...]] = {}
    for info in model.inputs:
        shape = list(first[info.name])
        declared = info.shape or ()
        if info.name not in given:
            for axis, dim in enumerate(declared):
                if isinstance(dim, int) and dim > 0:
                    continue
                old = shape[axis]
                if axis == 0 and len(declared) > 1:
                    shape[axis] = old + 1 if old == 1 else max(1, old // 2)
                else:
                    shape[axis] = old // 2 if old >= 2 else old + 1
                changed = True
        if info.name in (fixed or {}):
            shapes[info.name] = tuple(np.shape(fixed[info.name]))
        elif info.name not in given:  # values from the .npz keep their own shape
            shapes[info.name] = tuple(shape)
    return shapes if changed else None


def verify_other_size(
    edited: Model,
    original: Model,
    report: DiffReport,
    feed_options: FeedOptions,
    options: RunOptions | None,
    tolerance: Tolerance,
    fixed: Mapping[str, np.ndarray] | None = None,
) -> str | None:
    """Verify ``edited`` against ``original`` at another size and add its rows to
    ``report`` (names tagged with the output's shape there, ``@ 2x3x32x32``).

    Args:
        fixed: Input values that hold at every size (inputs bound to constants).

    Returns:
        The sizes tried as text, or None when the model has no dynamic dim to vary or the
        original itself does not run at the other size (a note says so: models often
        take only some sizes, e.g. multiples of a stride).
    """
    from surgeon.errors import RuntimeFailure
    from surgeon.feeds import make_feeds
    from surgeon.runner import run
    from surgeon.verification import verify  # verification imports the runner

    shapes = other_shapes(original, feed_options, fixed or {})
    if shapes is None:
        return None
    feeds = make_feeds(original, replace(feed_options, shapes=shapes, dims={}))
    feeds.update(fixed or {})
    text = ", ".join(f"{k}: {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
    try:
        run(original, feeds, options=options)
    except RuntimeFailure as e:
        report.notes.append(
            f"not verified at a second size: the original does not run at {text} ({e.message})"
        )
        return None
    problem = runtime_problem(edited, original, feeds, options)
    if problem is not None:
        report.tensors.append(
            TensorDiff(
                name=f"(the model at {text})", reference="", status="missing", message=problem
            )
        )
        report.notes.append(problem)
        return text
    second = verify(
        edited, original, feeds=feeds, tolerance=tolerance, options=options, title=report.title
    )
    join_second_run(report, second, _size_tag, f"verified at a second size too ({text})")
    return text


def join_second_run(report: DiffReport, second: DiffReport, tag, note: str) -> None:
    """Add ``second``'s rows to ``report``, each name tagged `` @ tag(row)``, with its
    notes and ``note``."""
    for row in second.tensors:
        suffix = f" @ {tag(row)}"
        report.tensors.append(
            replace(row, name=row.name + suffix, reference=row.reference + suffix)
        )
    report.notes.extend(n for n in second.notes if n not in report.notes)
    report.notes.append(note)


def runtime_correspondence(
    title: str,
    edited: Model,
    original: Model,
    feeds: Mapping[str, np.ndarray],
    options: RunOptions | None,
    tolerance: Tolerance | None,
) -> Correspondence:
    """Same outputs on ``feeds``, once the edited model is known to run on them; a model
    that does not run is the check's failure (see :func:`runtime_problem`)."""
    problem = runtime_problem(edited, original, feeds, options)
    if problem is not None:
        return Correspondence(title, unavailable=problem)
    return Correspondence(title, feeds=feeds, tolerance=tolerance)


def _size_tag(row) -> str:
    if row.reference_shape is not None:
        return "x".join(map(str, row.reference_shape)) or "scalar"
    return "second size"


def runtime_problem(
    edited: Model, original: Model, feeds: Mapping[str, np.ndarray], options: RunOptions | None
) -> str | None:
    """None when ``edited`` runs on ``feeds``; else why not, as the note of a failed check.

    Raises:
        RuntimeFailure: The original does not run on ``feeds`` either (bad input, not a
            failed edit).
    """
    from surgeon.errors import RuntimeFailure
    from surgeon.runner import run

    try:
        run(edited, {k: v for k, v in feeds.items() if k in edited.input_names}, options=options)
    except RuntimeFailure as e:
        run(original, feeds, options=options)  # its own failure is the user's input
        return f"the edited model does not run in onnxruntime: {e.message}"
    return None


def with_fixed(feed_options: FeedOptions, fixed: Mapping[str, np.ndarray] | None) -> FeedOptions:
    """``feed_options`` with the shapes of the fixed values (an input whose rank the model
    does not declare can then be bound too)."""
    if not fixed:
        return feed_options
    shapes = dict(feed_options.shapes)
    shapes.update({k: tuple(np.shape(v)) for k, v in fixed.items()})
    return replace(feed_options, shapes=shapes)
