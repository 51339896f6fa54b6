"""Terminal output: the only module that imports rich.

Streams: the result (the summary table, the verdict line, where the report went) goes to stdout,
so ``fp16guard validate ... > log.txt`` captures it; progress, stage messages, warnings and
errors go to stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fp16guard.core.formatting import format_cosine
from fp16guard.core.progress import Progress as LibraryProgress
from fp16guard.report.document import Report
from fp16guard.report.text import fmt_bytes, fmt_rate, fmt_ratio, summary_rows

#: Least width for output that goes to a file or a pipe (a CI log), not a terminal: rich would
#: otherwise take 80 columns (or a COLUMNS inherited from some terminal) and squeeze the table.
LOG_WIDTH = 160


def _console(stderr: bool) -> Console:
    # NO_COLOR (https://no-color.org): rich alone would drop the colours but keep bold and
    # dim; no colour system means no escape codes at all. Off a terminal rich writes none.
    plain = bool(os.environ.get("NO_COLOR"))
    console = Console(stderr=stderr, highlight=False, **({"color_system": None} if plain else {}))
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "")
        console.width = max(LOG_WIDTH, int(columns) if columns.isdigit() else 0)
    return console


def stderr_console() -> Console:
    """Where validation writes progress, stage messages, warnings and errors."""
    return _console(stderr=True)


def stdout_console() -> Console:
    """Where results go: the validation summary (table, verdict, report paths) and ``list``."""
    return _console(stderr=False)


def error(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warning(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


class RateColumn(ProgressColumn):
    """Units per second over the last moments, as "12.3k residues/s"."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.speed
        return Text(f"{fmt_rate(speed)} {self.unit}/s" if speed else f"- {self.unit}/s")


class LiveProgress(LibraryProgress):
    """Renders the library's progress callbacks as rich progress bars."""

    def __init__(self, console: Console, unit: str = "tokens"):
        self.console = console
        if unit != "tokens":
            rate = (TextColumn("{task.fields[unit]}"), RateColumn(unit), TimeRemainingColumn())
        else:
            rate = (TextColumn("tokens"),)
        self.bars = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            *rate,
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.unit = unit
        self.task = None

    def __enter__(self) -> LiveProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def stage(self, message: str) -> None:
        self.bars.console.print(f"[dim]{escape(message)}[/]")

    def warn(self, message: str) -> None:
        warning(self.bars.console, message)

    def pass_started(self, label: str, total_tokens: int) -> None:
        self.task = self.bars.add_task(label, total=total_tokens, unit=self.unit)

    def advance(self, tokens: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, tokens)

    def pass_finished(self) -> None:
        self.task = None


# The terminal shows the essentials; report.md has every column.
TERMINAL_COLUMNS = (
    "policy", "min cos", "mean cos", "worst sequence", "NaN/Inf", "kNN overlap", "rank corr", "tokens/s", "speed-up",
    "peak memory", "verdict",
)
#: Left out in this order, one at a time, while the table is wider than the console: a number is
#: never folded or cut, so a column that does not fit goes as a whole.
DROP_ORDER = (
    "peak memory", "tokens/s", "rank corr", "mean cos", "worst sequence", "speed-up", "NaN/Inf", "kNN overlap",
)
#: The one column of free text: a long sequence id folds within this width when the whole id
#: does not fit. Every other column holds a number or a short word and never wraps.
TEXT_COLUMN, TEXT_WIDTH = "worst sequence", 20


def _table(
    report: Report, rows: list[dict[str, str]], headers: tuple[str, ...], compact: bool, fold_ids: bool
) -> Table:
    title = f"{report.model['name']} on {report.environment['device_name']}"
    if compact:  # no vertical rules or outer edges: room for two more columns at 80 columns
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      padding=(0, 1, 0, 0))
    else:
        table = Table(title=title, title_justify="left")
    for header in headers:
        text = header == TEXT_COLUMN
        table.add_column(
            header,
            justify="left" if header in ("policy", TEXT_COLUMN, "verdict") else "right",
            # Numbers never wrap: "1760/0" must not read as "176" over "0/0". summary_table gives
            # them their full width; were one ever short, an ellipsis would show it.
            no_wrap=not text,
            overflow="fold" if text else "ellipsis",
            max_width=TEXT_WIDTH if text and fold_ids else None,
        )
    for row in rows:
        style = {"PASS": "green", "FAIL": "red"}.get(row["verdict"])
        table.add_row(*(Text(row[h]) for h in headers), style=style)  # ids and names are text, not markup
    return table


def summary_table(console: Console, report: Report) -> Table | None:
    """The widest per-attempt table that fits the console at its natural width, so that no
    number is folded or cut (less important columns left out, see DROP_ORDER); None when not
    even policy, min cos and verdict fit."""
    rows = summary_rows(report)
    headers = TERMINAL_COLUMNS
    unbounded = console.options.update_width(1_000_000)  # a table's measure is clamped to the width it is given
    for drop in (None, *DROP_ORDER):
        headers = tuple(h for h in headers if h != drop)
        for compact, fold_ids in ((False, False), (False, True), (True, False), (True, True)):
            table = _table(report, rows, headers, compact, fold_ids)
            if Measurement.get(console, unbounded, table).maximum <= console.width:
                return table
    return None


def _vertical(console: Console, report: Report) -> None:
    """One line per figure, for a console too narrow for any table."""
    for row in summary_rows(report):
        console.print(f"[bold]{row['policy']}[/]: {row['verdict']}", no_wrap=True, overflow="ignore", crop=False)
        for header in TERMINAL_COLUMNS[1:-1]:
            console.print(f"  {header}: {row[header]}", no_wrap=True, overflow="ignore", crop=False)


def summary(console: Console, report: Report, paths: list[Path]) -> None:
    """The per-attempt table, the verdict line and where the report went (give it stdout)."""
    table = summary_table(console, report)
    if table is not None:
        console.print(table)
    else:
        _vertical(console, report)
    verdict(console, report)
    console.print(f"report: {escape(', '.join(str(p) for p in paths))}", soft_wrap=True)  # paths stay whole for copying


def verdict(console: Console, report: Report, one_line: bool = False) -> None:
    """The verdict: PASS or FAIL, and which policy; ``one_line``: never wrapped (--quiet)."""
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]{escape(report.summary)}[/]", soft_wrap=one_line)


def result(report: Report, paths: list[Path], quiet: bool = False, as_json: bool = False) -> None:
    """A finished validation's output: the summary on stdout; ``quiet``: only the verdict line;
    ``as_json``: report.json on stdout and the rest (unless quiet) on stderr."""
    if as_json:
        from fp16guard.report.json_format import JsonFormat

        write_stdout(JsonFormat().render(report))
    console = stderr_console() if as_json else stdout_console()
    if quiet:
        if not as_json:
            verdict(console, report, one_line=True)
    else:
        summary(console, report, paths)


def write_stdout(text: str) -> None:
    """Machine-readable output (JSON), as it is: no wrapping, no markup."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _pair(old, new, fmt, present=(True, True)) -> str:
    """"old -> new", or the one value when both agree; "-" for a side the run lacks."""
    a = fmt(old) if present[0] else "-"
    b = fmt(new) if present[1] else "-"
    return a if a == b else f"{a} -> {b}"


def _passed(value: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "reference"}[value]


def report_diff(console: Console, result, top: int = 5) -> None:
    """``fp16guard diff``: environment changes, a row per policy, the sequences whose cosine
    fell most, and the regressions (give it stdout)."""
    verdict_line = _pair(result.old_passed, result.new_passed, _passed)
    policies = _pair(result.old_policy, result.new_policy, lambda p: p or "none")
    console.print(f"verdict: {verdict_line} (policy {policies})", soft_wrap=True)
    if result.environment:
        table = Table(title="Environment changes", title_justify="left")
        for header in ("", "old", "new"):
            table.add_column(header, overflow="fold")
        for what, old, new in result.environment:
            table.add_row(what, str(old), str(new))
        console.print(table)
    else:
        console.print("environment: unchanged")
    table = Table(title="Per policy (old -> new)", title_justify="left")
    for header in ("policy", "verdict", "min cos", "kNN overlap", "rank corr", "tokens/s", "slowdown", "peak memory"):
        table.add_column(header, justify="left" if header in ("policy", "verdict") else "right", no_wrap=True)
    for change in result.policies:
        present = (change.in_old, change.in_new)
        table.add_row(
            change.policy + ("" if change.role == "attempt" else f" ({change.role})"),
            _pair(change.old_passed, change.new_passed, _passed, present),
            (_pair(change.old_min_cosine, change.new_min_cosine, format_cosine, present)
             if change.role != "reference" else "-"),
            _metric_cell(change.metric("knn_overlap_mean")),
            _metric_cell(change.metric("rank_correlation")),
            _pair(change.old_tokens_per_second, change.new_tokens_per_second, fmt_rate, present),
            fmt_ratio(change.slowdown),
            _pair(change.old_peak_memory_bytes, change.new_peak_memory_bytes, fmt_bytes, present),
        )
    console.print(table)
    if not result.speed_compared:
        console.print("[yellow]the runs are on different devices: speed is shown, not gated[/]")
    for change in result.policies:
        movers = [s for s in change.sequences if s.delta is not None and s.delta < 0][:top]
        if movers:
            console.print(f"[bold]{change.policy}[/]: largest falls in cosine")
            for seq in movers:
                mark = " [red](crossed the threshold)[/]" if seq.crossed else ""
                console.print(f"  {escape(seq.id)}: {format_cosine(seq.old)} -> {format_cosine(seq.new)}{mark}",
                              soft_wrap=True)
    _agreement_lines(console, result)
    if result:
        console.print(f"[bold green]no regression[/] (tolerance {result.tolerance:g}, agreement tolerance "
                      f"{result.agreement_tolerance:g}, max slowdown {result.max_slowdown:g}x)")
    else:
        for regression in result.regressions:
            console.print(f"[red]regression:[/] {escape(str(regression))}", soft_wrap=True)
        console.print(f"[bold red]REGRESSION: {len(result.regressions)} finding(s)[/]")


def _metric_cell(metric) -> str:
    """An agreement metric's "old -> new" cell; "-" where neither run has it."""
    if metric is None:
        return "-"
    return _pair(metric.old, metric.new, _metric_value(metric.key), (metric.in_old, metric.in_new))


def _metric_value(key: str):
    if key == "fp64_error_ratio":
        return lambda v: "NaN" if v is None else f"{v:,.0f}x"
    return format_cosine


def _agreement_lines(console: Console, result) -> None:
    """Per policy, the agreement metrics beyond the table's two, and which ones were not compared."""
    for change in result.policies:
        extra = [m for m in change.agreement if m.key not in ("knn_overlap_mean", "rank_correlation")]
        if extra:
            console.print(f"[bold]{change.policy}[/] agreement: " + "; ".join(
                f"{m.label} {_metric_cell(m)}" for m in extra), soft_wrap=True)
        one_run = [m.label for m in change.agreement if not (m.in_old and m.in_new)]
        other = [m.label for m in change.agreement if m.in_old and m.in_new and not m.compared]
        if one_run:
            console.print(f"{change.policy}: in one run only, not compared: " + ", ".join(one_run), soft_wrap=True)
        if other:
            console.print(f"{change.policy}: measured differently (another k, sample, probe or labels), not compared: "
                          + ", ".join(other), soft_wrap=True)


def catalog(console: Console, entries, policies) -> None:
    """The ``fp16guard list`` table: targets and models with their availability, then policies."""
    table = Table(title="Models (nothing is downloaded to check)", title_justify="left")
    for header in ("target", "name", "available", "description", "where"):
        table.add_column(header, overflow="fold")
    for entry in entries:
        cells = (entry.target, entry.name, "yes" if entry.available else "no", entry.description, entry.where)
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    console.print("hf: any encoder directory or hub id with `fp16guard validate hf --model PATH_OR_ID`")
    console.print("Policies: " + ", ".join(f"{name} ({p.describe()})" for name, p in policies.items()))


def embed_summary(console: Console, result) -> None:
    """What ``fp16guard embed`` wrote, under which policy, with the spot checks (give it stdout)."""
    console.print(f"[bold green]embedded {result.sequences} sequence(s)[/] into {escape(str(result.out))}",
                  soft_wrap=True)
    console.print(f"precision: {escape(result.policy_note)}", soft_wrap=True)
    layers = ", ".join(map(str, result.layers))
    console.print(f"layer{'s' if len(result.layers) > 1 else ''} {layers}; pooled FP32 embeddings"
                  + (" and per-residue states" if result.per_residue else ""))
    if result.spot_checks:
        share = ""
        if result.seconds > 0:
            share = f", {result.spot_seconds:.1f} s = {result.spot_seconds / result.seconds:.1%} of the embedding time"
        console.print(f"spot checks against FP32: {result.spot_checks} sequence(s), "
                      f"min cosine {format_cosine(result.spot_min_cosine)} (threshold {result.threshold}{share})")
    elif result.policy.is_full_precision:
        console.print("spot checks: none needed (FP32)")
    if result.compile_note:
        console.print(f"execution: {escape(result.compile_note)}", soft_wrap=True)
    rate = result.tokens_per_second
    first = result.first_batch_seconds
    console.print(f"{result.tokens} tokens embedded by this run in {result.seconds:.1f} s"
                  + (f" ({fmt_rate(rate)} tokens/s)" if rate else "")
                  + (f", the first batch done {first:.1f} s after start-up began" if first is not None else "")
                  + (f"; {result.resumed_shards} of {result.shards} shard(s) resumed from an earlier run"
                     if result.resumed_shards else ""))
    if result.truncated:
        console.print(f"[yellow]{result.truncated} sequence(s) longer than the model's limit were truncated[/]")
