"""Rendering of ``surgeon blame`` for a person: the verdict, the passes to blame with the
nodes they fused, and the runs that show it."""

from __future__ import annotations

from rich.console import Console

from surgeon.compare import DiffReport
from surgeon.report import SafeTable, diff_table, shown

# A layout pass (NchwcTransformer) remakes hundreds of nodes as one group; the table
# names the first few and counts the rest (--json lists them all).
SHOWN_NODES = 6


def _nodes(nodes) -> str:
    text = ", ".join(
        f"{n.name} ({n.op_type}{', ' + n.domain if n.domain else ''})" for n in nodes[:SHOWN_NODES]
    )
    more = len(nodes) - SHOWN_NODES
    return text + (f" and {more} more" if more > 0 else "")


def culprit_table(report) -> SafeTable:
    table = SafeTable(title="passes to blame", title_justify="left")
    table.add_column("pass", kind="name")
    table.add_column("kind", no_wrap=True)
    table.add_column("made", kind="name", ratio=1)
    table.add_column("from the nodes", kind="name", ratio=2)
    for c in report.culprits:
        rows = [(_nodes(f.nodes), _nodes(f.replaced) or "-") for f in c.changes.fusions]
        if c.changes.removed:
            rows.append(("(removed)", _nodes(c.changes.removed)))
        for i, (made, replaced) in enumerate(rows or [("-", "-")]):
            table.add_row(c.name if i == 0 else "", c.kind if i == 0 else "", made, replaced)
    return table


def _diff(report, tensors, title: str) -> DiffReport:
    return DiffReport(title, report.model, report.model, tensors, tolerance=report.tolerance)


def render_blame(console: Console, report) -> None:
    """A blame report: the verdict first, then the tables, the settings and the notes."""
    style = "bold green" if report.passed else "bold red"
    console.print(shown(report.summary(), style))
    console.print(
        diff_table(_diff(report, report.level_diff, f"level `{report.level}` vs `disabled`"))
    )
    if report.culprits:
        console.print(culprit_table(report))
    if report.verification:
        disabled = ", ".join(c.name for c in report.culprits)
        title = f"verification: level `{report.level}` with {disabled} disabled vs `disabled`"
        console.print(diff_table(_diff(report, report.verification, title)))
    feeds = ", ".join(
        f"{k}: {d['dtype']}[{'x'.join(map(str, d['shape'] or []))}]"
        for k, d in report.feeds.items()
    )
    seed = f"seed={report.seed}" if report.seed is not None else "feeds from file"
    console.print(
        shown(
            f"{report.model} · {seed} · {report.tolerance_text()} · feeds {feeds or '-'} · "
            f"{len(report.trials)} trial run(s) · {report.seconds:.2f}s",
            "dim",
        )
    )
    if report.applied:
        console.print(shown("passes that changed the graph: " + ", ".join(report.applied), "dim"))
    for note in report.notes:
        console.print(shown("note: " + note, "yellow"))
