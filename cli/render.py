"""Terminal output: the only module that imports rich. Validation output goes to stderr."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fp16guard.progress import Progress as LibraryProgress
from fp16guard.report import Report

#: Least width for output that goes to a file or a pipe (a CI log), not a terminal: rich would
#: otherwise take 80 columns (or a COLUMNS inherited from some terminal) and squeeze the table.
LOG_WIDTH = 160


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "")
        console.width = max(LOG_WIDTH, int(columns) if columns.isdigit() else 0)
    return console


def stderr_console() -> Console:
    """Where validation writes: progress, warnings, the table and the verdict."""
    return _console(stderr=True)


def stdout_console() -> Console:
    """Where ``list`` writes its tables."""
    return _console(stderr=False)


def error(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


class LiveProgress(LibraryProgress):
    """Renders the library's progress callbacks as rich progress bars."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> LiveProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def stage(self, message: str) -> None:
        self.bars.console.print(f"[dim]{message}[/]")

    def warn(self, message: str) -> None:
        self.bars.console.print(f"[yellow]warning:[/] {message}")

    def pass_started(self, label: str, total_tokens: int) -> None:
        self.task = self.bars.add_task(label, total=total_tokens)

    def advance(self, tokens: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, tokens)

    def pass_finished(self) -> None:
        self.task = None


# The terminal shows the essentials; report.md has every column.
TERMINAL_COLUMNS = ("policy", "min cos", "mean cos", "worst sequence", "NaN/Inf", "tokens/s", "speed-up", "peak memory", "verdict")


def summary(console: Console, report: Report, paths: list[Path]) -> None:
    """The per-attempt table, the verdict line and where the report went."""
    rows = report.summary_rows()
    table = Table(title=f"{report.model['name']} on {report.environment['device_name']}", title_justify="left")
    for header in TERMINAL_COLUMNS:
        left = header in ("policy", "worst sequence", "verdict")
        # Folded, never cut with an ellipsis: a narrow terminal must not hide a cosine's digits.
        table.add_column(header, justify="left" if left else "right", no_wrap=header in ("policy", "verdict"), overflow="fold")
    for row in rows:
        style = {"PASS": "green", "FAIL": "red"}.get(row["verdict"])
        table.add_row(*(row[h] for h in TERMINAL_COLUMNS), style=style)
    console.print(table)
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]{report.summary}[/]")
    console.print(f"report: {', '.join(str(p) for p in paths)}")


def catalog(console: Console, entries, policies) -> None:
    """The ``fp16guard list`` table: targets and models with their availability, then policies."""
    table = Table(title="Models (nothing is downloaded to check)", title_justify="left")
    for header in ("target", "name", "available", "description", "where"):
        table.add_column(header, overflow="fold")
    for entry in entries:
        table.add_row(entry.target, entry.name, "yes" if entry.available else "no", entry.description, entry.where)
    console.print(table)
    console.print("hf: any encoder directory or hub id with `fp16guard validate hf --model PATH_OR_ID`")
    console.print("Policies: " + ", ".join(f"{name} ({p.describe()})" for name, p in policies.items()))
