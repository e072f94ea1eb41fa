"""JSON output: the one place surgeon writes a JSON document, and builds its error documents.

Every ``--json`` document goes through :func:`write_json`; nothing else in surgeon calls
``json.dumps`` for output. (Provenance records inside a model's metadata are data, not
output, and stay with the model code.)

The policy, in one place:

- **Numbers.** JSON has no NaN or infinity: NaN becomes ``null`` and ±infinity the strings
  ``"inf"`` / ``"-inf"`` (the result objects' own ``to_dict`` already say so through
  ``surgeon.compare.json_number``; here the same rule catches anything that slipped by,
  so a document never fails half-written). ``allow_nan=False`` stays on as a guard.
- **numpy.** Scalars become Python numbers, arrays nested lists (found by their methods,
  so this module does not import numpy: a ``--json`` usage error must stay cheap).
- **Names that are not valid UTF-8.** A file name read under ``surrogateescape`` holds
  lone surrogates, which no UTF-8 stream can encode. The document is written as ASCII
  (``ensure_ascii``): every non-ASCII character, lone surrogates included, is a ``\\u``
  escape, so writing never fails whatever the stream's encoding, and ``json.loads``
  gives back the exact string. Bytes are decoded the same way (``surrogateescape``).
- **Anything else** with a ``to_dict()`` is written as that dict; paths as strings; sets
  as sorted lists; an unknown object as its ``str`` (a readable value beats a crash at
  the very end of a run).

It imports only the standard library: the CLI's plain ``--json`` path uses it without
loading rich, numpy or onnxruntime.
"""

from __future__ import annotations

import json
import math
from os import PathLike
from typing import IO, Any

ERROR_SCHEMA = "surgeon.error/1"


def _float(x: float):
    """A float for JSON: NaN → None, ±inf → ``"inf"``/``"-inf"``, others unchanged."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, int, float, bool, None), by the
    policy in the module docstring."""
    # The plain types first, by exact type: a debug report holds thousands of numbers,
    # and the isinstance chain below took twice as long for each.
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else _float(value)
    if kind is int:
        return value
    if kind is dict:
        return {k if type(k) is str else _key(k): jsonable(v) for k, v in value.items()}
    if kind is list:
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, str)):  # subclasses (a str enum)
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum members (ExitStatus) as plain numbers
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, PathLike):
        return jsonable(value.__fspath__())
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    if hasattr(value, "tolist"):  # numpy scalars (.tolist() gives a Python number) and arrays
        converted = value.tolist()
        if converted is not value:
            return jsonable(converted)
    if isinstance(value, complex):
        return str(value)
    return str(value)


def _key(key: Any) -> str:
    value = jsonable(key)
    return value if isinstance(value, str) else json.dumps(value)


def dumps(data: Any) -> str:
    """The text of one JSON document (indented, ASCII, no NaN), without a newline."""
    plain = jsonable(data)
    try:
        return _indented(plain)
    except _NotPlain:  # cannot happen after jsonable; json says what is wrong
        return json.dumps(plain, indent=2, ensure_ascii=True, allow_nan=False)


class _NotPlain(Exception):
    """A value :func:`_indented` does not write (json.dumps then does, or says why)."""


def _indented(plain: Any) -> str:
    """``json.dumps(plain, indent=2, ensure_ascii=True, allow_nan=False)``, the same
    text, for the plain data :func:`jsonable` gives.

    json writes an indented document with its pure-Python encoder (its C encoder does
    not indent), a generator per container: this writes the same layout into one list.
    Strings go through json's own ASCII escaping, numbers through the reprs json uses.
    """
    parts: list[str] = []
    append = parts.append
    quote = json.encoder.encode_basestring_ascii

    def write(value, indent: str) -> None:
        kind = type(value)
        if kind is str:
            append(quote(value))
        elif value is None:
            append("null")
        elif value is True:
            append("true")
        elif value is False:
            append("false")
        elif kind is float:
            if not math.isfinite(value):
                raise _NotPlain
            append(float.__repr__(value))
        elif kind is int:
            append(int.__repr__(value))
        elif kind is dict:
            if not value:
                append("{}")
                return
            inner = indent + "  "
            separator = "{\n" + inner
            for key, item in value.items():
                if type(key) is not str:
                    raise _NotPlain
                append(separator)
                append(quote(key))
                append(": ")
                write(item, inner)
                separator = ",\n" + inner
            append("\n" + indent + "}")
        elif kind is list:
            if not value:
                append("[]")
                return
            inner = indent + "  "
            separator = "[\n" + inner
            for item in value:
                append(separator)
                write(item, inner)
                separator = ",\n" + inner
            append("\n" + indent + "]")
        else:
            raise _NotPlain

    write(plain, "")
    return "".join(parts)


def write_json(file: IO[str], data: Any) -> None:
    """Write one JSON document and a newline to ``file``, then flush it."""
    file.write(dumps(data) + "\n")
    file.flush()


def error_document(error) -> dict:
    """The ``surgeon.error/1`` document of a user error (a :class:`~surgeon.errors.SurgeonError`).

    Keys: schema, error (the class name), message, problems, hint, suggestions,
    exit_code. The strings are exact (a terminal sees them escaped; a script does not).
    """
    return _document(
        type(error).__name__,
        error.message,
        exit_code=error.exit_code,
        problems=error.problems,
        hint=error.hint,
        suggestions=getattr(error, "suggestions", []),
    )


def usage_error_document(message: str, exit_code: int) -> dict:
    """The error document of a command line argparse refused (an unknown option, a
    missing argument): the same keys as :func:`error_document`, error ``UsageError``."""
    return _document(
        "UsageError",
        message,
        exit_code=exit_code,
        hint="Run `surgeon COMMAND --help` for the options.",
    )


def internal_error_document(exc: BaseException, exit_code: int) -> dict:
    """The error document of a bug in surgeon (error ``InternalError``; the message
    names the Python exception)."""
    return _document("InternalError", f"{type(exc).__name__}: {exc}", exit_code=exit_code)


def _document(error: str, message: str, *, exit_code: int, problems=(), hint=None, suggestions=()):
    return {
        "schema": ERROR_SCHEMA,
        "error": error,
        "message": message,
        "problems": list(problems),
        "hint": hint,
        "suggestions": list(suggestions),
        "exit_code": int(exit_code),
    }
