"""Rendering of ``surgeon merge`` and ``surgeon nms`` results for a person."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from surgeon.report import SafeTable, render_diff, shown

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
    table = SafeTable(title=title, title_justify="left")
    table.add_column("kind")
    table.add_column("name", kind="name")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    for kind, items in (("input", inputs), ("output", outputs)):
        for t in items:
            table.add_row(kind, t["name"], t["dtype"] or "?", _shape(t["shape"]))
    return table


def _print_no_topk_check(console: Console, params: dict) -> None:
    """With --no-topk: the TopK-free graph's check against the TopK one."""
    if params.get("no_topk"):
        console.print(shown(f"--no-topk: TopK rewritten; {params['no_topk_check']}", "green"))


def render_nms(console: Console, info: dict) -> None:
    """What ``surgeon nms`` built."""
    p = info["params"]
    mode = (
        "class-agnostic"
        if p["agnostic"]
        else "best-class, per-class"
        if p.get("best_class")
        else "per-class"
    )
    what = "top-k (no NMS)" if p["layout"] == "detr" else f"{mode} NMS"
    console.print(
        shown(
            f"{p['layout']} head, {p['classes']} classes: {what}, iou > {p['iou']:g} suppresses, "
            f"score > {p['score']:g} kept, up to {p['max_det']} per image, {p['output_format']} outputs",
            "bold",
        )
    )
    console.print(io_table("inputs and outputs", info["inputs"], info["outputs"]))
    ops = ", ".join(f"{k} {v}" for k, v in info["op_types"].items())
    console.print(shown(f"{info['nodes']} nodes, opset {info['opset']}: {ops}", "dim"))
    _print_no_topk_check(console, p)
    if info.get("output"):
        console.print(shown(f"wrote {info['output']}", "green"))


def render_merge(console: Console, info: dict, report=None) -> None:
    """What ``surgeon merge`` connected, renamed and converted, then the verification."""
    title = f"merge {info['first']} + {info['second']}"
    if info.get("nms"):
        n = info["nms"]
        title += f" ({n['layout']} NMS, {n['classes']} classes, {n['output_format']} outputs)"
    console.print(shown(title, "bold"))
    _print_no_topk_check(console, info.get("nms") or {})
    console.print(shown(f"connected {_HOW.get(info['how'], info['how'])}:"))
    for c in info["connections"]:
        console.print(
            shown(f"  {c['output']} {c['output_type']}  ->  {c['input']} {c['input_type']}")
        )
    for name in info["shared_inputs"]:
        console.print(shown(f"  input {name} is shared by both models"))
    renamed = info["renamed"]
    for old, new in renamed["first"].items():
        console.print(
            shown(
                f"renamed {old} -> {new} in {info['first']} (an output of the merged model keeps the name)",
                "yellow",
            )
        )
    for old, new in renamed["second"].items():
        console.print(shown(f"renamed {old} -> {new} in {info['second']}", "yellow"))
    if renamed["second_nodes"]:
        console.print(
            shown(
                f"renamed {len(renamed['second_nodes'])} node(s) of {info['second']} that shared names",
                "yellow",
            )
        )
    o = info["opset"]
    if o["converted"]:
        which = info["first"] if o["converted"] == "first" else info["second"]
        console.print(
            shown(
                f"upgraded {which} from opset {min(o['first'], o['second'])} to {o['merged']}",
                "yellow",
            )
        )
    else:
        console.print(shown(f"opset {o['merged']}", "dim"))
    if info["kept_outputs"]:
        console.print(shown(f"kept outputs of {info['first']}: {', '.join(info['kept_outputs'])}"))
    console.print(io_table("merged model", info["inputs"], info["outputs"]))
    if report is not None:
        render_diff(console, report)
    else:
        console.print(shown("verification skipped (--no-verify)", "yellow"))
    if info.get("written"):
        console.print(shown(f"wrote {info['output']}", "green"))
    elif report is not None and not report.passed:
        console.print(
            shown(
                "nothing written: the merged model differs from the two models run in sequence",
                "red",
            )
        )
