"""Rendering with rich: diff tables, errors, progress, and JSON output.

The rich import lives in this package only; the library's result objects carry numbers
and the CLI picks a rendering (terminal table or ``--json``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from surgeon.compare import DiffReport


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
    """A user error: one paragraph on stderr (and a JSON document on stdout with --json)."""
    err = ctx.err_console
    text = Text()
    text.append("error: ", style="bold red")
    text.append(error.message)
    err.print(text)
    for p in error.problems:
        err.print(Text("  - " + p))
    if error.hint:
        err.print(Text(error.hint, style="dim"))
    if ctx.json:
        from surgeon.errors import error_document

        write_json(ctx.console, error_document(error))


def render_internal_error(ctx, exc: BaseException) -> None:
    err = ctx.err_console
    err.print(
        Text.assemble(
            ("internal error: ", "bold red"),
            f"{type(exc).__name__}: {exc}. This is a bug in surgeon, not in your model or command; "
            "rerun with --traceback and report the output.",
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
    table = Table(title=title or report.title, title_justify="left", show_lines=False)
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
            escape(name),
            Text(t.status, style=_STATUS_STYLE.get(t.status, "")),
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
    return Text(report.summary(), style=style)


def settings_text(report: DiffReport) -> Text:
    tol = report.tolerance
    tol_text = "bit-identical" if tol.exact else f"atol={tol.atol:g} rtol={tol.rtol:g}"
    feeds = ", ".join(
        f"{k}: {d['dtype']}[{'x'.join(map(str, d['shape']))}]" for k, d in report.feeds.items()
    )
    seed = f"seed={report.seed}" if report.seed is not None else "feeds from file"
    return Text(
        f"{report.candidate} vs {report.reference} · {seed} · {tol_text} · feeds {feeds or '-'}",
        style="dim",
    )


def render_diff(console: Console, report: DiffReport) -> None:
    """A diff report for a person: the verdict first, then the table and the settings."""
    console.print(verdict_text(report))
    if report.tensors:  # an empty table says nothing the verdict and notes do not
        console.print(diff_table(report))
    console.print(settings_text(report))
    for note in report.notes:
        console.print(Text("note: " + note, style="yellow"))


@contextmanager
def status(ctx, text: str):
    """A spinner with a changing phase text on a terminal; silent when piped or --json.

    Yields a function ``update(text)``.
    """
    if not ctx.interactive:
        yield lambda text: None
        return
    with ctx.err_console.status(text) as spinner:
        yield lambda text: spinner.update(text)


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
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=ctx.err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
