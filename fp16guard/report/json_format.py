"""report.json: the machine-readable report."""

from __future__ import annotations

import json

from fp16guard.report.document import Report


class JsonFormat:
    """report.json: the machine-readable report with a versioned schema."""

    filename = "report.json"

    def render(self, report: Report) -> str:
        """The report's data as strict JSON (no NaN), indented."""
        return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
