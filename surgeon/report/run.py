"""Rendering of ``surgeon run`` (the table of steps) and ``surgeon recipes``."""

from __future__ import annotations

from rich import box
from rich.console import Console

from surgeon.report import SafeTable, shown


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def render_run(console: Console, result) -> None:
    style = "bold green" if result.passed else "bold red"
    if result.error:
        verdict = f"FAIL: {result.error}"
    elif result.passed:
        verdict = (
            f"PASS: recipe {result.recipe}: {len(result.steps)} step(s), every verification passed"
        )
    else:
        failed = [s for s in result.steps if not s.passed]
        # An edit fails its verification; a check step (a debug report) finds a problem.
        how = " and ".join(
            what
            for what, kind in (("failed verification", "edit"), ("found a problem", "check"))
            if any(getattr(s, "kind", "edit") == kind for s in failed)
        )
        verdict = f"FAIL: recipe {result.recipe}: {len(failed)} of {len(result.steps)} step(s) {how or 'failed'}"
    console.print(shown(verdict, style))
    table = SafeTable(
        title=f"recipe {result.recipe}" + (f" ({_params(result.params)})" if result.params else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right", kind="number")
    table.add_column("edit", no_wrap=True)
    table.add_column("parameters", kind="name", ratio=1)
    table.add_column("verification", overflow="fold", ratio=1)
    table.add_column("time", justify="right", kind="number")
    for s in result.steps:
        table.add_row(
            str(s.index),
            s.edit,
            _params(s.params),
            shown(s.summary, "green" if s.passed else "red"),
            f"{s.seconds:.2f}s",
        )
    console.print(table)
    console.print(shown(f"total {result.seconds:.2f}s", "dim"))


def render_recipes(console: Console, rows: list[dict]) -> None:
    table = SafeTable(
        title="built-in recipes (surgeon run NAME MODEL -o OUT)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("name", no_wrap=True)
    table.add_column("what it does", overflow="fold", ratio=2)
    table.add_column("takes", overflow="fold", ratio=1)
    table.add_column("writes", overflow="fold", ratio=1)
    table.add_column("parameters", kind="name", ratio=1)
    for r in rows:
        params = ", ".join(
            f"{k}" + ("" if p["required"] else f"={p['default']!r}") for k, p in r["params"].items()
        )
        takes = r.get("takes", "one or more models")  # rows from older callers
        table.add_row(r["name"], r["summary"], takes, _writes(r.get("outputs")), params)
    console.print(table)


def _writes(outputs) -> str:
    """What `-o` gets: a report only, one OUT.onnx, or FOLDER/<name>.onnx for each."""
    if outputs is None:
        return "-o OUT.onnx or FOLDER/"
    if not outputs:
        return "a report (no -o)"
    if len(outputs) == 1:
        return f"-o OUT.onnx ({outputs[0]})"
    return "-o FOLDER/: " + ", ".join(f"{o}.onnx" for o in outputs)
