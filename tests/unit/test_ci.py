"""cli/ci.py: the step summary's size limit and the annotation's escaping."""

from __future__ import annotations

from test_report import make_report

from fp16guard_cli import ci


def test_a_summary_over_the_limit_keeps_verdict_and_table(monkeypatch):
    report = make_report(passed=False)
    full = ci.step_summary(report)
    assert "## Attempts" in full
    monkeypatch.setattr(ci, "SUMMARY_LIMIT", len(full.encode()) - 1)
    cut = ci.step_summary(report)
    assert "## Attempts" not in cut and "| policy |" in cut and cut.startswith("# fp16guard FAIL")
    assert "see report.md" in cut


def test_the_annotation_is_one_line_with_escaped_data():
    report = make_report(passed=False)
    last = report.attempts[-1]
    last.metrics["worst"][0][0] = "id 100%\nnext"
    line = ci.error_annotation(report)
    assert line.startswith("::error title=fp16guard::") and "\n" not in line
    assert "id 100%25%0Anext" in line and f"policy {last.name}" in line
    assert ci.error_annotation(make_report(passed=True)) is None


def test_on_github():
    assert ci.on_github({"GITHUB_ACTIONS": "true"}) and ci.on_github({"GITHUB_STEP_SUMMARY": "/tmp/x"})
    assert not ci.on_github({}) and not ci.on_github({"GITHUB_ACTIONS": "false"})
