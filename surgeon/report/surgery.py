"""Rendering of ``surgeon fold`` and ``surgeon convert`` for a person.

Their JSON document is the edit document (:class:`surgeon.outcomes_surgery.FoldOutcome`).
"""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, shown
from surgeon.report.edits import _footer, _verdict


def render_fold(console: Console, outcome) -> None:
    edited = outcome.edited
    d = edited.details
    nodes, inits = d["nodes"], d["initializers"]
    same = "outputs unchanged" if edited.passed else "outputs CHANGED"
    console.print(
        _verdict(
            edited.passed,
            f"{nodes['before']} -> {nodes['after']} nodes, {same}"
            + ("" if edited.report is None else f" ({_summary(edited.report)})"),
        )
    )
    for name, value in d["bound"].items():
        console.print(
            shown(
                f"input `{name}` is now the constant {value!r}: the folded model no longer takes "
                "it (its value came from --feeds)",
                "bold yellow",
            )
        )
    _op_table(console, d["op_types"])
    console.print(
        shown(
            f"initializers: {inits['before']} ({inits['bytes_before']:,} bytes) -> "
            f"{inits['after']} ({inits['bytes_after']:,} bytes); {len(inits['removed'])} "
            f"removed, {len(inits['deduplicated'])} duplicates merged; {d['passes']} fold pass(es)",
            "dim",
        )
    )
    for r in d["dtype_repairs"]:
        console.print(
            shown(f"dtype repaired: `{r['tensor']}` folded to {r['from']}, cast back to {r['to']}")
        )
    left = d["shape_ops_left"]
    if left:
        table = SafeTable(title=f"{len(left)} Shape op(s) left", title_justify="left")
        table.add_column("node", kind="name", overflow="fold")
        table.add_column("why it could not be folded", overflow="fold")
        for s in left:
            table.add_row(s["node"], s["why"])
        console.print(table)
    else:
        console.print(shown("no Shape op left", "dim"))
    _footer(console, edited, outcome.output, outcome.written)


def render_convert(console: Console, outcome) -> None:
    edited = outcome.edited
    d = edited.details
    same = "outputs unchanged" if edited.passed else "outputs CHANGED"
    console.print(
        _verdict(
            edited.passed,
            f"opset {d['from']} -> {d['to']}, {same}"
            + ("" if edited.report is None else f" ({_summary(edited.report)})"),
        )
    )
    ir = d["ir_version"]
    console.print(
        shown(
            f"{d['nodes_kept']} node(s) kept as they are, {d['nodes_adapted']} adapted "
            f"({d.get('nodes_rewritten', 0)} by surgeon's own rewrites, the others by onnx's "
            f"converter from {d['probes']} distinct probe(s)); "
            f"IR version {ir['before']} -> {ir['after']}",
            "dim",
        )
    )
    _op_table(console, d["op_types"])
    _footer(console, edited, outcome.output, outcome.written)


def _op_table(console: Console, op_types: dict) -> None:
    table = SafeTable(title="nodes by op type (changed)", title_justify="left")
    for col in ("op", "before", "after"):
        table.add_column(
            col,
            kind="name" if col == "op" else "number",
            justify="left" if col == "op" else "right",
        )
    for op, c in op_types.items():
        if c["before"] != c["after"]:
            table.add_row(op, str(c["before"]), str(c["after"]))
    if table.row_count:
        console.print(table)


def _summary(report) -> str:
    """The report's one line without its PASS/FAIL word (the verdict line has one)."""
    return report.summary().removeprefix("PASS: ").removeprefix("FAIL: ")
