"""Argument checks at the public API's edge: ``surgeon.<name>(...)`` is the CLI's twin.

Every user error from the Python API is a :class:`~surgeon.errors.SurgeonError`, as it
is from the command line. :func:`public` wraps each function of ``surgeon``'s public
table once (in ``surgeon/__init__.py``), so one mechanism covers every entry point:

* arguments that do not fit the signature (a missing ``path``, an unknown keyword)
  become a :class:`~surgeon.errors.UsageError` naming the function and its signature,
  instead of Python's ``TypeError``;
* every other argument is checked against its annotation in the signature
  (:mod:`surgeon.annotations`): ``str``, ``int``, ``Sequence[str]``,
  ``Mapping[str, Sequence[int]]``, the option dataclasses...; a value that does not fit
  is a UsageError naming the parameter, what was given and what is expected, before
  the function runs. A lone ``str`` where a list of names is expected is one name
  (``tap(m, "backbone/conv0")``), never a list of letters;
* an unknown keyword is a UsageError with the close matches among the real ones;
* every model parameter goes through :func:`as_model`: a Model is taken as it is, an
  :class:`~surgeon.edits.Edited` result gives its ``.model``, an ``onnx.ModelProto`` is
  validated and wrapped, and a path is loaded with :func:`surgeon.load` (as Polygraphy
  accepts a path wherever it wants a model); any other value is a UsageError naming the
  parameter and the type it got.

``surgeon.save`` is the exception to loading: its ``model`` must already be a model
(``save("a.onnx", "b.onnx")`` is far more likely swapped arguments than a wish to copy a
file), so a path there is an error that says so.

The option dataclasses (Tolerance, FeedOptions, RunOptions, DebugOptions) are
decorated with :func:`surgeon.annotations.checked_init`: their fields are checked the same way however
they are built (``surgeon.FeedOptions(seed="a")``, ``dataclasses.replace``).

Library code calls the modules' functions directly with Models and pays nothing.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping

from surgeon.annotations import call_shape, check_annotated, unknown_keywords
from surgeon.errors import UsageError

# How each public function's model parameters are read. "model": Model, Edited or a
# path (loaded); "saved": Model or Edited only; "models": a list of those; "optional":
# like "model", None allowed; "reference": like "model", a Chain or a path to an .npz
# allowed too (the callee tells them apart).
MODEL_PARAMETERS: dict[str, dict[str, str]] = {
    "save": {"model": "saved"},
    "verify": {"candidate": "model", "reference": "reference"},
    "make_feeds": {"model": "model"},
    "run": {"model": "model"},
    "describe": {"model": "model"},
    "tap": {"model": "model"},
    "debug": {"model": "model"},
    "run_recipe": {"models": "models"},
    "build_nms": {"detector": "optional"},
    "merge": {"first": "model", "second": "model"},
    "extract": {"model": "model"},
    "rename": {"model": "model"},
    "reshape_io": {"model": "model"},
    "fold": {"model": "model"},
    "convert": {"model": "model"},
    "edit_nodes": {"model": "model"},
    "rewrite": {"model": "model"},
    "check_dynamic": {"model": "model"},
    "declared_vs_actual": {"model": "model"},
    "node_origin": {"model": "model"},
    "match_activations": {"model": "model"},
    "blame": {"model": "model"},
    "plan_fp16": {"model": "model"},
    "suggest_exclusions": {"int8": "model", "float_model": "model"},
}

# Parameters that name a file: a path (str or os.PathLike), nothing else.
PATH_PARAMETERS: dict[str, tuple[str, ...]] = {
    "load": ("path",),
    "save": ("path",),
    "load_recipe": ("spec",),  # a built-in recipe's name or a .py path
}


def _type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def as_model(value, parameter: str, function: str, *, load_paths: bool = True):
    """``value`` as a Model, or a UsageError naming ``parameter`` of ``function``.

    Args:
        value: A Model; an Edited result (its ``.model`` is taken); an
            ``onnx.ModelProto`` (validated, then wrapped); or, with
            ``load_paths``, a path (str or os.PathLike) loaded with :func:`surgeon.load`.
        parameter: The parameter's name, for the message.
        function: The public function's name (``"tap"``), for the message.
        load_paths: Whether a path is loaded (False: it is an error with a hint).

    Raises:
        UsageError: ``value`` is none of those.
        ModelLoadError: The path cannot be loaded as a model.
    """
    # Imported here: surgeon.model imports onnx, and this module is imported by
    # `import surgeon`, which must stay cheap.
    import onnx

    from surgeon.edits import Edited
    from surgeon.model import Model

    if isinstance(value, Model):
        return value
    if isinstance(value, Edited):
        return value.model
    if isinstance(value, onnx.ModelProto):
        return _from_proto(value, parameter, function)
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        if load_paths:
            from surgeon.loading import load

            return load(value)
        raise UsageError(
            f"surgeon.{function}(): `{parameter}` must be a Model, an Edited result or an "
            f"onnx.ModelProto, not a path ({os.fspath(value)!r})",
            hint=f"Load it first: surgeon.{function}(surgeon.load(path), ...)."
            if function != "save"
            else "The model comes first: surgeon.save(model, path); "
            "load a file with surgeon.load(path).",
        )
    accepted = "a Model, an Edited result, an onnx.ModelProto or a path to an .onnx file"
    if not load_paths:
        accepted = "a Model, an Edited result or an onnx.ModelProto"
    raise UsageError(
        f"surgeon.{function}(): `{parameter}` must be {accepted}, not {_type_name(value)}",
        hint="Load a model with surgeon.load(path).",
    )


def _from_proto(proto, parameter: str, function: str):
    """An in-memory ModelProto (onnx.load, onnx.parser) as a Model, validated as
    :func:`surgeon.load` validates a file."""
    from surgeon.errors import ModelLoadError
    from surgeon.model import Model
    from surgeon.validation import check_structure

    problems = check_structure(proto)
    if problems:
        raise ModelLoadError(
            f"surgeon.{function}(): the ModelProto given as `{parameter}` is not a valid "
            f"ONNX model ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
            problems=problems[:20],
        )
    return Model(proto)


def _coerce(value, kind: str, parameter: str, function: str):
    if kind == "saved":
        return as_model(value, parameter, function, load_paths=False)
    if kind == "optional" and value is None:
        return None
    if kind == "reference":
        from surgeon.verification import Chain

        if isinstance(value, Chain):
            return value
    if kind == "models":
        if isinstance(value, str | os.PathLike) or not hasattr(value, "__iter__"):
            raise UsageError(
                f"surgeon.{function}(): `{parameter}` must be a list of models, "
                f"not {_type_name(value)}"
            )
        return [as_model(v, f"{parameter}[{i}]", function) for i, v in enumerate(value)]
    return as_model(value, parameter, function)


def _check_path(value, parameter: str, function: str) -> None:
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        text = os.fspath(value)
        if not text:
            raise UsageError(f"surgeon.{function}(): `{parameter}` is an empty path")
        if "\0" in str(text):  # no file system takes it; os would raise a ValueError
            raise UsageError(f"surgeon.{function}(): `{parameter}` contains a NUL character")
        return
    hint = None
    if function == "load" and _is_model_like(value):
        hint = "It is already loaded; use it as it is."
    raise UsageError(
        f"surgeon.{function}(): `{parameter}` must be "
        f"{'a recipe name or ' if function == 'load_recipe' else ''}a path (str or os.PathLike), "
        f"not {_type_name(value)}",
        hint=hint,
    )


def _is_model_like(value) -> bool:
    from surgeon.edits import Edited
    from surgeon.model import Model

    return isinstance(value, Model | Edited)


def public(name: str, function: Callable) -> Callable:
    """``function`` with its arguments checked as described in the module docstring.

    Classes are returned unchanged (the option dataclasses check their own fields, see
    :func:`surgeon.annotations.checked_init`). Every function is wrapped.
    """
    models: Mapping[str, str] = MODEL_PARAMETERS.get(name, {})
    paths = PATH_PARAMETERS.get(name, ())
    if not inspect.isfunction(function):
        return function
    signature = inspect.signature(function)
    shape = call_shape(signature)
    where = f"surgeon.{name}()"
    skip = set(models) | set(paths)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        unknown_keywords(signature, kwargs, where, shape)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            # Python's own message ("missing a required argument: 'path'") is the
            # clearest account; the signature says what to write instead.
            raise UsageError(
                f"{where}: {error}", hint=f"Call it as surgeon.{name}({shape})."
            ) from None
        arguments = bound.arguments
        for parameter in paths:
            if parameter in arguments:
                _check_path(arguments[parameter], parameter, name)
        for parameter, kind in models.items():
            if parameter in arguments:
                arguments[parameter] = _coerce(arguments[parameter], kind, parameter, name)
        check_annotated(signature, arguments, skip, where)
        return function(*bound.args, **bound.kwargs)

    return checked
