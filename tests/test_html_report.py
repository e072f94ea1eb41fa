"""The HTML report's plots: tensor names on the axis, the tolerance line, the root cause
marked, and NaN/Inf drawn on the top edge rather than dropped."""

from __future__ import annotations

import html
import re

from conftest import parse, write

from surgeon.compare import Tolerance
from surgeon.debugging import DebugOptions, debug
from surgeon.loading import load
from surgeon.report.html import _abbreviate, _plot, _Point, debug_html

LONG = "/backbone/stage_3/block_2/conv_1/Conv_output_0"

CHAIN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (y) <float w = {{{scale}}}> {{
    a = Relu(x)
    "{long}" = Mul(a, w)
    c = Neg("{long}")
    y = Sigmoid(c)
}}"""


def _svg_elements(page: str, cls: str) -> list[str]:
    return re.findall(rf"<[a-z]+ class='{cls}'.*?</[a-z]+>", page)


def _error_report(tmp_path):
    ref = write(parse(CHAIN.format(scale=1.0, long=LONG)), tmp_path / "ref.onnx")
    cand = write(parse(CHAIN.format(scale=1.5, long=LONG)), tmp_path / "cand.onnx")
    return debug(load(cand), DebugOptions(reference=str(ref)))


def test_error_plot_names_tolerance_line_and_root(tmp_path):
    report = _error_report(tmp_path)
    assert report.root_cause is not None and report.root_cause.diff.name == LONG
    page = debug_html(report)
    plot = page[page.index("Error along the graph") : page.index("Layer-wise comparison")]
    names = _svg_elements(plot, "axis-name")
    assert len(names) == 4  # a, the long one, c, y: every name fits (w is a weight)
    shown = [
        html.unescape(re.sub(r"<title>.*?</title>", "", re.sub(r"^<[^>]*>", "", n))) for n in names
    ]
    shown = [s.removesuffix("</text>") for s in shown]
    assert shown == ["a", _abbreviate(LONG), "c", "y"]
    assert _abbreviate(LONG) != LONG and len(_abbreviate(LONG)) <= 18
    assert f"<title>{html.escape(LONG)} " in names[1]  # full name on hover
    assert "rotate(-55" in names[0]
    (line,) = _svg_elements(plot, "tolerance")
    assert "atol 1.000e-04" in line or "atol 0.0001" in line
    (root,) = re.findall(r"<g class='root-marker'>.*?</g>", plot)
    assert "root cause" in root and html.escape(LONG) in root
    assert "font-weight='bold' fill='#8b0000'" in names[1]  # the root's axis name too


def test_nan_points_are_drawn_on_the_top_edge(tmp_path):
    body = """
        r = Relu(x)
        n = Neg(r)
        one = Constant<value = float {1.0}>()
        m = Sub(n, one)"""
    ref = parse(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (y) {{{body}
            a = Abs(m)
            y = Sqrt(a)
        }}"""
    )
    cand = parse(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (y) {{{body}
            y = Sqrt(m)
        }}"""
    )
    ref_path, cand_path = write(ref, tmp_path / "r.onnx"), write(cand, tmp_path / "c.onnx")
    report = debug(load(cand_path), DebugOptions(reference=str(ref_path)))
    page = debug_html(report)
    error = page[page.index("Error along the graph") : page.index("Layer-wise comparison")]
    (nan,) = _svg_elements(error, "nonfinite")
    assert "<title>y " in nan and ": NaN</title>" in nan
    assert "drawn as ▲ on the top edge" in error
    magnitude = page[page.index("Magnitude along the graph") : page.index("Tapped tensors")]
    (nan,) = _svg_elements(magnitude, "nonfinite")
    assert ": NaN</title>" in nan
    # where the NaN is born: marked on the magnitude plot
    assert "root-marker" in magnitude


def test_many_tensors_show_every_kth_name():
    points = [_Point(float(k + 1), f"t{k}", f"(#{k})") for k in range(300)]
    svg = _plot(points, "many")
    names = _svg_elements(svg, "axis-name")
    assert 30 <= len(names) < 300
    assert "hover a point for its name" in svg
    assert svg.count("<circle") == 300  # every point is still drawn, with its tooltip


def test_no_tolerance_line_for_exact_or_infinite_tolerance(tmp_path):
    report = _error_report(tmp_path)
    for tol in (Tolerance(exact=True), Tolerance(atol=float("inf")), Tolerance(atol=0.0)):
        report.tolerance = tol
        page = debug_html(report)
        assert "class='tolerance'" not in page
    assert _plot([_Point(1.0, "a", "")], "x", line=(float("inf"), "inf")).count("tolerance") == 0


def test_only_nonfinite_points_still_plot():
    svg = _plot([_Point(None, "a", "", nonfinite="NaN"), _Point(float("inf"), "b", "")], "x")
    assert svg.startswith("<svg") and len(_svg_elements(svg, "nonfinite")) == 2
