"""report.html in a real browser: headless Chromium loads the reports of two real CLI runs (a
healthy tiny checkpoint, then one with a planted failure) and the test reads the DOM it built.

Chromium is driven over the DevTools protocol through pipes (see browser.py for why): the
page's exceptions, console errors and log errors (CSP violations, failed loads) arrive as
events, and every request it makes is seen, so "no console errors" and "loads nothing" are
checked, not assumed. CI installs Debian's chromium in .ci/run; elsewhere the test skips."""

from __future__ import annotations

import json
import os

import pytest
from browser import Chromium, file_url, find_chromium
from cli_runner import run_cli

from fp16guard.report.document import read_report
from fp16guard.report.text import summary_rows

CHROMIUM = find_chromium()
#: Set by .ci/run, where Chromium was installed: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("FP16GUARD_REQUIRE_CHROMIUM") == "1"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED,
    reason="no Chromium binary on PATH (chromium, chromium-browser, google-chrome; or set CHROMIUM): "
    "`apt-get install chromium` to run the browser test (CI installs it in .ci/run)",
)

#: What the test reads from the rendered page: the verdict, the attempts table's cells, and the
#: charts as laid out (a chart that did not render has no width).
DOM = """JSON.stringify({
  title: document.title,
  status: document.querySelector('#verdict .status')?.textContent,
  summary: document.querySelector('#verdict .summary')?.textContent,
  headers: [...document.querySelectorAll('#attempts thead th')].map(th => th.textContent),
  rows: [...document.querySelectorAll('#attempts tbody tr')].map(tr => [...tr.cells].map(td => td.textContent)),
  charts: [...document.querySelectorAll('svg.chart')].map(svg => ({
    width: svg.getBoundingClientRect().width,
    nan: svg.querySelector('rect.nan title')?.textContent,
  })),
  profiles: [...document.querySelectorAll('h3')].filter(h => h.textContent.startsWith('Per layer')).length,
})"""


@pytest.fixture(scope="module")
def runs(checkpoints, tmp_path_factory):
    """report directories of a passing and a failing (profiled) run, through the CLI."""
    root = tmp_path_factory.mktemp("html")
    fasta = root / "small.fasta"
    from conftest import SMALL_FASTA

    fasta.write_text(SMALL_FASTA)
    outs = {}
    for name, weights, code, extra in (("pass", "healthy", 0, ()), ("fail", "mlp", 1, ("--profile",))):
        outs[name] = root / name
        result, text = run_cli("validate", "esm2", "--weights", checkpoints[weights], "-s", fasta, "--device", "cpu",
                               "-o", outs[name], *extra)
        assert result.exit_code == code, text
        assert "report.html" in text
    return outs


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "FP16GUARD_REQUIRE_CHROMIUM=1 but no Chromium binary was found"
    with Chromium(CHROMIUM) as chromium:
        yield chromium


@pytest.mark.parametrize("name", ["pass", "fail"])
def test_report_html_renders_without_errors_and_shows_verdict_and_table(runs, browser, name):
    out = runs[name]
    page = browser.load(file_url(out / "report.html"), DOM)
    assert page.errors == []
    assert page.requests == [file_url(out / "report.html")]  # the page itself and nothing else
    dom = json.loads(page.value)
    report = read_report(out / "report.json")
    status = "PASS" if report.passed else "FAIL"
    assert dom["status"] == status and dom["title"].startswith(f"fp16guard {status}")
    assert dom["summary"] == report.summary
    rows = summary_rows(report)
    assert dom["headers"] == list(rows[0])
    assert dom["rows"] == [list(row.values()) for row in rows]
    measured = [a for a in report.attempts if a.metrics]
    assert len(dom["charts"]) == len(measured) and all(c["width"] > 100 for c in dom["charts"])
    nonfinite = [a.metrics["nonfinite_sequences"] for a in measured]
    assert [c["nan"].split(" ")[0] for c in dom["charts"]] == [str(n) for n in nonfinite]
    assert dom["profiles"] == sum(1 for a in report.attempts if a.layers)
    if name == "fail":
        assert any(nonfinite) and dom["profiles"] > 0  # the planted failure: NaN bars and a profile shown


def test_the_browser_check_sees_errors_and_requests(browser, tmp_path):
    """The same check on a broken page reports its errors: an empty list above means something."""
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        "<!DOCTYPE html><title>broken</title><p>x</p><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom'); undefinedFunction()</script>"
    )
    page = browser.load(file_url(page_path), "document.title")
    assert page.value == "broken"
    assert any("undefinedFunction" in e for e in page.errors), page.errors
    assert any("boom" in e for e in page.errors), page.errors
    assert "http://127.0.0.1:9/x.png" in page.requests
