"""What `fp16guard validate` tells a CI system besides its exit code: on GitHub Actions, the
Markdown report in the job's step summary and, on failure, an ``::error`` annotation."""

from __future__ import annotations

import os
from pathlib import Path

from fp16guard.core.formatting import format_cosine
from fp16guard.report.document import Report
from fp16guard.report.markdown import MarkdownFormat

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
#: GitHub shows at most 1 MiB of step summary per step; a longer report.md is cut before its
#: per-attempt sections (the verdict and the attempts table stay).
SUMMARY_LIMIT = 1024 * 1024
CUT_AT = "\n## Attempts\n"


def on_github(environ=os.environ) -> bool:
    """True under GitHub Actions (or wherever a step summary file is given)."""
    return environ.get("GITHUB_ACTIONS") == "true" or bool(environ.get(STEP_SUMMARY_ENV))


def step_summary(report: Report) -> str:
    """report.md's text, or its head (verdict, settings, attempts table) if over SUMMARY_LIMIT."""
    text = MarkdownFormat().render(report)
    if len(text.encode()) <= SUMMARY_LIMIT or CUT_AT not in text:
        return text
    return text[: text.index(CUT_AT)] + "\n_Per-attempt details left out (over GitHub's 1 MiB); see report.md._\n"


def append_step_summary(report: Report, environ=os.environ) -> Path | None:
    """Append the summary to $GITHUB_STEP_SUMMARY when it is set; returns the file (OSError if
    it cannot be written)."""
    target = environ.get(STEP_SUMMARY_ENV)
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(step_summary(report) + "\n")
    return path


def error_annotation(report: Report) -> str | None:
    """A GitHub ``::error`` workflow command for a failed run, naming the worst sequence of the
    last policy tried (the one that kept the most in FP32); None for a run that passed."""
    if report.passed:
        return None
    tried = [a for a in report.attempts if a.role == "attempt" and a.metrics]
    message = report.summary
    if tried:
        last = tried[-1]
        sequence, cosine = last.metrics["worst"][0]
        metrics = last.metrics
        if metrics.get("below_threshold") or metrics.get("nonfinite_sequences") or metrics.get("min_cosine") is None:
            message += (f" Worst sequence under policy {last.name}: {sequence} (cosine {format_cosine(cosine)}, "
                        f"threshold {report.thresholds['min_cosine']}).")
        else:  # every cosine passed: an agreement gate (--min-knn-overlap, ...) failed, and its reason names it
            message += f" Policy {last.name}: {last.reason}."
    return f"::error title=fp16guard::{_escape_data(message)}"


def _escape_data(text: str) -> str:
    """Escape a workflow command's message as GitHub's runner expects (%, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
