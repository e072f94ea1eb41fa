"""Rendering with rich: diff tables, errors and progress.

The rich import lives in this package only; the library's result objects carry numbers
and the CLI picks a rendering (terminal table here, or ``--json`` through
:mod:`surgeon.jsonout`; :mod:`surgeon.report.dispatch` maps result types to renderers).

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
import os
from contextlib import contextmanager

from rich.cells import cell_len
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


# A name column keeps at least this many cells before it folds: beside a long no-wrap
# shape, rich would otherwise squeeze it to nothing.
NAME_MIN_WIDTH = 16
# Numbers longer than this are rare; the cap keeps one freak cell from starving the rest.
NUMBER_MAX_WIDTH = 32


class SafeTable(Table):
    """A rich ``Table`` whose title, headers and cells are never markup and never carry
    control characters: strings go through :func:`shown`, ``Text`` through
    :func:`safe_text`. Use it for every table (tests/test_terminal_safety.py checks).

    ``add_column(..., kind="name")`` makes a column that folds (never cuts) and keeps at
    least :data:`NAME_MIN_WIDTH` cells (or its longest cell, if shorter);
    ``kind="number"`` a column that never wraps, is as wide as its longest cell, and, if
    the terminal is too narrow even so, ends in an ellipsis rather than losing digits
    silently (``0/409600`` must never read ``0/40960``).
    """

    def __init__(self, *headers, title=None, caption=None, **kwargs):
        super().__init__(
            *(_safe_cell(h) for h in headers),
            title=_safe_cell(title),
            caption=_safe_cell(caption),
            **kwargs,
        )
        self._kinds: list[str | None] = [None] * len(headers)

    def add_column(self, header="", *args, kind: str | None = None, **kwargs) -> None:
        if kind == "name":
            kwargs.setdefault("overflow", "fold")
        elif kind == "number":
            kwargs.setdefault("no_wrap", True)
            kwargs["overflow"] = "ellipsis"
        elif kind is not None:
            raise ValueError(f"unknown column kind {kind!r}")
        super().add_column(_safe_cell(header), *args, **kwargs)
        self._kinds.append(kind)

    def add_row(self, *renderables, **kwargs) -> None:
        cells = [_safe_cell(r) for r in renderables]
        for column, kind, cell in zip(self.columns, self._kinds, cells, strict=False):
            if kind is None or not isinstance(cell, Text):
                continue
            width = max((cell_len(line) for line in cell.plain.splitlines()), default=0)
            need = min(width, NAME_MIN_WIDTH if kind == "name" else NUMBER_MAX_WIDTH)
            column.min_width = max(column.min_width or 0, need)
        super().add_row(*cells, **kwargs)

    def _calculate_column_widths(self, console, options):
        # rich honours min widths even past the terminal's edge, and the console then cuts
        # the line silently. When they cannot all fit, names give way first (they fold),
        # then numbers (they end in an ellipsis), so nothing is lost without a mark.
        widths = super()._calculate_column_widths(console, options)
        saved = [column.min_width for column in self.columns]
        try:
            for give_way in ("name", "number"):
                if sum(widths) + self._extra_width <= options.max_width:
                    break
                for column, kind in zip(self.columns, self._kinds, strict=False):
                    if kind == give_way:
                        column.min_width = None
                widths = super()._calculate_column_widths(console, options)
        finally:
            for column, width in zip(self.columns, saved, strict=True):
                column.min_width = width
        return widths


# Width of a console that writes to a pipe or a file: wide enough that no name or number
# is ever wrapped or cut (rich would otherwise assume 80 columns).
PIPE_WIDTH = 100_000


def _made_console(file=None, *, stderr: bool = False) -> Console:
    console = Console(file=file, stderr=stderr, highlight=False)
    # A log or a `| grep` wants whole lines, not a terminal's layout; an explicit COLUMNS
    # is the user's choice and is kept.
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def make_consoles(console=None, err_console=None, *, file=None, err_file=None):
    """The stdout and stderr consoles (created when not given; tests pass their own).

    A console surgeon makes for a terminal follows the terminal's size; one that writes
    to a pipe or a file renders wide (:data:`PIPE_WIDTH`), so no line is wrapped or cut.

    Args:
        console: The stdout console to use as it is, if given.
        err_console: The stderr console to use as it is, if given.
        file: Where a created stdout console writes (default ``sys.stdout``).
        err_file: Where a created stderr console writes (default ``sys.stderr``).
    """
    console = console or _made_console(file)
    err_console = err_console or _made_console(err_file, stderr=err_file is None)
    return console, err_console


def taller_than_terminal(console: Console, renderable) -> bool:
    """Whether ``renderable`` scrolls a terminal's first lines out of sight (a long table
    pushes the verdict printed above it away); always False off a terminal."""
    if not console.is_terminal:
        return False
    lines = console.render_lines(renderable, console.options, pad=False)
    return len(lines) + 2 > console.height


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
    """A user error: one paragraph on stderr (the CLI adds the JSON document with --json).

    Message, problems and hint are library wording around names from the model and the
    command line; each is escaped whole (nothing in them is meant as markup).
    """
    err = ctx.err_console
    err.print(Text.assemble(shown("error: ", "bold red"), shown(error.message)))
    for p in error.problems:
        err.print(shown("  - " + p))
    if error.hint:
        err.print(shown(error.hint, "dim"))


def render_internal_error(ctx, text: str) -> None:
    """A bug in surgeon: ``internal error: <text>`` on stderr (``text`` names the Python
    exception and asks for a report; the CLI adds the JSON document with --json)."""
    ctx.err_console.print(Text.assemble(shown("internal error: ", "bold red"), shown(text)))


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
            col,
            justify=justify,
            kind="name" if col == "tensor" else "number" if justify == "right" else None,
            no_wrap=col in ("shape", "status"),
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
        f"{k}: {d['dtype']}[{'x'.join(map(str, d['shape'] or []))}]"
        for k, d in report.feeds.items()
    )
    return shown(
        f"{report.candidate} vs {report.reference} · {seed_text(report.seed, report.feeds)} · "
        f"{tol_text} · feeds {feeds or '-'}",
        "dim",
    )


def seed_text(seed: int | None, feeds: dict[str, dict]) -> str:
    """``seed=5``, ``seed=5 (from file: sr)`` when some inputs came from the ``.npz``
    and others were made from the seed, or ``feeds from file`` when none depended on it."""
    if seed is None:
        return "feeds from file"
    from_file = [k for k, d in feeds.items() if d.get("from") == "file"]
    return f"seed={seed}" + (f" (from file: {', '.join(from_file)})" if from_file else "")


def render_diff(console: Console, report: DiffReport) -> None:
    """A diff report for a person: the verdict first, then the table and the settings."""
    console.print(verdict_text(report))
    tall = False
    if report.tensors:  # an empty table says nothing the verdict and notes do not
        table = diff_table(report)
        tall = taller_than_terminal(console, table)
        console.print(table)
    console.print(settings_text(report))
    for note in report.notes:
        console.print(shown("note: " + note, "yellow"))
    if tall:  # the verdict above has scrolled away: say it again where the eye is
        console.print(verdict_text(report))


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
