"""A self-contained HTML page for ``surgeon debug --html``: inline CSS and SVG, no
scripts, no network, readable by a person in any browser."""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Point:
    """One tensor on a plot."""

    value: float | int | None  # None or non-finite: drawn at the top edge
    name: str  # on the axis (abbreviated) and in the tooltip
    detail: str  # the tooltip's rest: op, index
    bad: bool = False
    nonfinite: str = ""  # "NaN", "Inf", "NaN and Inf": what the tensor holds
    root: bool = False


def _abbreviate(name: str, limit: int = 18) -> str:
    """Keep both ends of a long name (``/backbone/…/conv_3/Conv_output_0``): the start
    says where, the end which tensor."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "…" + name[len(name) - (limit - 1 - head) :]


def _nonfinite_text(nan: int, inf: int) -> str:
    return " and ".join(label for n, label in ((nan, "NaN"), (inf, "Inf")) if n)


def _plot(
    points: list[_Point],
    title: str,
    *,
    line: tuple[float, str] | None = None,
    width: int = 900,
    height: int = 340,
) -> str:
    """An SVG plot of log10(value) along the graph, one point per tensor in order.

    Bad points are red; a point whose tensor holds NaN/Inf (or has no finite value) is a
    red triangle on the top edge, not dropped; the root cause gets a ring and a label;
    ``line`` (value, label) draws a dashed horizontal line (the tolerance). Tensor names
    run along the x axis, rotated and abbreviated, each with its full name on hover.
    """

    def finite(v) -> bool:
        return v is not None and math.isfinite(v)

    values = [p.value for p in points if finite(p.value) and p.value > 0 and not p.nonfinite]
    if line is not None and 0 < line[0] < math.inf:
        values.append(line[0])
    drawn_top = [p for p in points if p.nonfinite or not finite(p.value)]
    if not values and not drawn_top:
        return f"<p class='meta'>{html.escape(title)}: nothing to plot (all values are zero or missing).</p>"
    values = values or [1.0]
    # Decades within float64's normal range: 10.0**e must neither overflow nor round to 0.
    lo = max(math.floor(math.log10(min(values))), -307)
    hi = min(math.ceil(math.log10(max(values))), 308)
    if hi <= lo:
        lo, hi = (hi - 1, hi) if hi >= 308 else (lo, lo + 1)
    # top: room for the NaN/Inf row above the highest decade; bottom: the rotated names
    left, right, top, bottom = 60, 20, 45, 130
    n = max(len(points) - 1, 1)
    inner_top = top + 12

    def x_of(k: int) -> float:
        return left + (width - left - right) * (k / n if len(points) > 1 else 0.5)

    def y_of(v: float) -> float:
        level = min(max(math.log10(v), lo), hi)  # denormals are drawn at the bottom
        return inner_top + (height - inner_top - bottom) * (1 - (level - lo) / (hi - lo))

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' aria-label='{html.escape(title)}'>"
    ]
    parts.append(f"<text x='{left}' y='15'>{html.escape(title)}</text>")
    for e in range(lo, hi + 1):
        y = y_of(10.0**e)
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
        )
        parts.append(f"<text x='5' y='{y + 4:.1f}'>1e{e}</text>")
    if drawn_top:
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{top:.1f}' y2='{top:.1f}' stroke='#f3c0bb'/>"
            f"<text x='5' y='{top + 4:.1f}'>NaN/Inf</text>"
        )
    if line is not None:
        value, label = line
        if value > 0 and math.isfinite(value):
            y = y_of(value)
            parts.append(
                f"<line class='tolerance' x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                f"stroke='#e8710a' stroke-dasharray='6 4'><title>{html.escape(label)}</title></line>"
                f"<text x='{width - right - 4}' y='{y - 4:.1f}' text-anchor='end' fill='#e8710a'>{html.escape(label)}</text>"
            )
    path = []
    for k, p in enumerate(points):
        if finite(p.value) and p.value > 0 and not p.nonfinite:
            path.append(f"{'M' if not path else 'L'}{x_of(k):.1f},{y_of(p.value):.1f}")
    parts.append(f"<path d='{' '.join(path)}' fill='none' stroke='#3366cc' stroke-width='1.5'/>")
    for k, p in enumerate(points):
        x = x_of(k)
        tip = f"{_text(p.name)} {_text(p.detail)}"
        if p.nonfinite or not finite(p.value):
            what = p.nonfinite or ("no finite value" if p.value is None else _num(p.value))
            parts.append(
                f"<path class='nonfinite' d='M{x:.1f},{top - 6:.1f} l5,9 l-10,0 z' fill='#d93025'>"
                f"<title>{tip}: {html.escape(what)}</title></path>"
            )
            y = top
        elif p.value > 0:
            y = y_of(p.value)
            color = "#d93025" if p.bad else "#3366cc"
            parts.append(
                f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{color}'><title>{tip}: {p.value:.3g}</title></circle>"
            )
        else:
            continue
        if p.root:
            parts.append(
                f"<g class='root-marker'><circle cx='{x:.1f}' cy='{y:.1f}' r='8' fill='none' stroke='#8b0000' stroke-width='2'/>"
                f"<text x='{x + 10:.1f}' y='{y - 8:.1f}' fill='#8b0000' font-weight='bold'>root cause<title>{tip}</title></text></g>"
            )
    # Names on the axis: every name while they fit (one per 13 px), else every k-th;
    # rotated so long names fit, abbreviated, the full name on hover.
    step = max(1, math.ceil(len(points) / max((width - left - right) // 13, 1)))
    base = height - bottom + 12
    for k in range(0, len(points), step):
        p = points[k]
        x = x_of(k)
        weight = " font-weight='bold' fill='#8b0000'" if p.root else ""
        parts.append(
            f"<text class='axis-name' x='{x:.1f}' y='{base:.1f}' text-anchor='end' "
            f"transform='rotate(-55 {x:.1f} {base:.1f})'{weight}>{_text(_abbreviate(p.name))}"
            f"<title>{_text(p.name)} {_text(p.detail)}</title></text>"
        )
    zeros = sum(1 for p in points if p.value == 0 and not p.nonfinite)
    caption = f"{len(points)} tensor(s) in topological order"
    if step > 1:
        caption += f" (every {step}th name shown; hover a point for its name)"
    if drawn_top:
        caption += (
            f"; {len(drawn_top)} holding NaN/Inf or no finite value, drawn as ▲ on the top edge"
        )
    if zeros:
        caption += f"; {zeros} value(s) of exactly 0 are not drawn (log scale)"
    parts.append(f"<text x='{left}' y='{height - 6}'>{html.escape(caption)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _atol_line(tol) -> tuple[float, str] | None:
    """The tolerance line of the error plot: atol (an element also passes within
    rtol * |reference|, which differs per element and has no line)."""
    if tol is None or getattr(tol, "exact", False) or not tol.atol > 0:
        return None
    return float(tol.atol), f"atol {_num(tol.atol)} (+ rtol {_num(tol.rtol)} x |ref| per element)"


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
            _Point(
                lay.diff.max_abs,
                lay.diff.name,
                f"(#{lay.index}, {lay.node}, {lay.op})",
                bad=lay.diverged,
                nonfinite=_nonfinite_text(
                    max(lay.diff.nan - lay.diff.reference_nan, 0),
                    max(lay.diff.inf - lay.diff.reference_inf, 0),
                ),
                root=lay.diff.name == root,
            )
            for lay in report.layers
        ]
        out.append("<h2>Error along the graph</h2>")
        out.append(_plot(pts, "max abs error vs reference (log scale)", line=_atol_line(tol)))
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
        born = report.born
        born_at = born[0].tensor if born else None
        pts = [
            _Point(
                _magnitude(s.min, s.max),
                s.name,
                f"(#{s.index}, {s.node}, {s.op})",
                bad=bool(s.flags),
                nonfinite=_nonfinite_text(s.nan, s.inf),
                root=s.name == born_at,
            )
            for s in report.stats
        ]
        # float16 models: the largest finite float16 is where values start to overflow
        line = (65504.0, "float16 max 65504") if getattr(report, "float16", False) else None
        out.append("<h2>Magnitude along the graph</h2>")
        out.append(_plot(pts, "max |value| per tapped tensor (log scale)", line=line))
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
    idle = [b for b in (getattr(report, "bodies", None) or {}).get("taps", []) if not b["executed"]]
    if idle:
        out.append(
            "<h2>Not executed</h2><p>Tapped tensors inside If/Loop/Scan bodies that did not "
            "run (no statistics, no comparison):</p><ul>"
        )
        out += [
            f"<li><code>{esc(b['name'])}</code>: {esc(b['not_executed'] or '')}</li>" for b in idle
        ]
        out.append("</ul>")
    if report.not_tappable:
        out.append(
            "<h2>Not tappable</h2><p>Tensors inside bodies that cannot be exposed from the "
            "main graph (bodies of other ops, or the reason given):</p><ul>"
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
