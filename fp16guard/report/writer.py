"""Writing a report: every format into its directory, and the recommended policy into its file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from fp16guard.errors import OutputError
from fp16guard.io.outputs import write_text_atomic
from fp16guard.report.document import Report
from fp16guard.report.html import HtmlFormat
from fp16guard.report.json_format import JsonFormat
from fp16guard.report.junit import JUnitFormat
from fp16guard.report.markdown import MarkdownFormat
from fp16guard.report.plot import plot_profile


class ReportFormat(Protocol):
    """One output format of a report: the file it is written to in ``--out``, and its text."""

    filename: str

    def render(self, report: Report) -> str:
        """The whole file for ``report``."""
        ...


#: Every format a run writes into ``--out``, in the order they are written.
FORMATS: tuple[ReportFormat, ...] = (JsonFormat(), MarkdownFormat(), JUnitFormat(), HtmlFormat())


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write every format into ``out_dir``; returns the paths written. OutputError (exit 3) if
    a file cannot be written."""
    out = Path(out_dir)
    # Render everything before writing anything, so a failure cannot mix old and new files.
    rendered = [(out / fmt.filename, fmt.render(report)) for fmt in FORMATS]
    path = out
    try:
        for path, text in rendered:
            write_text_atomic(path, text)
        path = out / "profile.png"
        plot = plot_profile(report, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    paths = [path for path, _ in rendered]
    return paths + ([plot] if plot else [])


POLICY_FILE_VERSION = 1


def write_policy(report: Report, path: str | Path) -> Path:
    """Save the recommended policy (the policy that passed, or its faster fast-attention variant
    that passed too), with what it was validated on, for ``apply_policy(model, path)``."""
    if not report.passing_policy:
        raise ValueError("no policy passed, so there is none to save")
    name = report.recommended_policy or report.passing_policy
    attempt = next(a for a in report.attempts if a.role in ("attempt", "fast") and a.name == name and a.passed)
    document = {
        "fp16guard_policy": POLICY_FILE_VERSION,
        "policy": attempt.policy,
        "fp32_modules": attempt.fp32_modules,
        "validated": {
            "model": report.model["name"],
            "target": report.model["target"],
            "weights_sha256": report.model["weights_sha256"],
            "dataset_sha256": report.dataset["sha256"],
            "min_cosine": (attempt.metrics or {}).get("min_cosine"),
            "threshold": report.thresholds["min_cosine"],
            "device": report.environment.get("device_name"),
            "fp16guard": report.tool["version"],
            "created": report.created,
        },
    }
    path = Path(path)
    try:
        write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the policy to {path}: {exc.strerror or exc}") from None
    return path
