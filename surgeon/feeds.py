"""Input feeds: seeded random values that respect each input's dtype and shape, or the
user's own values from an ``.npz`` file.

Dynamic dims are resolved, in order, from: an explicit shape for the input
(``shapes={"images": (1, 3, 640, 640)}``, ``images:1x3x640x640`` on the command line), a
value for the dim's symbolic name (``dims={"H": 480}``, ``H=480``),
then the defaults: the first axis (batch) is 1, every other dynamic axis is 64. A symbolic
name gets one value across all inputs, so inputs that share ``N`` stay consistent.

Feeds are bounded: before any array is made or decompressed, their total size (from the
resolved shapes, and from the ``.npy`` headers inside an ``.npz``) is checked against
``FeedOptions.max_feed_bytes`` (4 GiB by default), so a dim of 10^20 or a zip bomb is a
clear refusal instead of a MemoryError.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

# Re-exported: dims parsing lives in surgeon.dims, the .npz reading in surgeon.npz;
# callers import them from here too.
from surgeon.annotations import checked_init
from surgeon.dims import MAX_DIM, parse_shape_args, too_large_dim  # noqa: F401
from surgeon.errors import SurgeonError, UsageError, did_you_mean
from surgeon.model import Model, TensorInfo
from surgeon.npz import (  # noqa: F401
    DEFAULT_MAX_FEED_BYTES,
    NpzEntry,
    format_bytes,
    load_npz,
    parse_size,
    read_npz_index,
)

DEFAULT_BATCH = 1
DEFAULT_DIM = 64


@checked_init  # field types checked on construction: a UsageError, never a TypeError
@dataclass(frozen=True)
class FeedOptions:
    """Where feed values come from.

    Attributes:
        seed: Seed of the random values (each input draws from its own stream, derived
            from the seed and its name, so adding an input does not change the others).
        shapes: Full shapes per input name.
        dims: Values per symbolic dim name.
        npz: An ``.npz`` file whose arrays (keyed by input name) are used as given.
        max_feed_bytes: The most bytes all feeds together may take; larger feeds are
            refused before anything is allocated or decompressed. None means no limit.
        other_inputs: Inputs of another model run on the same feeds (a reference model's
            own inputs, which this model lacks): ``npz`` and ``shapes`` may name them,
            and this model's feeds leave them out (see :func:`make_other_feeds`).
    """

    seed: int = 0
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)
    npz: str | None = None
    max_feed_bytes: int | None = DEFAULT_MAX_FEED_BYTES
    other_inputs: frozenset[str] = frozenset()


def resolve_shapes(
    model: Model,
    options: FeedOptions = FeedOptions(),
    *,
    given: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input of ``model`` (see the module docstring for the rules).

    Args:
        given: Shapes of inputs whose values already exist (an ``.npz``). They are taken
            as they are, and the symbolic dims they fix become the dims of the other
            inputs; a shape or size in ``options`` that disagrees with them is refused
            (the given value would be used, not the shape asked for).

    Raises:
        SurgeonError: ``options`` names an input or a dim that does not exist, gives a
            shape of the wrong rank, contradicts a static dim or a given value, or gives
            one symbolic dim two different values.
    """
    inputs = model.inputs
    names = [i.name for i in inputs]
    problems = []
    for name in options.shapes:
        if name not in names and name not in options.other_inputs:
            hint = did_you_mean(name, names)
            problems.append(
                f"a shape is given for `{name}`, which is not an input of {model.name}"
                + (f"; {hint}" if hint else "")
            )
    # An unnamed dynamic dim is named `input[axis]`, as check-dynamic's reports name it.
    symbols = [
        _dim_key(i.name, axis, d)
        for i in inputs
        if i.shape
        for axis, d in enumerate(i.shape)
        if not (isinstance(d, int) and d > 0)
    ]
    for dim in options.dims:
        # A misspelt dim would otherwise be ignored silently and the default used.
        if dim not in symbols:
            hint = did_you_mean(dim, symbols)
            known = ", ".join(f"`{s}`" for s in dict.fromkeys(symbols)) or "none"
            problems.append(
                f"a size is given for the dim `{dim}`, which no input of {model.name} has"
                + (f"; {hint}" if hint else f" (its dynamic dims: {known})")
            )
    chosen: dict[str, int] = dict(options.dims)
    # Where each symbol's value came from, to explain a contradiction.
    origin: dict[str, str] = {d: f"{d}={v}" for d, v in options.dims.items()}
    resolved: dict[str, tuple[int, ...]] = {}
    for info in inputs:
        if info.name in options.shapes:
            shape = tuple(options.shapes[info.name])
            if info.shape is not None:
                if len(shape) != len(info.shape):
                    problems.append(
                        f"the shape given for `{info.name}` has rank {len(shape)}, but the model declares {info.shape_text()}"
                    )
                    continue
                for axis, (want, have) in enumerate(zip(info.shape, shape, strict=True)):
                    if isinstance(want, int) and want != have and want > 0:
                        problems.append(
                            f"the shape given for `{info.name}` has dim {axis} = {have}, but the model fixes it at {want}"
                        )
                    elif isinstance(want, str):
                        if want in chosen and chosen[want] != have:
                            problems.append(
                                f"the shape given for `{info.name}` has dim {axis} ({want}) = {have}, but "
                                f"{origin[want]} already sets {want} = {chosen[want]}; inputs "
                                f"sharing the dim `{want}` need one value"
                            )
                        else:
                            chosen[want] = have
                            origin.setdefault(want, f"the shape of `{info.name}`")
            resolved[info.name] = shape
    # Symbol values of the given arrays (first one wins; make_feeds checked static dims).
    from_given: dict[str, int] = {}
    given_by: dict[str, str] = {}
    for info in inputs:
        if given and info.name in given and info.shape is not None:
            for axis, (d, n) in enumerate(zip(info.shape, given[info.name], strict=False)):
                key = _dim_key(info.name, axis, d)
                if not (isinstance(d, int) and d > 0) and key not in from_given:
                    from_given[key] = int(n)
                    given_by[key] = info.name
    # A chosen shape or size never loses silently to a given value: the value would be
    # used, not the shape asked for.
    for info in inputs:
        if given and info.name in given and info.name in options.shapes:
            asked, have = tuple(options.shapes[info.name]), tuple(given[info.name])
            if asked != have:
                problems.append(
                    f"the shape given for `{info.name}` ({'x'.join(map(str, asked))}) is not "
                    f"the shape of its value in the feeds file ({'x'.join(map(str, have))}); "
                    "give one or the other"
                )
    for key, value in chosen.items():
        # (A given input with a shape of its own is reported above, or agrees with its
        # value, and then a disagreeing size was reported with the chosen shapes.)
        if key in from_given and from_given[key] != value and given_by[key] not in options.shapes:
            problems.append(
                f"{origin[key]} sets {key} = {value}, but the value of `{given_by[key]}` in "
                f"the feeds file has {key} = {from_given[key]}; inputs sharing the dim "
                f"`{key}` need one value"
            )
    for info in inputs:
        if info.name in resolved:
            continue
        if given and info.name in given:
            resolved[info.name] = tuple(given[info.name])
            continue
        if info.shape is None:
            problems.append(
                f"input `{info.name}` has unknown rank; give its shape, e.g. {info.name}:1x3x224x224"
            )
            continue
        shape = []
        for axis, d in enumerate(info.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif _dim_key(info.name, axis, d) in chosen:
                shape.append(chosen[_dim_key(info.name, axis, d)])
            elif _dim_key(info.name, axis, d) in from_given:
                shape.append(from_given[_dim_key(info.name, axis, d)])
            else:
                value = DEFAULT_BATCH if axis == 0 else DEFAULT_DIM
                if isinstance(d, str):
                    chosen[d] = value
                shape.append(value)
        resolved[info.name] = tuple(shape)
    if problems:
        raise UsageError(f"cannot build inputs for {model.name}", problems=problems)
    return resolved


def _dim_key(input_name: str, axis: int, dim) -> str:
    """A dynamic dim's name for sizes: its symbol, or ``input[axis]`` when unnamed."""
    return dim if isinstance(dim, str) else f"{input_name}[{axis}]"


# Element types numpy lacks, held by ml_dtypes arrays (onnx depends on ml_dtypes).
LOW_PRECISION_FLOATS = {
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn",
}
LOW_PRECISION_INTS = {"int4", "uint4", "int2", "uint2"}


def numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype for a dtype name, ml_dtypes' types included; None if unknown."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    if name in LOW_PRECISION_FLOATS | LOW_PRECISION_INTS:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return None


def random_array(info: TensorInfo, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded random values for one input: normal floats, small non-negative integers
    (valid as indices in most models), full-range uint8 (images), random booleans.

    Raises:
        SurgeonError: The type has no random values, or this machine cannot allocate
            them (within the feed size limit, beyond its memory).
    """
    try:
        return _random_values(info, shape, seed)
    except MemoryError:
        raise SurgeonError(
            f"not enough memory for the input `{info.name}` (shape {list(shape)}, {info.dtype})",
            hint="Choose smaller dims for the inputs, or a lower feed size limit.",
        ) from None


def _random_values(info: TensorInfo, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(info.name.encode())])
    dtype = info.dtype or "float32"
    if dtype == "str":
        return np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
    if dtype == "bool":
        # asarray: for a scalar input (shape ()) the comparison gives a numpy scalar,
        # which onnxruntime refuses ("Unable to handle object of type numpy.bool").
        return np.asarray(rng.random(shape) < 0.5)
    np_dtype = numpy_dtype(dtype)
    if np_dtype is None:
        raise SurgeonError(
            f"cannot make random values for input `{info.name}` of type {dtype}; give its values in an .npz of input values"
        )
    if np_dtype.name in LOW_PRECISION_FLOATS:
        # ml_dtypes floats (bfloat16, float8, float4): normal values, rounded to the type.
        return rng.standard_normal(shape).astype(np.float32).astype(np_dtype)
    if np_dtype.name in LOW_PRECISION_INTS:
        return rng.integers(0, 2, size=shape).astype(np_dtype)
    if np_dtype.kind == "f":
        return _standard_normal(rng, shape, np_dtype)
    if np_dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if np_dtype.kind in "iu":
        return rng.integers(0, 8, size=shape).astype(np_dtype)
    raise SurgeonError(
        f"cannot make random values for input `{info.name}` of type {dtype}; give its values in an .npz of input values"
    )


# Normal values are drawn this many at a time (512 KiB of float64).
_NORMAL_CHUNK = 1 << 16


def _standard_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype):
    """``rng.standard_normal(shape).astype(dtype)``, the same numbers, without holding a
    float64 copy of the whole input.

    The values are numpy's float64 normal stream rounded to ``dtype`` (a float32 draw
    would be another algorithm, other numbers). The stream does not depend on how it is
    cut: each value takes the next random bits, nothing is carried between calls, so
    drawing chunk by chunk into a reused float64 buffer gives the same values and leaves
    the generator in the same state. A 1x3x640x640 float32 input: 4.7 MiB instead of
    14 MiB at the peak, and no 9.4 MiB buffer to fault in and free.
    """
    if dtype == np.float64:
        return rng.standard_normal(shape)
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)  # a view: `out` is new and contiguous
    buffer = np.empty(min(_NORMAL_CHUNK, flat.size), np.float64)
    for start in range(0, flat.size, _NORMAL_CHUNK):
        part = buffer[: min(_NORMAL_CHUNK, flat.size - start)]
        rng.standard_normal(out=part)
        flat[start : start + len(part)] = part  # rounds as astype does
    return out


def _itemsize(dtype: str | None) -> int:
    """Bytes per element of a random input of this dtype name (strings: one pointer)."""
    if dtype == "str":
        return 8
    found = numpy_dtype(dtype or "float32")
    return found.itemsize if found is not None else 1


def check_feed_size(
    model: Model,
    shapes: Mapping[str, tuple[int, ...]],
    given: Mapping[str, NpzEntry],
    limit: int | None,
    *,
    chosen_by: str = "the chosen shapes",
) -> None:
    """Refuse feeds that together take more than ``limit`` bytes, naming the inputs and
    the dims that make them so large (and where each dim came from).

    Args:
        chosen_by: What chose the dynamic dims (the sizes tried, in the dynamic
            check), named in the message.

    Raises:
        UsageError: The feeds are over the limit.
    """
    if limit is None:
        return
    sizes: list[tuple[int, str]] = []
    any_chosen = False
    for info in model.inputs:
        if info.name in given:
            entry = given[info.name]
            sizes.append(
                (
                    entry.nbytes,
                    f"`{info.name}` {list(entry.shape)} {entry.dtype.name} from the .npz = "
                    f"{format_bytes(entry.nbytes)}",
                )
            )
            continue
        shape = shapes.get(info.name)
        if shape is None:
            continue
        nbytes = math.prod(shape) * _itemsize(info.dtype)
        declared = info.shape or ()
        chosen = []  # the dims that were chosen for this run, not declared by the model
        fixed = []
        for axis, d in enumerate(shape):
            want = declared[axis] if axis < len(declared) else None
            if not (isinstance(want, int) and want > 0):
                label = f" ({want})" if isinstance(want, str) else ""
                chosen.append(f"dim {axis}{label} = {d}")
            elif d > 1:
                fixed.append(f"dim {axis} = {d}")
        any_chosen = any_chosen or bool(chosen)
        if chosen:
            cause = f"chosen for this run ({chosen_by} or the default): " + ", ".join(chosen)
            if fixed:
                cause += "; fixed by the model: " + ", ".join(fixed)
        else:
            cause = "every dim is fixed by the model"
        sizes.append(
            (
                nbytes,
                f"`{info.name}` {list(shape)} {info.dtype or 'float32'} = {format_bytes(nbytes)}; {cause}",
            )
        )
    total = sum(n for n, _ in sizes)
    if total <= limit:
        return
    sizes.sort(key=lambda item: -item[0])
    raise UsageError(
        f"the inputs of {model.name} would take {format_bytes(total)}, more than the limit "
        f"of {format_bytes(limit)}",
        problems=[text for _, text in sizes[:5]]
        + ([f"... and {len(sizes) - 5} more inputs"] if len(sizes) > 5 else []),
        hint=(
            "Choose smaller dims (e.g. batch=1), or raise the feed size limit (e.g. to 16G)."
            if any_chosen
            else "The model itself declares these sizes; if they are meant, raise the feed "
            "size limit (e.g. to 16G)."
        ),
    )


def make_feeds(model: Model, options: FeedOptions = FeedOptions()) -> dict[str, np.ndarray]:
    """Values for every input of ``model``: from ``options.npz`` where given, else random.

    The shapes of the ``.npz`` arrays fix the symbolic dims they use, so random inputs
    that share a dim with them get the same value. Everything is checked before any
    value is made or decompressed: the ``.npz`` keys and headers against the model's
    inputs, and the total size against ``options.max_feed_bytes``.

    Raises:
        SurgeonError: The seed is negative, the ``.npz`` has keys that are not inputs, or
            values whose dtype or static dims do not match the model.
        UsageError: The feeds would take more than ``options.max_feed_bytes``.
    """
    if options.seed < 0:
        # numpy's seed sequence takes non-negative integers only.
        raise UsageError(f"the seed {options.seed} is negative; use a seed >= 0")
    index = read_npz_index(options.npz) if options.npz else {}
    inputs = model.inputs
    names = [i.name for i in inputs]
    problems = []
    for key in index:
        if key not in names and key not in options.other_inputs:
            hint = did_you_mean(key, [*names, *sorted(options.other_inputs)])
            problems.append(
                f"{options.npz} has `{key}`, which is not an input of {model.name}"
                + (" (nor of the reference)" if options.other_inputs else "")
                + (f"; {hint}" if hint else "")
            )
    # Another model's inputs are neither checked against this model nor read for it.
    index = {k: e for k, e in index.items() if k in names}
    void_as, problems2 = _check_npz_entries(model, index, options.npz)
    problems += problems2
    if problems:
        raise SurgeonError(f"the feeds in {options.npz} do not fit {model.name}", problems=problems)
    # The user's arrays fix the symbolic dims of the random inputs too (unless a chosen
    # shape says otherwise), which are still checked when every input is in the file.
    shapes = resolve_shapes(model, options, given={k: e.shape for k, e in index.items()})
    check_feed_size(model, shapes, index, options.max_feed_bytes)
    # No limit here: check_feed_size has counted these arrays with the random ones.
    user = load_npz(options.npz, index, max_bytes=None) if options.npz else {}
    for name, dtype in void_as.items():
        user[name] = user[name].view(dtype)
    feeds = {}
    for info in inputs:
        feeds[info.name] = (
            user[info.name]
            if info.name in user
            else random_array(info, shapes[info.name], options.seed)
        )
    return feeds


def make_other_feeds(
    model: Model,
    names: Iterable[str],
    options: FeedOptions,
    known: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Values for the inputs ``names`` of ``model``, a reference model that has inputs the
    compared model lacks (e.g. a sample rate the other model holds as a constant).

    Each comes from ``options.npz`` when the file holds its name, else it is random by
    the same seed rule as any input (:func:`random_array`). Symbolic dims follow the
    values ``known`` already fed to ``model`` (and ``options.shapes``).

    Returns:
        The values, and for each name where it came from (``the feeds file`` or
        ``random``).

    Raises:
        SurgeonError: The ``.npz`` value does not fit the input's dtype or shape.
    """
    names = list(names)
    if not names:
        return {}, {}
    index = read_npz_index(options.npz) if options.npz else {}
    index = {k: e for k, e in index.items() if k in names}
    void_as, problems = _check_npz_entries(model, index, options.npz)
    if problems:
        raise SurgeonError(
            f"the reference inputs in {options.npz} do not fit {model.name}", problems=problems
        )
    symbols = {d for i in model.inputs if i.shape for d in i.shape if isinstance(d, str)}
    own = FeedOptions(
        seed=options.seed,
        shapes={k: v for k, v in options.shapes.items() if k in names},
        dims={k: v for k, v in options.dims.items() if k in symbols},
    )
    given = {k: tuple(np.shape(v)) for k, v in known.items() if isinstance(v, np.ndarray)}
    given.update({k: e.shape for k, e in index.items()})
    shapes = resolve_shapes(model, own, given=given)
    random_names = [n for n in names if n not in index]
    check_feed_size(model, {n: shapes[n] for n in random_names}, index, options.max_feed_bytes)
    values = load_npz(options.npz, index, max_bytes=None) if index else {}
    for name, dtype in void_as.items():
        values[name] = values[name].view(dtype)
    how = {n: "the feeds file" for n in values}
    infos = {i.name: i for i in model.inputs}
    for name in random_names:
        values[name] = random_array(infos[name], shapes[name], options.seed)
        how[name] = "random"
    return {n: values[n] for n in names}, {n: how[n] for n in names}


def _check_npz_entries(
    model: Model, index: Mapping[str, NpzEntry], label
) -> tuple[dict[str, np.dtype], list[str]]:
    """Check ``.npz`` headers against the inputs of ``model`` they are for: the dtypes
    to read raw void members as, and the problems (dtype, rank, static dims)."""
    problems = []
    void_as: dict[str, np.dtype] = {}
    for info in model.inputs:
        if info.name not in index:
            continue
        entry = index[info.name]
        dtype = entry.dtype
        wanted = numpy_dtype(info.dtype) if info.dtype and info.dtype != "str" else None
        if wanted is not None and dtype.kind == "V" and dtype.itemsize == wanted.itemsize:
            # np.savez stores bfloat16/float8/int4 arrays as raw void: read them back.
            void_as[info.name] = dtype = wanted
        if info.dtype and info.dtype != "str" and dtype.name != info.dtype:
            problems.append(
                f"`{info.name}` in {label} is {dtype.name}; the model wants {info.dtype}"
            )
        if info.shape is not None:
            if len(entry.shape) != len(info.shape):
                problems.append(
                    f"`{info.name}` in {label} has shape {list(entry.shape)}; the model wants {info.shape_text()}"
                )
            else:
                for axis, want in enumerate(info.shape):
                    if isinstance(want, int) and want > 0 and entry.shape[axis] != want:
                        problems.append(
                            f"`{info.name}` in {label} has shape {list(entry.shape)}; the model wants {info.shape_text()}"
                        )
                        break
    return void_as, problems


def describe_feeds(feeds: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Shapes and dtypes of feeds, for reports."""
    out = {}
    for k, v in feeds.items():
        if v is None or isinstance(v, (list, tuple)):
            # Sequence or optional inputs (fed as lists / None): no single shape.
            out[k] = {"shape": None, "dtype": "sequence" if v is not None else "empty optional"}
        else:
            v = np.asarray(v)
            out[k] = {"shape": list(v.shape), "dtype": v.dtype.name}
    return out
