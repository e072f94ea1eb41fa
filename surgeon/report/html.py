"""A self-contained HTML page for ``surgeon debug --html``: inline CSS and SVG, no
scripts, no network, readable by a person in any browser."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from surgeon.compare import json_number
from surgeon.errors import printable

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
.verdict { font-size: 1.1em; padding: .6em 1em; border-radius: 4px; }
.pass { background: #e6f4ea; } .fail { background: #fdecea; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.l, th.l { text-align: left; font-family: ui-monospace, monospace; }
tr.flag td { background: #fff6e0; } tr.bad td { background: #fdecea; } tr.root td { background: #f8c9c4; font-weight: bold; }
.meta { color: #666; font-size: .85em; }
svg text { font-size: 11px; fill: #444; }
"""


def _text(value) -> str:
    """Model text for the page: HTML-escaped, and its control characters shown as escapes
    (a bidi override would reorder what the browser shows, as it would on a terminal)."""
    return html.escape(printable(value))


def _num(x) -> str:
    x = json_number(x) if isinstance(x, float) else x
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def _plot(
    points: list[tuple[int, float | None, str, bool]],
    title: str,
    width: int = 900,
    height: int = 260,
) -> str:
    """An SVG line plot of log10(value) by layer index; bad points drawn red."""
    values = [v for _, v, _, _ in points if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return f"<p class='meta'>{html.escape(title)}: nothing to plot (all values are zero or missing).</p>"
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    if hi == lo:
        hi = lo + 1
    left, right, top, bottom = 60, 20, 25, 40
    n = max(len(points) - 1, 1)

    def xy(i, v):
        x = left + (width - left - right) * i / n
        y = top + (height - top - bottom) * (1 - (math.log10(v) - lo) / (hi - lo))
        return x, y

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' aria-label='{html.escape(title)}'>"
    ]
    parts.append(f"<text x='{left}' y='15'>{html.escape(title)}</text>")
    for e in range(lo, hi + 1):
        _, y = xy(0, 10.0**e)
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
        )
        parts.append(f"<text x='5' y='{y + 4:.1f}'>1e{e}</text>")
    path = []
    for i, v, _, _ in points:
        if v is not None and math.isfinite(v) and v > 0:
            x, y = xy(i, v)
            path.append(f"{'M' if not path else 'L'}{x:.1f},{y:.1f}")
    parts.append(f"<path d='{' '.join(path)}' fill='none' stroke='#3366cc' stroke-width='1.5'/>")
    for i, v, label, bad in points:
        if v is not None and math.isfinite(v) and v > 0:
            x, y = xy(i, v)
            color = "#d93025" if bad else "#3366cc"
            parts.append(
                f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{color}'><title>{_text(label)}: {v:.3g}</title></circle>"
            )
    zeros = sum(1 for _, v, _, _ in points if v == 0)
    caption = f"tensor index in topological order (0 … {len(points) - 1})"
    if zeros:
        caption += f"; {zeros} value(s) of exactly 0 are not drawn (log scale)"
    parts.append(f"<text x='{left}' y='{height - 10}'>{html.escape(caption)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def debug_html(report) -> str:
    """The whole page as a string."""
    esc = _text
    status = "pass" if report.passed else "fail"
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>surgeon debug: {esc(report.model)}</title><style>{CSS}</style></head><body>",
        f"<h1>surgeon debug: {esc(report.model)}</h1>",
        f"<p class='verdict {status}'>{esc(report.verdict())}</p>",
    ]
    feeds = ", ".join(
        f"{k}: {d['dtype']}[{'x'.join(map(str, d['shape']))}]" for k, d in report.feeds.items()
    )
    out.append(
        f"<p class='meta'>seed {report.seed} · feeds {esc(feeds)} · onnxruntime optimization={esc(report.optimization)}"
        + (
            f" · reference {esc(report.reference)} · atol={report.tolerance.atol:g} rtol={report.tolerance.rtol:g}"
            if report.reference
            else ""
        )
        + "</p>"
    )
    if report.layers:
        root = report.root_cause.diff.name if report.root_cause else None
        pts = [
            (lay.index, lay.diff.max_abs, f"{lay.diff.name} ({lay.op})", lay.diverged)
            for lay in report.layers
        ]
        out.append("<h2>Error along the graph</h2>")
        out.append(_plot(pts, "max abs error vs reference (log scale)"))
        out.append(
            "<h2>Layer-wise comparison</h2><table><tr><th>#</th><th class='l'>tensor</th><th class='l'>node (op)</th>"
            "<th class='l'>status</th><th>max abs</th><th>max rel</th><th>cosine</th><th>mismatch</th></tr>"
        )
        for lay in report.layers:
            d = lay.diff
            cls = "root" if d.name == root else ("bad" if lay.diverged else "")
            st = "ROOT CAUSE" if d.name == root else ("diverged" if lay.diverged else "ok")
            out.append(
                f"<tr class='{cls}'><td>{lay.index}</td><td class='l'>{esc(d.name)}</td><td class='l'>{esc(lay.node)} ({esc(lay.op)})"
                + (f"<br>{esc(lay.origin)}" if lay.origin else "")
                + f"</td><td class='l'>{st}</td><td>{_num(d.max_abs)}</td><td>{_num(d.max_rel)}</td><td>{_num(d.cosine)}</td>"
                f"<td>{d.mismatches}/{d.size}</td></tr>"
            )
        out.append("</table>")
    if report.stats:
        pts = [
            (
                s.index,
                max(abs(v) for v in (s.min, s.max))
                if s.min is not None and s.max is not None and not math.isnan(s.min)
                else None,
                s.name,
                bool(s.flags),
            )
            for s in report.stats
        ]
        out.append("<h2>Magnitude along the graph</h2>")
        out.append(_plot(pts, "max |value| per tapped tensor (log scale)"))
        out.append(
            "<h2>Tapped tensors</h2><table><tr><th>#</th><th class='l'>tensor</th><th class='l'>node (op)</th><th class='l'>shape</th>"
            "<th class='l'>dtype</th><th>min</th><th>max</th><th>mean</th><th>std</th><th>NaN</th><th>Inf</th><th>zeros</th>"
            "<th class='l'>flags</th></tr>"
        )
        for s in report.stats:
            cls = "bad" if ("nan" in s.flags or "inf" in s.flags) else ("flag" if s.flags else "")
            shape = "x".join(map(str, s.shape)) if s.shape is not None else "?"
            zeros = f"{s.zeros:.1%}" if s.zeros is not None else "–"
            out.append(
                f"<tr class='{cls}'><td>{s.index}</td><td class='l'>{esc(s.name)}</td><td class='l'>{esc(s.node)} ({esc(s.op)})</td>"
                f"<td class='l'>{shape}</td><td class='l'>{esc(s.dtype or '?')}</td><td>{_num(s.min)}</td><td>{_num(s.max)}</td>"
                f"<td>{_num(s.mean)}</td><td>{_num(s.std)}</td><td>{s.nan}</td><td>{s.inf}</td><td>{zeros}</td>"
                f"<td class='l'>{esc(', '.join(s.flags))}</td></tr>"
            )
        out.append("</table>")
    if report.shape_mismatches:
        out.append("<h2>Declared vs real shapes</h2><ul>")
        out += [f"<li>{esc(m.message)}</li>" for m in report.shape_mismatches]
        out.append("</ul>")
    if report.not_tappable:
        out.append(
            "<h2>Not tappable</h2><p>Tensors inside If/Loop/Scan bodies cannot be exposed from the main graph:</p><ul>"
        )
        out += [
            f"<li><code>{esc(t)}</code> in node <code>{esc(n)}</code></li>"
            for t, n in report.not_tappable.items()
        ]
        out.append("</ul>")
    out.append("<p class='meta'>written by surgeon</p></body></html>")
    return "\n".join(out)


def write_debug_html(report, path: str | os.PathLike) -> Path:
    """Write the page atomically; returns the path."""
    from surgeon.fileio import atomic_write

    page = debug_html(report)
    return atomic_write(path, lambda fh: fh.write(page), binary=False)
