"""Rendering with rich: diff tables, errors, progress, and JSON output.

The rich import lives in this package only; the library's result objects carry numbers
and the CLI picks a rendering (terminal table or ``--json``).

Terminal safety: names, metadata, doc strings, paths and messages quoting them come from
untrusted models and command lines. Rendering never hands rich a bare ``str`` (which it
would parse as markup: ``-o 'x[red]y.onnx'`` would print "wrote xy.onnx") and never lets a
control character through (an ESC could retitle the terminal, a newline fake a PASS line).
Every line of text is built with :func:`shown` (a rich ``Text``, so never markup, with
control characters escaped by :func:`surgeon.errors.printable`), and every table is a
:class:`SafeTable`, which does the same for each cell and its title. Compose a line from
library text and model text first, then pass the whole line to ``shown``: library text
holds no markup and no control characters, so escaping all of it is safe.
tests/test_terminal_safety.py holds the rendering modules to these rules.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table
from rich.text import Span, Text

from surgeon.compare import DiffReport
from surgeon.errors import printable


def shown(text, style: str = "") -> Text:
    """One piece of terminal text that may quote a model or a path, made safe.

    The result is a rich ``Text`` (rich never parses it as markup) whose control
    characters are shown as escapes (``\\x1b``, ``\\n``, ``\\u202e``), so the text
    can neither steer the terminal nor start a line of its own.

    Args:
        text: The whole line or cell, library wording and model text composed already.
        style: A rich style for all of it (``"bold red"``, ``"dim"``).
    """
    return Text(printable(text), style=style)


def safe_text(text: Text) -> Text:
    """A rich ``Text`` with its control characters escaped, its styles kept.

    For a ``Text`` built elsewhere (rich's own ``Text(...)`` drops BEL and CR but keeps
    ESC and newlines); :class:`SafeTable` passes every cell through it.
    """
    plain = text.plain
    if printable(plain) == plain:
        return text
    cuts = sorted({i + d for i, c in enumerate(plain) if printable(c) != c for d in (0, 1)})
    result = text.blank_copy()
    for part in text.divide(cuts):
        escaped = printable(part.plain)
        if escaped != part.plain:  # one escaped character: its styles cover the whole escape
            part = Text(
                escaped,
                style=part.style,
                spans=[Span(0, len(escaped), span.style) for span in part.spans],
            )
        result.append_text(part)
    return result


def _safe_cell(cell):
    if isinstance(cell, str):
        return shown(cell)
    if isinstance(cell, Text):
        return safe_text(cell)
    return cell  # another renderable (a nested table): made safe where it was built


class SafeTable(Table):
    """A rich ``Table`` whose title, headers and cells are never markup and never carry
    control characters: strings go through :func:`shown`, ``Text`` through
    :func:`safe_text`. Use it for every table (tests/test_terminal_safety.py checks)."""

    def __init__(self, *headers, title=None, caption=None, **kwargs):
        super().__init__(
            *(_safe_cell(h) for h in headers),
            title=_safe_cell(title),
            caption=_safe_cell(caption),
            **kwargs,
        )

    def add_column(self, header="", *args, **kwargs) -> None:
        super().add_column(_safe_cell(header), *args, **kwargs)

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*(_safe_cell(r) for r in renderables), **kwargs)


def make_consoles(console=None, err_console=None):
    """The stdout and stderr consoles (created when not given, e.g. by tests)."""
    console = console or Console(highlight=False)
    err_console = err_console or Console(stderr=True, highlight=False)
    return console, err_console


def write_json(console: Console, data: dict) -> None:
    """One JSON document on the console's file, exactly as serialised."""
    from surgeon.cli import write_json as write

    write(console.file, data)


def fmt(x, digits: int = 3) -> str:
    """A compact number for tables: ``1.2e-06``, ``0.998``, ``inf``, ``-``."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits + 1}g}"
    return f"{x:.{digits - 1}e}"


def render_error(ctx, error) -> None:
    """A user error: one paragraph on stderr (and a JSON document on stdout with --json).

    Message, problems and hint are library wording around names from the model and the
    command line; each is escaped whole (nothing in them is meant as markup). The JSON
    document keeps the exact strings.
    """
    err = ctx.err_console
    err.print(Text.assemble(shown("error: ", "bold red"), shown(error.message)))
    for p in error.problems:
        err.print(shown("  - " + p))
    if error.hint:
        err.print(shown(error.hint, "dim"))
    if ctx.json:
        from surgeon.errors import error_document

        write_json(ctx.console, error_document(error))


def render_internal_error(ctx, exc: BaseException) -> None:
    err = ctx.err_console
    err.print(
        Text.assemble(
            shown("internal error: ", "bold red"),
            shown(
                f"{type(exc).__name__}: {exc}. This is a bug in surgeon, not in your model or "
                "command; rerun with --traceback and report the output."
            ),
        )
    )
    if ctx.json:
        write_json(
            ctx.console,
            {
                "schema": "surgeon.error/1",
                "error": "InternalError",
                "message": f"{type(exc).__name__}: {exc}",
                "exit_code": 3,
            },
        )


_STATUS_STYLE = {
    "ok": "green",
    "mismatch": "red",
    "shape": "red",
    "dtype": "red",
    "missing": "red",
    "extra": "yellow",
}


def diff_table(report: DiffReport, title: str | None = None) -> Table:
    table = SafeTable(title=title or report.title, title_justify="left", show_lines=False)
    for col, justify in (
        ("tensor", "left"),
        ("status", "left"),
        ("shape", "left"),
        ("max abs", "right"),
        ("max rel", "right"),
        ("mismatch", "right"),
        ("cosine", "right"),
        ("nan/inf", "right"),
    ):
        table.add_column(
            col, justify=justify, overflow="fold", no_wrap=col in ("shape", "status", "mismatch")
        )
    for t in report.tensors:
        name = t.name if t.reference in (t.name, "") else f"{t.name} ← {t.reference}"
        shape = "x".join(map(str, t.shape)) if t.shape is not None else "-"
        if t.shape is not None and t.reference_shape is not None and t.shape != t.reference_shape:
            shape += " ≠ " + "x".join(map(str, t.reference_shape))
        nan_inf = (
            f"{t.nan + t.inf}/{t.reference_nan + t.reference_inf}"
            if (t.nan or t.inf or t.reference_nan or t.reference_inf)
            else "0"
        )
        table.add_row(
            name,
            shown(t.status, _STATUS_STYLE.get(t.status, "")),
            shape,
            fmt(t.max_abs),
            fmt(t.max_rel),
            f"{t.mismatches}/{t.size}" if t.size else str(t.mismatches),
            fmt(t.cosine, 6),
            nan_inf,
        )
    return table


def verdict_text(report: DiffReport) -> Text:
    style = "bold green" if report.passed else "bold red"
    return shown(report.summary(), style)


def settings_text(report: DiffReport) -> Text:
    tol = report.tolerance
    tol_text = "bit-identical" if tol.exact else f"atol={tol.atol:g} rtol={tol.rtol:g}"
    feeds = ", ".join(
        f"{k}: {d['dtype']}[{'x'.join(map(str, d['shape']))}]" for k, d in report.feeds.items()
    )
    seed = f"seed={report.seed}" if report.seed is not None else "feeds from file"
    return shown(
        f"{report.candidate} vs {report.reference} · {seed} · {tol_text} · feeds {feeds or '-'}",
        "dim",
    )


def render_diff(console: Console, report: DiffReport) -> None:
    """A diff report for a person: the verdict first, then the table and the settings."""
    console.print(verdict_text(report))
    if report.tensors:  # an empty table says nothing the verdict and notes do not
        console.print(diff_table(report))
    console.print(settings_text(report))
    for note in report.notes:
        console.print(shown("note: " + note, "yellow"))


@contextmanager
def status(ctx, text: str):
    """A spinner with a changing phase text on a terminal; silent when piped or --json.

    Yields a function ``update(text)``.
    """
    if not ctx.interactive:
        yield lambda text: None
        return
    with ctx.err_console.status(shown(text)) as spinner:
        yield lambda text: spinner.update(shown(text))


@contextmanager
def progress(ctx, description: str, total: int | None):
    """A progress bar on a terminal; a silent no-op when piped or with --json.

    Yields a function ``advance(n=1)``.
    """
    if not ctx.interactive or not total:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=ctx.err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(printable(description), total=total)
        yield lambda n=1: bar.advance(task, n)
