"""Rendering of ``surgeon rewrite`` (and ``surgeon rewrite --list``) for a person.

The JSON documents are :class:`surgeon.commands.rewrite.RewriteOutcome` (``surgeon.edit/1``)
and :class:`surgeon.commands.rewrite.RuleListing` (``surgeon.rewrite-rules/1``).
"""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, shown
from surgeon.report.edits import _footer, _verdict
from surgeon.report.surgery import _op_table, _summary


def render_rewrite(console: Console, outcome) -> None:
    edited = outcome.edited
    d = edited.details
    nodes = d["nodes"]
    exact = all(r["exact"] for r in d["rules"])
    same = "outputs unchanged" if edited.passed else "outputs CHANGED"
    if edited.passed and d.get("bit_identical"):
        same += ", bit-identical"
    console.print(
        _verdict(
            edited.passed,
            f"{len(d['rewritten'])} node(s) rewritten, {nodes['before']} -> {nodes['after']} "
            f"nodes, {same}" + ("" if edited.report is None else f" ({_summary(edited.report)})"),
        )
    )
    table = SafeTable(title="rewritten", title_justify="left")
    for col in ("rule", "node", "op", "what", "nodes"):
        table.add_column(col, kind="name" if col == "node" else None, overflow="fold")
    for r in d["rewritten"]:
        table.add_row(
            r["rule"],
            r["node"] or r["output"],
            r["op"],
            r["what"],
            f"{r['replaced']} -> {r['added']}",
        )
    console.print(table)
    _op_table(console, d["op_types"])
    if not exact:
        console.print(
            shown(
                "rules that compute in another order of floating-point operations are "
                "verified within the tolerance, not bit for bit",
                "dim",
            )
        )
    _footer(console, edited, outcome.output, outcome.written)


def render_rules(console: Console, listing) -> None:
    table = SafeTable(title="rewrite rules", title_justify="left")
    for col in ("rule", "exact", "what it does"):
        table.add_column(col, overflow="fold")
    for r in listing.rules:
        table.add_row(
            r["name"], "bit-identical" if r["exact"] else "within tolerance", r["summary"]
        )
    console.print(table)
    console.print(
        shown(
            "your own: --rule path/to/my_rule.py:MyRule (see the README, `surgeon rewrite`)", "dim"
        )
    )
