"""Input feeds: seeded random values that respect each input's dtype and shape, or the
user's own values from an ``.npz`` file.

Dynamic dims are resolved, in order, from: an explicit shape for the input
(``--shape images:1x3x640x640``), a value for the dim's symbolic name (``--shape H=480``),
then the defaults: the first axis (batch) is 1, every other dynamic axis is 64. A symbolic
name gets one value across all inputs, so inputs that share ``N`` stay consistent.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError, UsageError, did_you_mean
from surgeon.model import Model, TensorInfo

DEFAULT_BATCH = 1
DEFAULT_DIM = 64


@dataclass(frozen=True)
class FeedOptions:
    """Where feed values come from.

    Attributes:
        seed: Seed of the random values (each input draws from its own stream, derived
            from the seed and its name, so adding an input does not change the others).
        shapes: Full shapes per input name.
        dims: Values per symbolic dim name.
        npz: An ``.npz`` file whose arrays (keyed by input name) are used as given.
    """

    seed: int = 0
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)
    npz: str | None = None


def parse_shape_args(args: Iterable[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Parse ``name:1x3x64x64`` (an input's shape) and ``DIM=64`` (a symbolic dim).

    Raises:
        UsageError: An argument matches neither form.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    dims: dict[str, int] = {}
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
                    f"cannot read the shape in `--shape {arg}`: expected NAME:1x3x224x224 with integer dims"
                ) from None
            if not name or any(d < 0 for d in shape):
                raise UsageError(f"cannot read `--shape {arg}`: expected NAME:1x3x224x224")
            shapes[name] = shape
        elif "=" in arg:
            name, _, value = arg.partition("=")
            name = name.strip()
            try:
                dims[name] = int(value)
            except ValueError:
                raise UsageError(
                    f"cannot read `--shape {arg}`: expected DIM=integer, e.g. H=480"
                ) from None
            if not name:
                raise UsageError(
                    f"cannot read `--shape {arg}`: the dim has no name; expected DIM=integer, e.g. H=480"
                )
            if dims[name] < 0:
                raise UsageError(f"`--shape {arg}`: a dim cannot be negative")
        else:
            raise UsageError(
                f"cannot read `--shape {arg}`: use INPUT:1x3x224x224 for an input's shape or DIM=224 for a named dim"
            )
    return shapes, dims


def resolve_shapes(
    model: Model,
    options: FeedOptions = FeedOptions(),
    *,
    given: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input of ``model`` (see the module docstring for the rules).

    Args:
        given: Shapes of inputs whose values already exist (an ``.npz``). They are taken
            as they are, and the symbolic dims they fix become the defaults of the other
            inputs, below ``options`` (which win without an error, as an explicit
            choice).

    Raises:
        SurgeonError: ``options`` names an input or a dim that does not exist, gives a
            shape of the wrong rank, contradicts a static dim, or gives one symbolic dim
            two different values.
    """
    inputs = model.inputs
    names = [i.name for i in inputs]
    problems = []
    for name in options.shapes:
        if name not in names:
            hint = did_you_mean(name, names)
            problems.append(
                f"--shape names `{name}`, which is not an input of {model.name}"
                + (f"; {hint}" if hint else "")
            )
    symbols = [d for i in inputs if i.shape for d in i.shape if isinstance(d, str)]
    for dim in options.dims:
        # A misspelt dim would otherwise be ignored silently and the default used.
        if dim not in symbols:
            hint = did_you_mean(dim, symbols)
            known = ", ".join(f"`{s}`" for s in dict.fromkeys(symbols)) or "none"
            problems.append(
                f"--shape {dim}=... names a dim that no input of {model.name} has"
                + (f"; {hint}" if hint else f" (its named dims: {known})")
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
                        f"--shape gives `{info.name}` rank {len(shape)}, but the model declares {info.shape_text()}"
                    )
                    continue
                for axis, (want, have) in enumerate(zip(info.shape, shape, strict=True)):
                    if isinstance(want, int) and want != have and want > 0:
                        problems.append(
                            f"--shape gives `{info.name}` dim {axis} = {have}, but the model fixes it at {want}"
                        )
                    elif isinstance(want, str):
                        if want in chosen and chosen[want] != have:
                            problems.append(
                                f"--shape gives `{info.name}` dim {axis} ({want}) = {have}, but "
                                f"{origin[want]} already sets {want} = {chosen[want]}; inputs "
                                f"sharing the dim `{want}` need one value"
                            )
                        else:
                            chosen[want] = have
                            origin.setdefault(want, f"the shape of `{info.name}`")
            resolved[info.name] = shape
    # Symbol values of the given arrays (first one wins; make_feeds checked static dims).
    from_given: dict[str, int] = {}
    for info in inputs:
        if given and info.name in given and info.shape is not None:
            for d, n in zip(info.shape, given[info.name], strict=False):
                if isinstance(d, str):
                    from_given.setdefault(d, int(n))
    for info in inputs:
        if info.name in resolved:
            continue
        if given and info.name in given:
            resolved[info.name] = tuple(given[info.name])
            continue
        if info.shape is None:
            problems.append(
                f"input `{info.name}` has unknown rank; give its shape with --shape {info.name}:1x3x224x224"
            )
            continue
        shape = []
        for axis, d in enumerate(info.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str) and d in chosen:
                shape.append(chosen[d])
            elif isinstance(d, str) and d in from_given:
                shape.append(from_given[d])
            else:
                value = DEFAULT_BATCH if axis == 0 else DEFAULT_DIM
                if isinstance(d, str):
                    chosen[d] = value
                shape.append(value)
        resolved[info.name] = tuple(shape)
    if problems:
        raise UsageError(f"cannot build inputs for {model.name}", problems=problems)
    return resolved


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
    (valid as indices in most models), full-range uint8 (images), random booleans."""
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
            f"cannot make random values for input `{info.name}` of type {dtype}; pass its values with --inputs feeds.npz"
        )
    if np_dtype.name in LOW_PRECISION_FLOATS:
        # ml_dtypes floats (bfloat16, float8, float4): normal values, rounded to the type.
        return rng.standard_normal(shape).astype(np.float32).astype(np_dtype)
    if np_dtype.name in LOW_PRECISION_INTS:
        return rng.integers(0, 2, size=shape).astype(np_dtype)
    if np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if np_dtype.kind in "iu":
        return rng.integers(0, 8, size=shape).astype(np_dtype)
    raise SurgeonError(
        f"cannot make random values for input `{info.name}` of type {dtype}; pass its values with --inputs feeds.npz"
    )


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` file into a dict, with a clear error for anything unreadable."""
    p = Path(path)
    if not p.is_file():
        raise SurgeonError(f"{path}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:
        raise SurgeonError(f"{path} is not a readable .npz file ({e})") from None


def make_feeds(model: Model, options: FeedOptions = FeedOptions()) -> dict[str, np.ndarray]:
    """Values for every input of ``model``: from ``options.npz`` where given, else random.

    The shapes of the ``.npz`` arrays fix the symbolic dims they use, so random inputs
    that share a dim with them get the same value.

    Raises:
        SurgeonError: The seed is negative, the ``.npz`` has keys that are not inputs, or
            values whose dtype or static dims do not match the model.
    """
    if options.seed < 0:
        # numpy's seed sequence takes non-negative integers only.
        raise UsageError(f"--seed {options.seed} is negative; use a seed >= 0")
    user = load_npz(options.npz) if options.npz else {}
    inputs = model.inputs
    names = [i.name for i in inputs]
    problems = []
    for key in user:
        if key not in names:
            hint = did_you_mean(key, names)
            problems.append(
                f"{options.npz} has `{key}`, which is not an input of {model.name}"
                + (f"; {hint}" if hint else "")
            )
    for info in inputs:
        if info.name not in user:
            continue
        value = user[info.name]
        wanted = numpy_dtype(info.dtype) if info.dtype and info.dtype != "str" else None
        if (
            wanted is not None
            and value.dtype.kind == "V"
            and value.dtype.itemsize == wanted.itemsize
        ):
            # np.savez stores bfloat16/float8/int4 arrays as raw void: read them back.
            value = user[info.name] = value.view(wanted)
        if info.dtype and info.dtype != "str" and value.dtype.name != info.dtype:
            problems.append(
                f"`{info.name}` in {options.npz} is {value.dtype.name}; the model wants {info.dtype}"
            )
        if info.shape is not None:
            if value.ndim != len(info.shape):
                problems.append(
                    f"`{info.name}` in {options.npz} has shape {list(value.shape)}; the model wants {info.shape_text()}"
                )
            else:
                for axis, want in enumerate(info.shape):
                    if isinstance(want, int) and want > 0 and value.shape[axis] != want:
                        problems.append(
                            f"`{info.name}` in {options.npz} has shape {list(value.shape)}; the model wants {info.shape_text()}"
                        )
                        break
    if problems:
        raise SurgeonError(f"the feeds in {options.npz} do not fit {model.name}", problems=problems)
    # The user's arrays fix the symbolic dims of the random inputs too (unless --shape
    # says otherwise), and --shape is still checked when every input is in the file.
    shapes = resolve_shapes(
        model, options, given={name: value.shape for name, value in user.items()}
    )
    feeds = {}
    for info in inputs:
        feeds[info.name] = (
            user[info.name]
            if info.name in user
            else random_array(info, shapes[info.name], options.seed)
        )
    return feeds


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
