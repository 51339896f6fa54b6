"""junit.xml: one test case per attempt, so CI systems show each policy."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from fp16guard.core.formatting import format_cosine
from fp16guard.report.document import Attempt, Report
from fp16guard.report.text import agreement_lines, fmt_rate


class JUnitFormat:
    """junit.xml: one test case per attempt, so CI systems show each policy."""

    filename = "junit.xml"

    def render(self, report: Report) -> str:
        """A testsuite of the ladder's attempts (the reference and passes beside the ladder are not tests)."""
        attempts = [a for a in report.attempts if a.role == "attempt"]
        suite = ET.Element(
            "testsuite",
            name=f"fp16guard.{report.model['target']}",
            tests=str(len(attempts)),
            failures=str(sum(1 for a in attempts if not a.passed)),
            errors="0",
            timestamp=report.created,
        )
        for attempt in attempts:
            _add_case(suite, f"fp16guard.{report.model['target']}.{report.model['name']}", attempt)
        ET.indent(suite)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _add_case(suite: ET.Element, classname: str, attempt: Attempt) -> None:
    """One attempt as a test case of ``suite``: its figures, its failure, its summary as output."""
    case = ET.SubElement(suite, "testcase", classname=classname, name=attempt.name,
                         time=f"{attempt.timing.get('seconds') or 0:.3f}")
    m = attempt.metrics or {}
    properties = junit_properties(m)
    if properties:  # first, as in a testsuite (GitLab and Jenkins read them per test case)
        element = ET.SubElement(case, "properties")
        for name, value in properties.items():
            ET.SubElement(element, "property", name=name, value=value)
    if not attempt.passed:
        failure = ET.SubElement(case, "failure", message=attempt.reason, type="AccuracyFailure")
        failure.text = attempt.reason
    out = ET.SubElement(case, "system-out")
    out.text = "; ".join([
        f"{attempt.description}; min cosine {format_cosine(m.get('min_cosine'))}; "
        f"non-finite sequences {m.get('nonfinite_sequences', 0)}; "
        f"tokens/s {fmt_rate(attempt.timing.get('tokens_per_second'))}",
        *agreement_lines(m.get("agreement")),
    ])


def junit_properties(metrics: dict) -> dict[str, str]:
    """The figures a CI system can chart, as JUnit test-case properties (name -> text)."""
    if not metrics:
        return {}
    agreement = metrics.get("agreement") or {}
    figures = {
        "min_cosine": metrics.get("min_cosine"),
        "p1_token_cosine": (metrics.get("tokens") or {}).get("p1_cosine"),
        "knn_k": (agreement.get("neighbours") or {}).get("k"),
        "knn_overlap_mean": (agreement.get("neighbours") or {}).get("mean_overlap"),
        "knn_overlap_min": (agreement.get("neighbours") or {}).get("min_overlap"),
        "rank_correlation": (agreement.get("ranking") or {}).get("spearman"),
        "probe_same_decision": (agreement.get("probe") or {}).get("same_decision"),
        "probe_max_logit_change": (agreement.get("probe") or {}).get("max_logit_change"),
        "centroid_accuracy_fp32": (agreement.get("centroid") or {}).get("fp32_accuracy"),
        "centroid_accuracy": (agreement.get("centroid") or {}).get("accuracy"),
        "fp64_error_ratio": (agreement.get("fp64") or {}).get("ratio"),
    }
    present = {k: v for k, v in figures.items() if k in ("min_cosine",) or v is not None or _present(agreement, k)}
    return {k: "NaN" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(v)
            for k, v in present.items()}


def _present(agreement: dict, key: str) -> bool:
    """Whether the metric behind a JUnit property was measured (a NaN figure is still shown)."""
    section = {"knn": "neighbours", "rank": "ranking", "probe": "probe", "centroid": "centroid", "fp64": "fp64"}
    return any(key.startswith(prefix) and name in agreement for prefix, name in section.items())
