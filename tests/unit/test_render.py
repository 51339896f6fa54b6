"""cli/render.py: the summary table never breaks a number, whatever the console width."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from test_report import make_report

from fp16guard.report.text import summary_rows
from fp16guard_cli import render


def _rendered(report, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), highlight=False, color_system=None)
    render.summary(console, report, [])
    return console.file.getvalue()


def _report():
    report = make_report(passed=False)
    fp16 = report.attempts[1]
    fp16.metrics["nan_count"], fp16.metrics["inf_count"] = 1760, 0
    fp16.metrics["min_cosine"] = 0.99999994
    fp16.timing["tokens_per_second"] = 123456.0
    fp16.peak_memory_bytes = 13 * 1024**3
    return report


@pytest.mark.parametrize("width", [200, 120, 100, 80, 60, 40, 24])
def test_every_number_is_whole_on_one_line(width):
    """Issue 12: at 80 columns `1760/0` was folded into `176` over `0/0`."""
    report = _report()
    text = _rendered(report, width)
    lines = text.splitlines()
    assert "…" not in text and "FAIL" in text
    header = next((line for line in lines if line.lstrip("┃ ").startswith("policy ")), None)
    for row in summary_rows(report):
        numbers = {h: row[h] for h in render.TERMINAL_COLUMNS if h not in ("policy", render.TEXT_COLUMN, "verdict")}
        if header is not None:  # a table: each figure of a column shown is whole on its row's line
            line = next(line for line in lines if re.match(rf"[│ ]*{re.escape(row['policy'])} ", line))
            shown = [h for h in numbers if h in header]
            assert "min cos" in shown, text
            for column in shown:
                assert f" {numbers[column]} " in line, (column, line, text)
        else:  # the narrowest layout: one line per figure
            for column, cell in numbers.items():
                assert f"  {column}: {cell}" in lines, (column, text)
    if width >= 40:  # a table: nothing wider than the console
        assert max(len(line) for line in lines) <= width, text


def test_80_columns_keeps_a_table_with_the_key_figures():
    text = _rendered(_report(), 80)
    header = next(line for line in text.splitlines() if line.lstrip("┃ ").startswith("policy"))
    for column in ("min cos", "worst sequence", "NaN/Inf", "speed-up", "verdict"):
        assert column in header, text
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("fp16 "))
    assert "1-6.0e-08" in row and "1760/0" in row and "4.00x" in row


def test_a_wide_console_shows_every_column():
    text = _rendered(_report(), 200)
    for column in render.TERMINAL_COLUMNS:
        assert column in text
    assert "123,456" in text and "13.00 GiB" in text


def test_nan_shows_as_nan():
    report = make_report(passed=False)  # its fp16 attempt has a NaN row
    row = next(line for line in _rendered(report, 160).splitlines() if line.startswith("│ fp16 "))
    assert re.search(r"│\s+NaN\s+│\s+NaN\s+│", row), row
