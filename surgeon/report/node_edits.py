"""Rendering of ``surgeon edit`` for a person: the verdict, the operations applied, the
checks, and the output comparison (information unless ``--expect-same``).

Its JSON document is the edit document (:class:`surgeon.commands.edit.NodeEditOutcome`).
"""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, shown
from surgeon.report.edits import _footer, _verdict


def render_node_edits(console: Console, outcome) -> None:
    edited = outcome.edited
    operations = edited.details.get("operations", [])
    applied = [r for r in operations if r.get("index") is not None]
    report = edited.report
    summary = "not checked" if report is None else report.summary().split(": ", 1)[-1]
    console.print(_verdict(edited.passed, f"{len(applied)} operation(s) applied; {summary}"))
    table = SafeTable(title="operations, in order", title_justify="left")
    table.add_column("#", kind="number", justify="right")
    table.add_column("op")
    table.add_column("what it did", kind="name")
    for r in operations:
        table.add_row(str(r["index"]) if r.get("index") is not None else "", r["op"], r["text"])
    console.print(table)
    checks = getattr(report, "checks", None)
    if checks:
        table = SafeTable(title="checks (these decide)", title_justify="left")
        table.add_column("check")
        table.add_column("result", no_wrap=True)
        table.add_column("message", kind="name")
        for c in checks:
            word, style = {True: ("pass", "green"), False: ("FAIL", "bold red")}.get(
                c.passed, ("not judged", "yellow")
            )
            table.add_row(c.name, shown(word, style), c.message)
        console.print(table)
        if not report.expect_same and not report.outputs_same and report.tensors:
            console.print(
                shown(
                    "the outputs below changed: expected for an edit that changes the model "
                    "(--expect-same makes it a failure)",
                    "dim",
                )
            )
    _footer(console, edited, outcome.output, outcome.written)
