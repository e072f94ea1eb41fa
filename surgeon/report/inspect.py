"""Rendering of ``surgeon inspect``."""

from __future__ import annotations

from rich.console import Console

from surgeon.report import SafeTable, shown


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_inspect(console: Console, info: dict) -> None:
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    producer = (
        " ".join(x for x in (info["producer"]["name"], info["producer"]["version"]) if x)
        or "unknown"
    )
    console.print(shown(info["file"] or info["graph_name"] or "model", "bold"))
    console.print(shown(f"IR version {info['ir_version']} · opsets {opsets} · producer {producer}"))
    p = info["parameters"]
    nodes = f"{info['nodes']} nodes"
    if info["nodes_including_subgraphs"] != info["nodes"]:  # If/Loop/Scan bodies
        nodes += f" ({info['nodes_including_subgraphs']} with those in subgraphs)"
    console.print(shown(f"{nodes} · {p['count']:,} parameters ({_bytes(p['bytes'])})"))
    io = SafeTable(title="inputs and outputs", title_justify="left")
    io.add_column("kind")
    io.add_column("name", kind="name")
    io.add_column("dtype")
    io.add_column("shape", no_wrap=True)
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            io.add_row(kind[:-1], t["name"], t["dtype"] or "?", _shape(t["shape"]))
    console.print(io)
    ops = SafeTable(title="op types", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right", kind="number")
    for op, n in info["op_types"].items():
        ops.add_row(op, str(n))
    console.print(ops)
    if info["initializers_as_inputs"]:
        console.print(
            shown(
                f"{len(info['initializers_as_inputs'])} initializer(s) are also listed as graph "
                "inputs (old exporter style)"
            )
        )
    if info["custom_domains"]:
        console.print(
            shown(
                "custom domains: "
                + ", ".join(f"{d} ({n} nodes)" for d, n in info["custom_domains"].items())
                + "; onnxruntime needs --custom-op-library to run them",
                "yellow",
            )
        )
    if info["external_data"]:
        console.print(shown("external data: " + ", ".join(info["external_data"])))
    for node in info["subgraph_nodes"]:
        for sub in node["subgraphs"]:
            reads = ", ".join(sub["outer_scope_reads"]) or "nothing"
            console.print(
                shown(
                    f"subgraph: {node['node'] or '?'} ({node['op']}).{sub['attribute']}: "
                    f"{sub['nodes']} nodes, reads {reads} from the outer scope"
                    + (f" (from {node['origin']})" if node.get("origin") else "")
                )
            )
    torch_info = info.get("pytorch")
    if torch_info:
        examples = "; ".join(f"{k} = {v}" for k, v in list(torch_info["examples"].items())[:3])
        console.print(
            shown(
                f"PyTorch export ({torch_info['exporter']}): {torch_info['nodes_with_origin']} "
                f"nodes map to {torch_info['modules']} modules, e.g. {examples}"
            )
        )
    if info["functions"]:
        console.print(shown("local functions: " + ", ".join(info["functions"])))
    if info["metadata"]:
        meta = SafeTable(title="metadata", title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in info["metadata"].items():
            meta.add_row(k, v if len(v) < 200 else v[:200] + "…")
        console.print(meta)
    if info["history"]:
        hist = SafeTable(title="edit history (surgeon provenance)", title_justify="left")
        hist.add_column("#", justify="right")
        hist.add_column("edit")
        hist.add_column("parameters", overflow="fold")
        hist.add_column("surgeon")
        for i, rec in enumerate(info["history"], 1):
            params = ", ".join(f"{k}={v}" for k, v in (rec.get("params") or {}).items())
            hist.add_row(str(i), str(rec.get("edit")), params, str(rec.get("surgeon", "")))
        console.print(hist)


def render_names(console: Console, info: dict) -> None:
    """``surgeon inspect --names``: the tensors and nodes whose names match the glob."""
    names = info["names"]
    pattern = names["pattern"]
    console.print(shown(info["file"] or info["graph_name"] or "model", "bold"))
    tensors = SafeTable(
        title=f"tensors matching '{pattern}' ({len(names['tensors'])}; graph inputs and node "
        "outputs, weights not listed)",
        title_justify="left",
    )
    tensors.add_column("tensor", kind="name")
    tensors.add_column("produced by", kind="name")
    tensors.add_column("op")
    tensors.add_column("dtype")
    tensors.add_column("shape", kind="name")
    for t in names["tensors"]:
        producer = "(graph input)" if t["op"] is None else t["node"] or "(unnamed node)"
        tensors.add_row(t["name"], producer, t["op"] or "", t["dtype"] or "?", _shape(t["shape"]))
    nodes = SafeTable(
        title=f"nodes matching '{pattern}' ({len(names['nodes'])})", title_justify="left"
    )
    nodes.add_column("node", kind="name")
    nodes.add_column("op")
    nodes.add_column("inputs", kind="name")
    nodes.add_column("outputs", kind="name")
    for n in names["nodes"]:
        nodes.add_row(n["name"], n["op"], ", ".join(n["inputs"]), ", ".join(n["outputs"]))
    if names["tensors"]:
        console.print(tensors)
    if names["nodes"]:
        console.print(nodes)
    if not names["tensors"] and not names["nodes"]:
        console.print(
            shown(
                f"no node or tensor name matches '{pattern}' (globs are case-sensitive)", "yellow"
            )
        )
