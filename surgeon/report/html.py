"""A self-contained HTML page for ``surgeon debug --html``: inline CSS and SVG, no
scripts, no network, readable by a person in any browser."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from surgeon.compare import json_number
from surgeon.errors import printable

# The page says what the terminal report says, in the same words: one wording for both.
# (Importing any surgeon.report module imports rich already, through the package.)
from surgeon.report.debug import (
    feeds_text,
    flags_text,
    layer_status,
    other_roots_text,
    reference_feeds_text,
    uncompared_hint,
)

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


def _magnitude(lo, hi) -> float | None:
    """max(|min|, |max|) over the finite ones, for the magnitude plot; None if neither."""
    finite = [abs(v) for v in (lo, hi) if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(finite) if finite else None


def _percent(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return _num(x)
    return f"{x:.1%}"


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
    # Decades within float64's normal range: 10.0**e must neither overflow nor round to 0.
    lo = max(math.floor(math.log10(min(values))), -307)
    hi = min(math.ceil(math.log10(max(values))), 308)
    if hi <= lo:
        lo, hi = (hi - 1, hi) if hi >= 308 else (lo, lo + 1)
    left, right, top, bottom = 60, 20, 25, 40
    n = max(len(points) - 1, 1)

    def xy(i, v):
        x = left + (width - left - right) * i / n
        level = min(max(math.log10(v), lo), hi)  # denormals are drawn at the bottom
        y = top + (height - top - bottom) * (1 - (level - lo) / (hi - lo))
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
    feeds = feeds_text(report.feeds)
    tol = report.tolerance
    out.append(
        f"<p class='meta'>seed {esc(str(report.seed))} · feeds {esc(feeds)} · onnxruntime optimization={esc(str(report.optimization))}"
        + (f" · reference {esc(str(report.reference))}" if report.reference else "")
        + (f" · atol={_num(tol.atol)} rtol={_num(tol.rtol)}" if report.reference and tol else "")
        + "</p>"
    )
    for line in (reference_feeds_text(report), uncompared_hint(report)):
        if line:
            out.append(f"<p class='meta'>{esc(line)}</p>")
    if report.other_roots:
        out.append(
            f"<p class='meta'>{esc(other_roots_text(report.other_roots, report.precision is not None))}</p>"
        )
    for note in getattr(report, "notes", []):
        out.append(f"<p class='meta'>note: {esc(note)}</p>")
    unused = getattr(report, "unused_reference", [])
    if unused:
        out.append(
            f"<p class='meta'>{len(unused)} reference value(s) matched no tapped tensor (not compared): "
            + esc(", ".join(unused))
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
            st = layer_status(lay, root)
            out.append(
                f"<tr class='{cls}'><td>{lay.index}</td><td class='l'>{esc(d.name)}</td><td class='l'>{esc(lay.node)} ({esc(lay.op)})"
                + (f"<br>{esc(lay.origin)}" if lay.origin else "")
                + f"</td><td class='l'>{esc(st)}</td><td>{_num(d.max_abs)}</td><td>{_num(d.max_rel)}</td><td>{_num(d.cosine)}</td>"
                f"<td>{d.mismatches}/{d.size}</td></tr>"
            )
        out.append("</table>")
    if report.stats:
        pts = [
            (
                s.index,
                _magnitude(s.min, s.max),
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
        kinds = {x.tensor: x.kind for x in getattr(report, "nonfinite", [])}
        for s in report.stats:
            kind = kinds.get(s.name)
            cls = "bad" if kind in ("born", "unknown") else ("flag" if s.flags else "")
            shape = "x".join(map(str, s.shape)) if s.shape is not None else "?"
            zeros = _percent(s.zeros)
            out.append(
                f"<tr class='{cls}'><td>{s.index}</td><td class='l'>{esc(s.name)}</td><td class='l'>{esc(s.node)} ({esc(s.op)})</td>"
                f"<td class='l'>{esc(shape)}</td><td class='l'>{esc(s.dtype or '?')}</td><td>{_num(s.min)}</td><td>{_num(s.max)}</td>"
                f"<td>{_num(s.mean)}</td><td>{_num(s.std)}</td><td>{s.nan}</td><td>{s.inf}</td><td>{zeros}</td>"
                f"<td class='l'>{esc(flags_text(s.flags, kind))}</td></tr>"
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
