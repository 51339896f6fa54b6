"""report.html without a browser: escaping, self-containment, the cosine chart's bins and its NaN
bar, cosines never rounded up. (tests/integration/test_html_report.py renders it in Chromium.)"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from test_report import make_report

from fp16guard.report.html import CSP, HtmlFormat, cosine_chart
from fp16guard.report.text import summary_rows

SVG = "{http://www.w3.org/2000/svg}"


def _bars(svg: str) -> list[dict]:
    """Each bar of a chart: its class, left edge, count (the label's text) and tooltip."""
    root = ET.fromstring(svg)
    return [
        {"class": r.get("class"), "x": float(r.get("x")), "height": float(r.get("height")),
         "title": r.find(f"{SVG}title").text}
        for r in root.iter(f"{SVG}rect")
    ]


def _chart(*cosines, threshold=0.99) -> list[dict]:
    return _bars(cosine_chart([{"id": f"s{i}", "cosine": c} for i, c in enumerate(cosines)], threshold))


def test_values_near_one_fall_in_different_bins_and_nan_has_its_own_bar():
    bars = _chart(1 - 1e-7, 1 - 1e-7, 1 - 1e-5, None, None, None)
    ok = sorted((b for b in bars if b["class"] == "ok"), key=lambda b: b["x"])
    assert [b["title"].split(" ")[0] for b in ok] == ["2", "1"]  # 1e-7 and 1e-5 apart, closer to 1 on the left
    assert ok[0]["x"] < ok[1]["x"]
    (nan,) = [b for b in bars if b["class"] == "nan"]
    assert nan["title"].startswith("3 sequence(s) with NaN/Inf")
    assert nan["x"] > ok[1]["x"] and nan["height"] > ok[0]["height"]  # 3 sequences: the tallest bar


def test_bars_past_the_threshold_are_failures_even_next_to_it():
    bars = _chart(0.9899999999, 0.99, 0.995, 1.0)
    assert sorted(b["title"].split(" ")[0] for b in bars if b["class"] == "bad") == ["1"]
    assert sum(int(b["title"].split(" ")[0]) for b in bars if b["class"] == "ok") == 3  # 0.99 passes, 1.0 is drawn
    assert [b["title"].split(" ")[0] for b in bars if b["class"] == "nan"] == ["0"]  # an empty NaN bar still says 0
    chart = cosine_chart([{"id": "a", "cosine": 0.99}], 0.99)
    threshold_x = float(re.search(r'class="threshold" x1="([\d.]+)"', chart)[1])
    (at_threshold,) = _chart(0.99)[:1]
    assert at_threshold["class"] == "ok" and at_threshold["x"] < threshold_x  # left of the line, though 1 - 0.99 > 0.01


def test_every_cosine_exactly_one_or_all_nan_still_draws():
    assert sum(int(b["title"].split(" ")[0]) for b in _chart(1.0, 1.0)) == 2
    assert [b["class"] for b in _chart(None, None)] == ["nan"]


def test_the_page_is_self_contained_and_has_no_script():
    html = HtmlFormat().render(make_report(passed=True))
    assert f'content="{CSP}"' in html and "default-src 'none'" in CSP
    assert "<script" not in html.lower()
    assert not re.search(r"\b(src|href)\s*=", html, re.IGNORECASE)
    assert not re.search(r"@import|url\(", html)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_text_from_the_run_is_escaped():
    report = make_report(passed=False)
    hostile = '<img src=x onerror="alert(1)">&'
    report.model["name"] = hostile
    attempt = report.attempts[1]
    attempt.metrics["worst"][0][0] = hostile
    attempt.metrics["cosines"][0]["id"] = hostile
    attempt.reason = "<b>reason</b>"
    html = HtmlFormat().render(report)
    assert hostile not in html and "<b>reason</b>" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in html


def test_verdict_table_and_a_failing_cosine_never_rounded_up():
    report = make_report(passed=False)
    attempt = report.attempts[1]
    attempt.metrics["worst"] = [["P9", 0.98999999999], *attempt.metrics["worst"][1:]]
    html = HtmlFormat().render(report)
    assert '<section id=verdict class="banner fail">' in html and "<p class=status>FAIL</p>" in html
    for header in summary_rows(report)[0]:
        assert f">{header}</th>" in html
    assert "0.989999" in html and "<td>0.990000</td>" not in html
    assert "<tr class=bad><td class=\"text\">P9</td><td>0.989999</td></tr>" in html


def test_layer_profile_marks_the_first_divergent_block():
    report = make_report(passed=False)
    layer = {"min_cosine": 1 - 1e-7, "mean_cosine": 1 - 1e-8, "relative_error": 1e-4, "max_abs_activation": 3.0,
             "fp16_headroom": 2e4, "nonfinite_tokens": 0}
    report.attempts[1].layers = [{**layer, "layer": 1}, {**layer, "layer": 2, "min_cosine": 0.5}, {**layer, "layer": 3}]
    html = HtmlFormat().render(report)
    assert "first divergent block: 2" in html
    assert re.search(r"<tr class=first><td>2</td><td>0\.500000</td>", html)
