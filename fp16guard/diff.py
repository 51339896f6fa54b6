"""``fp16guard.diff.diff_reports``, the path the README documents; the code is in fp16guard.report.diff."""

from fp16guard.report.diff import (
    MetricChange,
    PolicyChange,
    ReportDiff,
    SequenceChange,
    diff_reports,
    load_report,
)

__all__ = ["MetricChange", "PolicyChange", "ReportDiff", "SequenceChange", "diff_reports", "load_report"]
