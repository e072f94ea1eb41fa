"""Rendering of ``surgeon extract``, ``rename``, ``reshape-io`` and ``check-dynamic``.

Their JSON document (schema ``surgeon.edit/1``) is :class:`surgeon.outcomes.EditOutcome`'s.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console
from rich.table import Table
from rich.text import Text

from surgeon.report import SafeTable, diff_table, settings_text, shown


def _dims(shape) -> str:
    """``[batch, 3, 64, 64]`` (plain text: SafeTable and shown never read it as markup)."""
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _verdict(passed: bool, text: str) -> Text:
    return shown(("PASS: " if passed else "FAIL: ") + text, "bold green" if passed else "bold red")


def _footer(console: Console, edited, output: str | None, written: bool) -> None:
    report = edited.report
    rows = edited.details.get("value_rows")
    if report is not None and rows is not None:
        # reshape-io: the size rows are in the "sizes tried" table already.
        report = replace(report, tensors=report.tensors[:rows])
    if report is not None and report.tensors:
        console.print(diff_table(report))
        console.print(settings_text(report))
        for note in report.notes:
            console.print(shown("note: " + note, "yellow"))
    for note in edited.details.get("notes", []):
        if report is None or note not in report.notes:
            console.print(shown("note: " + note, "yellow"))
    if written:
        console.print(shown(f"wrote {output}", "bold"))
    elif output and not edited.passed:
        console.print(shown(f"not written: {output} (verification failed)", "red"))
    elif not output:
        console.print(shown("not written: no -o/--output given", "dim"))


def render_extract(console: Console, edited, output: str | None, written: bool) -> None:
    d = edited.details
    nodes = d["nodes"]
    total = nodes["kept"] + nodes["removed"]
    # A failed check must read as one: "FAIL: ... reproduces" would say the opposite.
    verb = "reproduces" if edited.passed else "does not reproduce"
    console.print(
        _verdict(
            edited.passed,
            f"subgraph of {nodes['kept']} of {total} nodes {verb} the original at "
            + ", ".join(f"`{o['name']}`" for o in d["outputs"])
            + ("" if edited.passed else ": " + edited.report.summary().removeprefix("FAIL: ")),
        )
    )
    table = SafeTable(title="boundary", title_justify="left")
    for col in ("", "tensor", "dtype", "shape", "from"):
        table.add_column(col, kind="name" if col in ("tensor", "from") else None, overflow="fold")
    for role in ("inputs", "outputs"):
        for t in d[role]:
            table.add_row(role[:-1], t["name"], t["dtype"] or "?", _dims(t["shape"]), t["source"])
    console.print(table)
    init = d["initializers"]
    console.print(shown(f"{init['kept']} initializers ({init['bytes']:,} bytes) kept", "dim"))
    if d.get("dropped_inputs"):
        console.print(
            shown(
                "unused outputs of the named input node(s), not made inputs: "
                + ", ".join(d["dropped_inputs"]),
                "dim",
            )
        )
    _footer(console, edited, output, written)


def render_rename(console: Console, edited, output: str | None, written: bool) -> None:
    d = edited.details
    count = len(d["tensors"]) + len(d["nodes"])
    console.print(
        _verdict(edited.passed, f"{count} name(s) changed; same values under the new names")
    )
    table = SafeTable(title="renamed", title_justify="left")
    for col in ("kind", "old", "new"):
        table.add_column(col, kind="name" if col != "kind" else None, overflow="fold")
    for t in d["tensors"]:
        table.add_row(t["role"], t["old"], t["new"])
    for n in d["nodes"]:
        table.add_row("node", n["old"], n["new"])
    console.print(table)
    _footer(console, edited, output, written)


def render_reshape_io(console: Console, edited, output: str | None, written: bool) -> None:
    d = edited.details
    dyn = d.get("dynamic")
    what = dyn["summary"].split(": ", 1)[-1] if dyn else "dims set (runtime check skipped)"
    console.print(_verdict(edited.passed, what))
    table = SafeTable(title="dims", title_justify="left")
    for col in ("", "tensor", "before", "after"):
        table.add_column(col, kind="name" if col == "tensor" else None, overflow="fold")
    for t in d["inputs"]:
        table.add_row("input", t["name"], _dims(t["old"]), _dims(t["new"]))
    for t in d["outputs"]:
        how = "" if t["given"] else " (as run)" if t.get("as_run") else " (inferred)"
        after = _dims(t["new"]) + how
        table.add_row("output", t["name"], _dims(t["old"]), after)
    console.print(table)
    vi = d["value_info"]
    console.print(
        shown(
            f"shape inference: {vi['refreshed']} value_info refreshed, {vi['added']} added, "
            f"{vi['cleared']} stale shapes cleared",
            "dim",
        )
    )
    if dyn:
        console.print(dynamic_table(dyn))
        if dyn.get("items"):
            console.print(items_table(dyn))
    _footer(console, edited, output, written)


def dynamic_table(check: dict) -> Table:
    """One row per size tried: did it run, and the output shapes against expectations."""
    table = SafeTable(title="sizes tried", title_justify="left")
    for col in ("sizes", "ran", "outputs", "problem"):
        table.add_column(col, overflow="fold")
    for case in check["cases"]:
        label = case["label"] + (f" ({case['varied']} varied)" if case["varied"] else "")
        if not case["ran"]:
            where = f"in node `{case['failed_node']}`: " if case["failed_node"] else ""
            table.add_row(label, shown("no", "red"), "-", where + (case["error"] or ""))
            continue
        shapes = ", ".join(f"{o['name']} {_dims(o['shape'])}" for o in case["outputs"])
        problems = "; ".join(f"{o['name']}: {o['problem']}" for o in case["outputs"] if not o["ok"])
        table.add_row(
            label,
            shown("yes", "green"),
            shapes,
            shown(problems or "ok", "red" if problems else "green"),
        )
    return table


def items_table(check: dict) -> Table:
    """One row per output per batch dim: item i of the batch run against item i alone."""
    tol = check["items"][0]["tolerance"]
    table = SafeTable(
        title=f"batch items, each against its batch-1 run (atol={tol['atol']:g} x "
        f"max(1, max|item|), rtol={tol['rtol']:g})",
        title_justify="left",
    )
    for col in ("batch", "output", "batch axis", "max abs", "problem"):
        table.add_column(col, overflow="fold")
    for item in check["items"]:
        label = f"{item['dim']}={item['size']}"
        if item["error"]:
            table.add_row(label, "-", "-", "-", shown(item["error"], "red"))
        for o in item["outputs"]:
            axis = "-" if o["batch_axis"] is None else str(o["batch_axis"])
            worst = "-" if o["max_abs"] is None else f"{o['max_abs']:.3g}"
            style = "green" if o["ok"] else "red"
            table.add_row(label, o["name"], axis, worst, shown(o["problem"] or "ok", style))
    return table


def render_check_dynamic(console: Console, check: dict) -> None:
    passed = check["passed"]
    console.print(shown(check["summary"], "bold green" if passed else "bold red"))
    dims = SafeTable(title="dynamic dims", title_justify="left")
    for col in ("dim", "where", "kind", "sizes"):
        dims.add_column(col, overflow="fold")
    for d in check["dims"]:
        sizes = ", ".join(str(v) for v in d["values"])
        if d["export"]:
            sizes += f" (export {d['export']})"
        dims.add_row(d["name"], ", ".join(d["axes"]), d["kind"], sizes)
    if check["dims"]:
        console.print(dims)
    console.print(dynamic_table(check))
    if check.get("items"):
        console.print(items_table(check))
    for s in check["suspects"]:
        console.print(shown("suspect: " + s["message"], "yellow"))
    for note in check["notes"]:
        console.print(shown("note: " + note, "yellow"))
    console.print(shown(f"{check['model']} · seed={check['seed']}", "dim"))
