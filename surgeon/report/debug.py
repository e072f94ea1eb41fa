"""Rendering of ``surgeon debug`` on a terminal: the verdict first, then the tables."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.text import Text

from surgeon.report import SafeTable, diff_table, fmt, shown, taller_than_terminal

# Why a flagged NaN/Inf is there (see surgeon.debugging.NonFinite): shown beside the flag.
KIND_LABELS = {
    "born": "born here",
    "unknown": "inputs not tapped",
    "inherited": "from an input",
    "input": "user input",
    "constant": "deliberate constant",
    "weights": "NaN from a constant",
}


def flags_text(flags, kind: str | None) -> str:
    """The flags of a tapped tensor, with where its NaN/Inf comes from."""
    text = ", ".join(flags)
    if kind in KIND_LABELS and any(f in ("nan", "inf") for f in flags):
        text += f" ({KIND_LABELS[kind]})"
    return text


def layer_status(layer, root: str | None) -> str:
    """``ok``, ``diverged``, ``ROOT CAUSE``, or the kind of misfit (``shape``, ``dtype``,
    ``missing``) when the tensor cannot be compared value by value."""
    d = layer.diff
    misfit = d.status not in ("ok", "mismatch")
    if d.name == root:
        return "ROOT CAUSE" + (f" ({d.status})" if misfit else "")
    if misfit:
        return d.status
    return "diverged" if layer.diverged else "ok"


def _own_error(layer) -> str:
    """The isolated max abs error of a compared tensor's node ("-" when it was not run on
    the reference's values), marked when beyond tolerance."""
    d = getattr(layer, "isolated", None)
    if d is None:
        return "-"
    return fmt(d.max_abs) + (" !" if not d.passed else "")


def other_roots_text(roots, isolated: bool = False) -> str:
    """The other root-cause candidates, saying as much as their check shows."""
    if isolated:
        return (
            "other nodes whose own error is beyond tolerance (worst first): "
            + ", ".join(f"`{r.node}` ({r.op})" for r in roots[:5])
            + (f" and {len(roots) - 5} more" if len(roots) > 5 else "")
        )
    return (
        "other nodes that diverge while none of their compared inputs does: "
        + ", ".join(
            f"`{r.node}` ({r.op})" + (" (inputs not compared)" if r.evidence_rank == 2 else "")
            for r in roots[:5]
        )
        + (f" and {len(roots) - 5} more" if len(roots) > 5 else "")
    )


def uncompared_hint(report) -> str:
    """How to check the root cause's inputs that had no reference value (the verdict
    already says they were not compared); empty when there are none."""
    names = getattr(report, "uncompared_inputs", [])
    if not names:
        return ""
    shown_names = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"to check the root cause's input(s) {shown_names}, give the reference values for "
        "them (tap them in the reference model, or save them in the activations .npz)"
    )


def reference_feeds_text(report) -> str:
    """Where each input of a reference model came from, when one is not simply the
    model's input of the same name; empty otherwise."""
    fed = getattr(report, "reference_feeds", {}) or {}
    if all(how == f"model input `{name}`" for name, how in fed.items()):
        return ""
    return "reference inputs: " + ", ".join(f"{name} <- {how}" for name, how in fed.items())


def percent(x, digits: int = 0) -> str:
    """A fraction as a percentage; ``-`` when not measured, ``nan`` when undefined."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return fmt(x)
    return f"{x:.{digits}%}"


def feeds_text(feeds: dict) -> str:
    """``name: dtype[shape]`` for each feed (sequences and optionals have no shape)."""

    def one(name: str, d: dict) -> str:
        shape = d.get("shape")
        return f"{name}: {d.get('dtype')}" + (
            f"[{'x'.join(map(str, shape))}]" if shape is not None else ""
        )

    return ", ".join(one(k, d) for k, d in feeds.items())


def _bar(value: float | None, lo: float, hi: float, width: int = 12) -> str:
    """A text bar of log10(value) between lo and hi: how the error grows along the graph."""
    if value is None or not math.isfinite(value) or value <= 0:
        return "" if value is None or value == 0 else "█" * width
    x = (math.log10(value) - lo) / (hi - lo) if hi > lo else 1.0
    n = max(1, min(width, round(x * width)))
    return "█" * n


def _short_dtype(dtype: str | None) -> str:
    if dtype is None:
        return "?"
    for long, short in (("float", "f"), ("bfloat", "bf"), ("uint", "u"), ("int", "i")):
        if dtype.startswith(long) and dtype[len(long) :].isdigit():
            return short + dtype[len(long) :]
    return dtype


def _rows(items, rows: int, keep) -> list:
    if rows == 0 or len(items) <= rows:
        return list(items)
    head = list(items[:rows])
    return head + [it for it in items[rows:] if keep(it)]


def body_lines(report) -> list[tuple[str, str]]:
    """What the taps inside If/Loop/Scan bodies gave (see surgeon.debugging.bodies): how
    many ran, which did not (branch not taken), and the worst iteration of Loop/Scan
    taps (non-finite ones first). Lines with their style."""
    taps = (getattr(report, "bodies", None) or {}).get("taps", [])
    if not taps:
        return []
    idle = [b["name"] for b in taps if not b["executed"]]
    lines = [
        (
            f"inside If/Loop/Scan bodies: {len(taps) - len(idle)} of {len(taps)} tapped tensors "
            "ran (named <node>/<branch or body>/<tensor>)"
            + (
                f"; not executed (branch not taken, or no iteration): {_names(idle)}"
                if idle
                else ""
            ),
            "dim",
        )
    ]
    looped = [b for b in taps if b["worst_iteration"] is not None]
    # non-finite first (in graph order), then the largest absolute values
    peak = {s.name: _peak(s) for s in report.stats}
    looped.sort(key=lambda b: (b["worst_reason"] != "non-finite", -peak.get(b["name"], 0.0)))
    if looped:
        shown_taps = ", ".join(
            f"{b['name']} at {_iteration(b['worst_iteration'])} ({b['worst_reason']})"
            for b in looped[:3]
        )
        more = f"; {len(looped) - 3} more in --json" if len(looped) > 3 else ""
        lines.append(
            (
                f"{len(looped)} Loop/Scan tap(s): statistics over all iterations; worst "
                f"iteration: {shown_taps}{more}",
                "yellow" if looped[0]["worst_reason"] == "non-finite" else "dim",
            )
        )
    return lines


def _peak(stats) -> float:
    values = [abs(float(v)) for v in (stats.min, stats.max) if v is not None]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0)


def _names(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _iteration(index: list[int]) -> str:
    return f"iteration {index[0]}" if len(index) == 1 else f"iteration {tuple(index)}"


def render_debug(console: Console, report, rows: int = 40) -> None:
    style = "bold green" if report.passed else "bold red"
    console.print(shown(report.verdict(), style))
    tall = False  # a table taller than the terminal: the verdict is repeated at the end
    if report.tap_check is not None and not report.tap_check.passed:
        console.print(diff_table(report.tap_check))

    if report.layers:
        errs = [layer.diff.max_abs for layer in report.layers if layer.diff.max_abs]
        finite = [e for e in errs if e and math.isfinite(e) and e > 0]
        lo = math.log10(min(finite)) if finite else 0.0
        hi = math.log10(max(finite)) if finite else 1.0
        table = SafeTable(
            title=f"layer-wise comparison against {report.reference}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("#", justify="right", kind="number")
        table.add_column("tensor (node, op)", kind="name", ratio=1, min_width=16)
        isolated = getattr(report, "precision", None) is not None
        cols = ("status", "max abs", "own error", "max rel", "cosine", "mismatch", "error growth")
        for col in cols if isolated else [c for c in cols if c != "own error"]:
            numeric = col not in ("status", "error growth")
            table.add_column(
                col,
                justify="right" if numeric else "left",
                kind="number" if numeric else None,
                # "ROOT CAUSE (shape)" may wrap rather than squeeze the tensor names out
                no_wrap=col != "status",
                min_width=10 if col == "status" else None,
            )
        root = report.root_cause.diff.name if report.root_cause else None
        rows_shown = _rows(
            report.layers, rows, lambda layer: layer.diverged and layer.diff.name == root
        )
        for layer in rows_shown:
            d = layer.diff
            status = layer_status(layer, root)
            label = Text.assemble(shown(d.name), shown(f" ({layer.node}, {layer.op})", "dim"))
            table.add_row(
                str(layer.index),
                label,
                shown(
                    status,
                    "bold red" if d.name == root else ("red" if layer.diverged else "green"),
                ),
                fmt(d.max_abs),
                *([_own_error(layer)] if isolated else []),
                fmt(d.max_rel),
                fmt(d.cosine, 6),
                f"{d.mismatches}/{d.size}",
                _bar(d.max_abs, lo, hi) if d.status in ("ok", "mismatch") else "",
            )
        tall = tall or taller_than_terminal(console, table)
        console.print(table)
        if len(rows_shown) < len(report.layers):
            console.print(
                shown(
                    f"{len(report.layers) - len(rows_shown)} more rows: --rows 0 shows all; --json or --html has everything",
                    "dim",
                )
            )
        if isolated:
            from surgeon.debugging.isolation import pairing_text

            console.print(shown(pairing_text(report.precision), "dim"))
        if report.other_roots:
            console.print(shown(other_roots_text(report.other_roots, isolated)))
        hint = uncompared_hint(report)
        if hint:
            console.print(shown(hint, "yellow"))
        if report.unmatched:
            console.print(
                shown(
                    f"{len(report.unmatched)} tapped tensor(s) have no reference value (not compared)",
                    "dim",
                )
            )
    unused = getattr(report, "unused_reference", [])
    if unused:
        names = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        console.print(
            shown(
                f"{len(unused)} reference value(s) matched no tapped tensor (not compared): {names}",
                "yellow",
            )
        )
    fed = reference_feeds_text(report)
    if fed:
        console.print(shown(fed, "dim"))
    for note in getattr(report, "notes", []):
        console.print(shown("note: " + note, "yellow"))

    table = SafeTable(
        title="tapped tensors (topological order)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right", kind="number")
    table.add_column("tensor (op)", kind="name", ratio=1, min_width=16)
    # A narrow terminal drops mean and std (JSON and HTML keep them); a pipe is wide.
    narrow = console.width < 110
    cols = (
        ("shape", "min", "max", "nan/inf", "zeros", "flags")
        if narrow
        else ("shape", "min", "max", "mean", "std", "nan/inf", "zeros", "flags")
    )
    for col in cols:
        numeric = col not in ("shape", "flags")
        table.add_column(
            col,
            justify="right" if numeric else "left",
            kind="number" if numeric else "name" if col == "flags" else None,
            no_wrap=col == "shape",
        )
    kinds = {x.tensor: x.kind for x in getattr(report, "nonfinite", [])}
    rows_shown = _rows(
        report.stats,
        rows if not report.layers else min(rows, 15) if rows else 0,
        lambda s: bool(s.flags),
    )
    for s in rows_shown:
        label = Text.assemble(shown(s.name), shown(f" ({s.op})", "dim"))
        shape = "x".join(map(str, s.shape)) if s.shape is not None else "?"
        cells = [
            str(s.index),
            label,
            f"{_short_dtype(s.dtype)}[{shape}]",
            fmt(s.min, 2),
            fmt(s.max, 2),
        ]
        if not narrow:
            cells += [fmt(s.mean, 2), fmt(s.std, 2)]
        kind = kinds.get(s.name)
        flag_style = (
            "red" if kind in ("born", "unknown", "weights") else "yellow" if s.flags else ""
        )
        cells += [
            f"{s.nan}/{s.inf}",
            percent(s.zeros, 0),
            shown(flags_text(s.flags, kind), flag_style),
        ]
        table.add_row(*cells)
    tall = tall or taller_than_terminal(console, table)
    console.print(table)
    if len(rows_shown) < len(report.stats):
        console.print(
            shown(
                f"{len(report.stats) - len(rows_shown)} more tapped tensors: --rows 0 shows all",
                "dim",
            )
        )
    if report.shape_mismatches:
        console.print(
            shown(
                f"declared vs real: {len(report.shape_mismatches)} tensor(s) differ from what the model declares",
                "yellow",
            )
        )
        for m in report.shape_mismatches[:5]:
            console.print(shown("  - " + m.message, "yellow"))
        if len(report.shape_mismatches) > 5:
            console.print(
                shown(
                    f"  ... and {len(report.shape_mismatches) - 5} more (--json lists all)",
                    "dim",
                )
            )
    for line, style in body_lines(report):
        console.print(shown(line, style))
    if report.not_tappable:
        names = ", ".join(f"{t} (in {n})" for t, n in list(report.not_tappable.items())[:8])
        more = f" and {len(report.not_tappable) - 8} more" if len(report.not_tappable) > 8 else ""
        console.print(shown(f"not tappable (inside If/Loop/Scan bodies): {names}{more}", "yellow"))
    feeds = feeds_text(report.feeds)
    tol = (
        f" · atol={fmt(report.tolerance.atol)} rtol={fmt(report.tolerance.rtol)}"
        if report.tolerance
        else ""
    )
    tap_note = ""
    if report.tap_check is not None:
        tap_note = " · tap check: " + (
            "original outputs bit-identical"
            if report.tap_check.passed and report.tap_check.tolerance.exact
            else report.tap_check.summary()
        )
    console.print(
        shown(
            f"{report.model} · seed={report.seed} · feeds {feeds} · optimization={report.optimization}{tol}{tap_note}",
            "dim",
        )
    )
    if tall:
        console.print(shown(report.verdict(), style))
