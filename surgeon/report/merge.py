"""Rendering of ``surgeon merge`` and ``surgeon nms`` results for a person."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from surgeon.report import render_diff

_HOW = {
    "map": "as mapped",
    "names": "by equal names",
    "single": "the single output to the single input",
}


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def io_table(title: str, inputs: list[dict], outputs: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("kind")
    table.add_column("name", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    for kind, items in (("input", inputs), ("output", outputs)):
        for t in items:
            table.add_row(kind, escape(t["name"]), t["dtype"] or "?", escape(_shape(t["shape"])))
    return table


def render_nms(console: Console, info: dict) -> None:
    """What ``surgeon nms`` built."""
    p = info["params"]
    mode = "class-agnostic" if p["agnostic"] else "per-class"
    what = "top-k (no NMS)" if p["layout"] == "detr" else f"{mode} NMS"
    console.print(
        Text(
            f"{p['layout']} head, {p['classes']} classes: {what}, iou > {p['iou']:g} suppresses, "
            f"score > {p['score']:g} kept, up to {p['max_det']} per image, {p['output_format']} outputs",
            style="bold",
        )
    )
    console.print(io_table("inputs and outputs", info["inputs"], info["outputs"]))
    ops = ", ".join(f"{k} {v}" for k, v in info["op_types"].items())
    console.print(Text(f"{info['nodes']} nodes, opset {info['opset']}: {ops}", style="dim"))
    if info.get("output"):
        console.print(Text(f"wrote {info['output']}", style="green"))


def render_merge(console: Console, info: dict, report=None) -> None:
    """What ``surgeon merge`` connected, renamed and converted, then the verification."""
    title = f"merge {info['first']} + {info['second']}"
    if info.get("nms"):
        n = info["nms"]
        title += f" ({n['layout']} NMS, {n['classes']} classes, {n['output_format']} outputs)"
    console.print(Text(title, style="bold"))
    console.print(f"connected {_HOW.get(info['how'], info['how'])}:")
    for c in info["connections"]:
        console.print(
            Text(f"  {c['output']} {c['output_type']}  ->  {c['input']} {c['input_type']}")
        )
    for name in info["shared_inputs"]:
        console.print(Text(f"  input {name} is shared by both models"))
    renamed = info["renamed"]
    for old, new in renamed["first"].items():
        console.print(
            Text(
                f"renamed {old} -> {new} in {info['first']} (an output of the merged model keeps the name)",
                style="yellow",
            )
        )
    for old, new in renamed["second"].items():
        console.print(Text(f"renamed {old} -> {new} in {info['second']}", style="yellow"))
    if renamed["second_nodes"]:
        console.print(
            Text(
                f"renamed {len(renamed['second_nodes'])} node(s) of {info['second']} that shared names",
                style="yellow",
            )
        )
    o = info["opset"]
    if o["converted"]:
        which = info["first"] if o["converted"] == "first" else info["second"]
        console.print(
            Text(
                f"upgraded {which} from opset {min(o['first'], o['second'])} to {o['merged']}",
                style="yellow",
            )
        )
    else:
        console.print(Text(f"opset {o['merged']}", style="dim"))
    if info["kept_outputs"]:
        console.print(Text(f"kept outputs of {info['first']}: {', '.join(info['kept_outputs'])}"))
    console.print(io_table("merged model", info["inputs"], info["outputs"]))
    if report is not None:
        render_diff(console, report)
    else:
        console.print(Text("verification skipped (--no-verify)", style="yellow"))
    if info.get("written"):
        console.print(Text(f"wrote {info['output']}", style="green"))
    elif report is not None and not report.passed:
        console.print(
            Text(
                "nothing written: the merged model differs from the two models run in sequence",
                style="red",
            )
        )
