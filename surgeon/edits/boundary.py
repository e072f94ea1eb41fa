"""Types at the boundary of a cut: dtype and shape of each new input and output.

Sources, in order: the model's declarations, ONNX shape inference (of the skeleton,
see :mod:`surgeon.graph_facts`), onnxruntime's typing of the session, and only then runs
of the original: two runs at different input sizes tell which dims are static and which
follow an input dim; a dim seen in a single run is left unknown (only the rank is
declared).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx

from surgeon.feeds import FeedOptions, make_feeds
from surgeon.graph_facts import (
    clean_info,
    inferred_infos,
    inferred_value_infos,
    known_info,
)
from surgeon.model import Model, TensorInfo
from surgeon.runner import RunOptions, runtime_infos


def _second_sizes(model: Model, first: Mapping[str, tuple[int, ...]]) -> dict[str, tuple]:
    """Input shapes for a second run: every symbolic dim moved to a distinct new value,
    so that a learned dim that follows one symbol can be recognised by its values."""
    symbols: dict[str, int] = {}
    shapes = {}
    for info in model.inputs:
        shape = list(first[info.name])
        for axis, d in enumerate(info.shape or ()):
            if isinstance(d, int) and d > 0:
                continue
            key = d if isinstance(d, str) else f"{info.name}[{axis}]"
            if key not in symbols:
                k = len(symbols)
                base = shape[axis]
                # Keep multiples of 32 for image-like sizes (strided convs), +k+1 for
                # small ones (batch), so every symbol gets its own new value.
                symbols[key] = base + 32 * (k + 1) if base >= 32 else base + k + 1
            shape[axis] = symbols[key]
        shapes[info.name] = tuple(shape)
    return shapes


def learn_from_runs(
    model: Model,
    names: Sequence[str],
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, TensorInfo], list[str]]:
    """Dtypes and shapes of ``names`` from running ``model``.

    The model runs once on ``feed_options``' inputs and, when its inputs have dynamic
    dims, once more with every dynamic dim changed: a dim that changes with an input
    symbol gets that symbol, one that changes otherwise is left unnamed, and one that
    stays put is static. When there is no second run (the inputs have static shapes,
    the model fails at other sizes, or the feeds come from a file or from ``feeds``) only
    the rank is learned: every dim is left unknown, and a note says so. ``feeds``, when
    given, are the first run's inputs (random values could be invalid axes, indices or
    sizes for the model).

    Returns:
        The learned infos and notes for the report.
    """
    from surgeon.errors import SurgeonError
    from surgeon.runner import run

    notes: list[str] = []
    caller_feeds = feeds is not None
    if feeds is None:
        feeds = make_feeds(model, feed_options)
    # The shapes the feeds really have (an .npz may give an input of unknown rank).
    first_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in feeds.items()}
    first = run(model, feeds, outputs=names, options=options)
    second = None
    dynamic = [i for i in model.inputs if i.is_dynamic]
    if dynamic and not feed_options.npz and not caller_feeds:
        shapes2 = _second_sizes(model, first_shapes)
        try:
            # replace: the caller's size limit holds for this run too (no npz here).
            feeds2 = make_feeds(model, replace(feed_options, shapes=shapes2, dims={}))
            second = run(model, feeds2, outputs=names, options=options)
        except SurgeonError:
            second = None
    # Value of each input symbol in each run, to name the dims that follow one.
    by_values: dict[tuple[int, int], list[str]] = {}
    if second is not None:
        for info in model.inputs:
            for axis, d in enumerate(info.shape or ()):
                if isinstance(d, str):
                    key = (first_shapes[info.name][axis], shapes2[info.name][axis])
                    if d not in by_values.setdefault(key, []):
                        by_values[key].append(d)
    learned = {}
    unconfirmed: list[str] = []  # names with dims a single run could not confirm
    for n in names:
        if first[n] is None or isinstance(first[n], (list, tuple, dict)):
            # A sequence, optional or map: no dtype or shape; its ONNX type comes from
            # non_tensor_types().
            learned[n] = TensorInfo(n, None, None)
            continue
        a = np.asarray(first[n])
        shape: tuple | None = tuple(int(d) for d in a.shape)
        if second is None:
            # One run shows the dims for these input values and sizes only: a shape that
            # depends on them (a size read from an input, NonZero, a dynamic dim) would
            # be frozen. Declared concrete, such dims can break the subgraph: an If branch
            # that never runs is still type-checked when onnxruntime loads the model,
            # and a Squeeze there of an axis that is not 1 at these sizes refuses to load.
            # Unknown dims cost nothing at run time. Nothing static is lost either: runs
            # are asked only when the declarations, ONNX shape inference and onnxruntime
            # do not even know the rank (boundary_infos).
            shape = (None,) * len(shape)
            if shape:
                unconfirmed.append(n)
        else:
            b = np.asarray(second[n])
            if b.ndim != a.ndim:
                shape = None
                notes.append(f"the rank of `{n}` changes with the input sizes; left unknown")
            else:
                dims = []
                for x, y in zip(a.shape, b.shape, strict=True):
                    if x == y:
                        dims.append(int(x))
                    else:
                        symbols = by_values.get((x, y), [])
                        dims.append(symbols[0] if len(symbols) == 1 else None)
                shape = tuple(dims)
        dtype = "str" if a.dtype.kind in "OUS" else a.dtype.name
        learned[n] = TensorInfo(n, dtype, shape)
    if unconfirmed:
        if not dynamic:
            why = "the model's input shapes are static, but a shape can follow input values"
        elif feed_options.npz or caller_feeds:
            why = "the inputs were given, so there is no second run at other sizes"
        else:
            why = "the model fails at other input sizes, so there is no second run"
        notes.append(
            "shapes of " + ", ".join(f"`{n}`" for n in unconfirmed) + " were seen in one run "
            f"only, at input shapes {_shapes_text(first_shapes)} ({why}); their rank is "
            "declared, their dims are left unknown"
        )
    return learned, notes


def _shapes_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in shapes.items())


def boundary_infos(
    model: Model,
    names: Sequence[str],
    feed_options: FeedOptions = FeedOptions(),
    options: RunOptions | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    """Dtype and shape of each of ``names``, and where each came from.

    Sources, in order: ``declared`` (graph inputs, outputs, value_info, initializers),
    ``inferred`` (ONNX shape inference), ``onnxruntime`` (the session's typing) and
    ``run`` (running the original).
    """
    options = options or RunOptions()
    declared = model.value_infos()
    infos: dict[str, TensorInfo] = {}
    source: dict[str, str] = {}
    graph_io = set(model.input_names) | {t.name for t in model.proto.graph.initializer}
    for n in names:
        if n in graph_io and known_info(declared.get(n)):
            infos[n], source[n] = declared[n], "declared"
    rest = [n for n in names if n not in infos]
    if rest:
        inferred = inferred_infos(model)
        for n in rest:
            for where, table in (("inferred", inferred), ("declared", declared)):
                if known_info(table.get(n)):
                    infos[n], source[n] = clean_info(table[n]), where
                    break
    rest = [n for n in names if n not in infos]
    if rest:
        for n, info in runtime_infos(model, rest, options).items():
            if known_info(info):
                infos[n], source[n] = info, "onnxruntime"
    rest = [n for n in names if n not in infos]
    notes: list[str] = []
    if rest:
        learned, notes = learn_from_runs(model, rest, feed_options, options, feeds=feeds)
        for n in rest:
            infos[n], source[n] = learned[n], "run"
    return infos, source, notes


def value_info_of(info: TensorInfo) -> onnx.ValueInfoProto:
    elem = onnx.TensorProto.STRING if info.dtype == "str" else onnx.TensorProto.UNDEFINED
    if info.dtype and info.dtype != "str":
        try:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype))
        except TypeError:
            elem = getattr(onnx.TensorProto, info.dtype.upper(), onnx.TensorProto.UNDEFINED)
    shape = list(info.shape) if info.shape is not None else None
    return onnx.helper.make_tensor_value_info(info.name, elem, shape)


def non_tensor_types(model: Model, names: Sequence[str]) -> dict[str, onnx.TypeProto]:
    """ONNX types of those ``names`` that are not tensors (sequences, optionals, maps),
    from the model's declarations or ONNX shape inference; a TensorInfo cannot hold them,
    so build_subgraph copies these to the boundary as they are."""
    wanted = set(names)
    g = model.proto.graph
    candidates = list(g.input) + list(g.output) + list(g.value_info)
    candidates += inferred_value_infos(model)
    found: dict[str, onnx.TypeProto] = {}
    for vi in candidates:
        kind = vi.type.WhichOneof("value")
        if vi.name in wanted and vi.name not in found and kind not in (None, "tensor_type"):
            found[vi.name] = vi.type
    return found
