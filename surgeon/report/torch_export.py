"""Rendering of :class:`surgeon.torch.ExportCheck`: the verdict, one row per input shape
tried, then the pitfalls with the PyTorch module they point at."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.text import Text

from surgeon.report import SafeTable, fmt, shown


def _shapes(shapes: dict) -> str:
    return ", ".join(f"{n}: {'x'.join(str(d) for d in s) or 'scalar'}" for n, s in shapes.items())


def render_export_check(console: Console, check) -> None:
    """Print an ExportCheck (the library returns it; this only draws it)."""
    console.print(shown(check.summary(), "bold green" if check.passed else "bold red"))
    table = SafeTable(
        title=f"ONNX ({check.exporter} export) vs PyTorch",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("run", no_wrap=True)
    table.add_column("input shapes", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("max abs", justify="right", no_wrap=True)
    for r in check.runs:
        if r.skipped:
            status, worst = shown("skipped", "yellow"), ""
        elif r.error:
            status, worst = shown("onnxruntime failed", "red"), ""
        else:
            ok = r.report.passed
            status = shown("ok" if ok else "differs", "green" if ok else "red")
            values = [t.max_abs for t in r.report.tensors if t.max_abs is not None]
            worst = fmt(max(values)) if values else ""
        table.add_row(r.label, _shapes(r.shapes), status, worst)
    console.print(table)
    for p in check.pitfalls:
        style = "red" if p.severity == "error" else "yellow"
        line = Text.assemble(shown(f"{p.severity}: ", style), shown(f"[{p.kind}] {p.message}"))
        if p.origin:
            line.append_text(shown(f" (PyTorch: {p.origin})", "cyan"))
        console.print(line)
    for note in check.notes:
        console.print(shown(note, "dim"))
    console.print(
        shown(
            f"export {check.export_seconds:.2f}s, check {check.check_seconds:.2f}s"
            + (f"; wrote {check.path}" if check.path else ""),
            "dim",
        )
    )
