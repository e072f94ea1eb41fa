"""Errors surgeon raises for problems in the user's input or usage.

Every user-facing failure is a :class:`SurgeonError`. The library raises these and never
prints or exits; only the CLI's error boundary (``surgeon.cli``) turns them into a
one-paragraph message and an exit code. Anything else that escapes is a bug, shown with
a hint to rerun with ``--traceback``.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Iterable
from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes, the same for every command (``surgeon.cli.main`` returns them)."""

    SUCCESS = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    INTERNAL_ERROR = 3  # a bug in surgeon: please report it with --traceback
    HANGUP = 129  # SIGHUP: 128 + the signal number, as shells report it
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    BROKEN_PIPE = 141  # stdout (or stderr) was closed by the reader, e.g. `| head -1`
    TERMINATED = 143  # SIGTERM


class SurgeonError(Exception):
    """A problem with the user's input or usage (exit code 2).

    Args:
        message: What is wrong, naming the file and the thing.
        hint: How to fix it, if there is something to suggest.
        problems: Every individual problem when several were collected; they are shown
            as a list under the message.
    """

    exit_code = ExitStatus.BAD_INPUT

    def __init__(self, message: str, *, hint: str | None = None, problems: Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = list(problems)

    def __str__(self) -> str:
        text = self.message
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        if self.hint:
            text += f"\n{self.hint}"
        return text


class ModelLoadError(SurgeonError):
    """The model file cannot be read, or is not a usable ONNX model."""


class UnsafePathError(ModelLoadError):
    """An external data location points outside the model's folder."""


class NameNotFoundError(SurgeonError):
    """A tensor, node, input or output name does not exist; carries close matches."""

    def __init__(self, message: str, *, name: str, suggestions: Iterable[str] = (), **kwargs):
        super().__init__(message, **kwargs)
        self.name = name
        self.suggestions = list(suggestions)


class UsageError(SurgeonError):
    """Arguments that do not fit together or do not parse."""


class OutputPathError(SurgeonError):
    """The output path cannot be written (or would overwrite the input)."""


class RuntimeFailure(SurgeonError):
    """onnxruntime could not load or run a model (an unsupported op, a broken graph)."""


class VerificationFailed(SurgeonError):
    """A verification did not pass and the caller asked for that to be an error (exit 1)."""

    exit_code = ExitStatus.VERIFICATION_FAILED

    def __init__(self, message: str, *, report=None, **kwargs):
        super().__init__(message, **kwargs)
        self.report = report


# Everything outside printable ASCII is looked at; of that, only characters that steer a
# terminal or reorder text are escaped, so names in any script still show as themselves.
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e]")
# Cc: C0, DEL and C1 controls (ESC starts every ANSI sequence; U+009B is a one-byte CSI).
# Cf: format characters, among them the bidi overrides U+202A..U+202E and U+2066..U+2069
# and zero-width characters. Zl/Zp: line and paragraph separators. Cs: lone surrogates
# (a non-UTF-8 file name decoded with surrogateescape), which cannot be encoded at all.
_STEERING_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(match: re.Match) -> str:
    char = match.group()
    if unicodedata.category(char) not in _STEERING_CATEGORIES:
        return char
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` made safe for a terminal: every control character shown as an escape.

    Text from a model (names, metadata, doc strings, error messages quoting them) and
    from paths is untrusted: an ESC could set the terminal's title or clear the screen,
    a newline could fake a ``PASS:`` line, a bidi override could reverse what is shown.
    C0/C1 controls, DEL, format characters (bidi overrides, zero-width characters),
    line/paragraph separators and lone surrogates become Python-style escapes
    (``\\x1b``, ``\\n``, ``\\u202e``); everything else, any script included, is kept.
    A backslash is kept as it is (escaping it would make every Windows path unreadable),
    so ``\\x1b`` typed literally looks the same as an escaped ESC; ``--json`` keeps the
    exact string.

    This is plain text, not rich markup: ``surgeon.report.shown`` wraps it in a rich
    ``Text`` so that markup in the text is never interpreted either.
    """
    text = str(text)
    if not _NOT_PLAIN_ASCII.search(text):
        return text  # the common case: nothing to look at
    return _NOT_PLAIN_ASCII.sub(_escape_character, text)


def close_matches(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Return up to ``limit`` candidates that look like ``name``.

    Combines difflib's ratio with substring matches, because exported names are long
    (``/model.0/conv/Conv_output_0``) and users tend to type a fragment of them.
    """
    pool = list(dict.fromkeys(candidates))
    import difflib  # here: 5 ms of every start for a question most runs never ask

    found = difflib.get_close_matches(name, pool, n=limit, cutoff=0.6)
    lowered = name.lower()
    if lowered:
        for cand in pool:
            if len(found) >= limit:
                break
            if cand not in found and (lowered in cand.lower() or cand.lower() in lowered):
                found.append(cand)
    return found[:limit]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A ``did you mean `a`, `b`?`` phrase, or None when nothing is close."""
    matches = close_matches(name, candidates)
    if not matches:
        return None
    return "did you mean " + ", ".join(f"`{m}`" for m in matches) + "?"


def names_hint(model_path=None) -> str:
    """The command that lists a model's node and tensor names, ready to copy.

    Args:
        model_path: The model's file; without one the command says ``MODEL.onnx``.
    """
    target = shlex.quote(str(model_path)) if model_path is not None else "MODEL.onnx"
    return (
        f"Run `surgeon inspect {target} --names` to list the node and tensor names "
        f"(`--names 'GLOB'` filters them, e.g. `--names '*conv*'`)."
    )


def unknown_name(
    kind: str, name: str, candidates: Iterable[str], where: str, *, model_path=None
) -> NameNotFoundError:
    """Build the standard error for a name that is not in a model.

    Args:
        kind: What was looked for ("tensor", "input", "node or tensor").
        name: The name the user gave.
        candidates: Every name the option accepts (only those: a suggestion must work).
        where: The model's file name or description.
        model_path: The model's file, for a hint with the exact ``surgeon inspect``
            command that lists its names.
    """
    pool = list(candidates)
    matches = close_matches(name, pool)
    message = f"no {kind} `{name}` in {where}"
    if matches:
        message += "; did you mean " + ", ".join(f"`{m}`" for m in matches) + "?"
    hint = None
    if not matches and pool:
        hint = names_hint(model_path)
    return NameNotFoundError(message, name=name, suggestions=matches, hint=hint)


def collect_unknown_names(
    kind: str, names: Iterable[str], candidates: Iterable[str], where: str, *, model_path=None
) -> None:
    """Raise one error listing every unknown name at once (or return if all are known)."""
    pool = list(candidates)
    known = set(pool)
    errors = [
        unknown_name(kind, n, pool, where, model_path=model_path) for n in names if n not in known
    ]
    raise_name_errors(
        errors,
        f"{len(errors)} unknown {kind} names in {where}",
        hint=names_hint(model_path) if pool else None,
    )


def raise_name_errors(errors: list[NameNotFoundError], message: str, hint=None) -> None:
    """Raise every unknown name at once: the one error as it is, or one NameNotFoundError
    (``message``) listing them all, with the first one's suggestions. Nothing to raise
    when ``errors`` is empty."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    raise NameNotFoundError(
        message,
        name=errors[0].name,
        suggestions=errors[0].suggestions,
        problems=[e.message for e in errors],
        hint=hint,
    )
