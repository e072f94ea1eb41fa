"""Rendering of ``surgeon extract``, ``rename``, ``reshape-io`` and ``check-dynamic``,
and the JSON document the edit commands emit.

Every edit command prints one document (schema ``surgeon.edit/1``) with ``--json``::

    schema, edit, model, output, written, passed, params, details, verification

``details`` is the edit's own (see each command's help); ``verification`` is the
DiffReport (schema ``surgeon.diff/1``) or null when verification was skipped.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from surgeon.report import diff_table, settings_text

EDIT_SCHEMA = "surgeon.edit/1"


def edit_document(edited, model_path: str, output: str | None, written: bool) -> dict:
    """The JSON document of an edit command (stable keys, see the module docstring)."""
    return {
        "schema": EDIT_SCHEMA,
        "edit": edited.edit,
        "model": str(model_path),
        "output": str(output) if output else None,
        "written": written,
        "passed": edited.passed,
        "params": edited.params,
        "details": edited.details,
        "verification": edited.report.to_dict() if edited.report is not None else None,
    }


def _dims(shape) -> str:
    """``[batch, 3, 64, 64]``, escaped: rich would read the brackets as markup."""
    if shape is None:
        return "?"
    return escape("[" + ", ".join("?" if d is None else str(d) for d in shape) + "]")


def _verdict(passed: bool, text: str) -> Text:
    return Text(
        ("PASS: " if passed else "FAIL: ") + text, style="bold green" if passed else "bold red"
    )


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
            console.print(Text("note: " + note, style="yellow"))
    for note in edited.details.get("notes", []):
        if report is None or note not in report.notes:
            console.print(Text("note: " + note, style="yellow"))
    if written:
        console.print(Text(f"wrote {output}", style="bold"))
    elif output and not edited.passed:
        console.print(Text(f"not written: {output} (verification failed)", style="red"))
    elif not output:
        console.print(Text("not written: no -o/--output given", style="dim"))


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
    table = Table(title="boundary", title_justify="left")
    for col in ("", "tensor", "dtype", "shape", "from"):
        table.add_column(col, overflow="fold")
    for role in ("inputs", "outputs"):
        for t in d[role]:
            table.add_row(
                role[:-1], escape(t["name"]), t["dtype"] or "?", _dims(t["shape"]), t["source"]
            )
    console.print(table)
    init = d["initializers"]
    console.print(Text(f"{init['kept']} initializers ({init['bytes']:,} bytes) kept", style="dim"))
    if d.get("dropped_inputs"):
        console.print(
            Text(
                "unused outputs of the named input node(s), not made inputs: "
                + ", ".join(d["dropped_inputs"]),
                style="dim",
            )
        )
    _footer(console, edited, output, written)


def render_rename(console: Console, edited, output: str | None, written: bool) -> None:
    d = edited.details
    count = len(d["tensors"]) + len(d["nodes"])
    console.print(
        _verdict(edited.passed, f"{count} name(s) changed; same values under the new names")
    )
    table = Table(title="renamed", title_justify="left")
    for col in ("kind", "old", "new"):
        table.add_column(col, overflow="fold")
    for t in d["tensors"]:
        table.add_row(t["role"], escape(t["old"]), escape(t["new"]))
    for n in d["nodes"]:
        table.add_row("node", escape(n["old"]), escape(n["new"]))
    console.print(table)
    _footer(console, edited, output, written)


def render_reshape_io(console: Console, edited, output: str | None, written: bool) -> None:
    d = edited.details
    dyn = d.get("dynamic")
    what = dyn["summary"].split(": ", 1)[-1] if dyn else "dims set (runtime check skipped)"
    console.print(_verdict(edited.passed, what))
    table = Table(title="dims", title_justify="left")
    for col in ("", "tensor", "before", "after"):
        table.add_column(col, overflow="fold")
    for t in d["inputs"]:
        table.add_row("input", escape(t["name"]), _dims(t["old"]), _dims(t["new"]))
    for t in d["outputs"]:
        after = _dims(t["new"]) + ("" if t["given"] else " (inferred)")
        table.add_row("output", escape(t["name"]), _dims(t["old"]), after)
    console.print(table)
    vi = d["value_info"]
    console.print(
        Text(
            f"shape inference: {vi['refreshed']} value_info refreshed, {vi['added']} added, "
            f"{vi['cleared']} stale shapes cleared",
            style="dim",
        )
    )
    if dyn:
        console.print(dynamic_table(dyn))
    _footer(console, edited, output, written)


def dynamic_table(check: dict) -> Table:
    """One row per size tried: did it run, and the output shapes against expectations."""
    table = Table(title="sizes tried", title_justify="left")
    for col in ("sizes", "ran", "outputs", "problem"):
        table.add_column(col, overflow="fold")
    for case in check["cases"]:
        label = case["label"] + (f" ({case['varied']} varied)" if case["varied"] else "")
        if not case["ran"]:
            where = f"in node `{case['failed_node']}`: " if case["failed_node"] else ""
            table.add_row(
                escape(label), Text("no", style="red"), "-", escape(where + (case["error"] or ""))
            )
            continue
        shapes = ", ".join(f"{escape(o['name'])} {_dims(o['shape'])}" for o in case["outputs"])
        problems = "; ".join(f"{o['name']}: {o['problem']}" for o in case["outputs"] if not o["ok"])
        table.add_row(
            escape(label),
            Text("yes", style="green"),
            shapes,
            Text(problems or "ok", style="red" if problems else "green"),
        )
    return table


def render_check_dynamic(console: Console, check: dict) -> None:
    passed = check["passed"]
    console.print(Text(check["summary"], style="bold green" if passed else "bold red"))
    dims = Table(title="dynamic dims", title_justify="left")
    for col in ("dim", "where", "kind", "sizes"):
        dims.add_column(col, overflow="fold")
    for d in check["dims"]:
        sizes = ", ".join(str(v) for v in d["values"])
        if d["export"]:
            sizes += f" (export {d['export']})"
        dims.add_row(escape(d["name"]), escape(", ".join(d["axes"])), d["kind"], sizes)
    if check["dims"]:
        console.print(dims)
    console.print(dynamic_table(check))
    for s in check["suspects"]:
        console.print(Text("suspect: " + s["message"], style="yellow"))
    for note in check["notes"]:
        console.print(Text("note: " + note, style="yellow"))
    console.print(Text(f"{check['model']} · seed={check['seed']}", style="dim"))
