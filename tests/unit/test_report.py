"""Report: JSON schema round trip, the three writers, exit codes and atomic writes."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
import torch

import fp16guard.io.outputs as outputs_module
from fp16guard.core.config import Thresholds
from fp16guard.io.outputs import write_text_atomic
from fp16guard.numerics.compare import Comparison, compare
from fp16guard.numerics.metrics import TokenStats
from fp16guard.numerics.policy import FP16, FP16_LN32, FP32, Policy
from fp16guard.report.document import SCHEMA_VERSION, Attempt, Report, finite_or_none, read_report
from fp16guard.report.writer import write_report

IDS = ["P1", "P2", "P3", "P4"]
OUTPUT_FILES = {"report.json", "report.md", "junit.xml", "report.html"}


# --------------------------------------------------------------------------- building a report


def _timing(seconds: float, tokens: int = 1000) -> dict:
    timing = {"build_seconds": 0.5, "warmup_seconds": 0.25, "seconds": seconds, "tokens": tokens, "padded_tokens": 1200}
    timing["tokens_per_second"] = tokens / seconds if seconds > 0 else math.nan
    return finite_or_none(timing)


def _metrics(comparison: Comparison) -> dict:
    """The metrics dict the way fp16guard.workflows.validate._attempt shapes it."""
    return finite_or_none(comparison.to_dict())


def _attempt(policy: Policy, comparison: Comparison | None, seconds: float, fp32_modules=()) -> Attempt:
    return Attempt(
        policy=policy.to_dict(),
        description=policy.describe(),
        role="reference" if comparison is None else "attempt",
        fp32_modules=list(fp32_modules),
        notes=[] if comparison is None else [f"note for {policy.name}"],
        timing=_timing(seconds),
        peak_memory_bytes=None if comparison is None else 3 * 1024**3,
        speedup_vs_fp32=None if comparison is None else 4.0 / seconds,
        memory_ratio_vs_fp32=None if comparison is None else 0.5,
        passed=None if comparison is None else comparison.passed,
        reason="FP32 reference" if comparison is None else comparison.reason,
        metrics=None if comparison is None else _metrics(comparison),
    )


def _comparisons() -> tuple[Comparison, Comparison]:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 8, generator=gen)
    # fp16: one NaN row -> fails; token stats with a NaN-free batch.
    bad = ref.clone()
    bad[1, 2] = math.nan
    hidden_ref = torch.randn(2, 3, 8, generator=gen)
    hidden_cand = hidden_ref + 0.01 * torch.randn(2, 3, 8, generator=gen)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    tokens = TokenStats.of_batch(hidden_ref, hidden_cand, mask)
    failing = compare(ref, bad, IDS, Thresholds(), tokens=tokens, token_nonfinite=(1, 0))
    # fp16+ln32: a tiny perturbation -> passes; token stats with no tokens -> None.
    close = ref + 1e-4 * torch.randn(4, 8, generator=gen)
    passing = compare(ref, close, IDS, Thresholds(), tokens=TokenStats())
    assert not failing and passing
    return failing, passing


def make_report(passed: bool = True, truncated: list[str] | None = None) -> Report:
    failing, passing = _comparisons()
    attempts = [
        _attempt(FP32, None, 4.0),
        _attempt(FP16, failing, 1.0),
        _attempt(FP16_LN32, passing if passed else replace(failing, reason="still NaN"), 1.6,
                 [f"layers.{i}.norm" for i in range(10)]),
    ]
    truncated = [] if truncated is None else truncated
    return Report(
        tool={"name": "fp16guard", "version": "0.1.0"},
        created="2024-05-01T12:00:00+00:00",
        environment={
            "python": "3.11.7", "platform": "Linux", "torch": "2.13.0", "cuda": None,
            "device": "cpu", "device_name": "x86_64", "fair-esm": "2.0.0", "transformers": None,
        },
        model={
            "target": "esm2", "name": "esm2_t6_8M_UR50D", "source": "/weights/esm2.pt",
            "parameters": 7_840_763, "weights_sha256": "ab" * 32, "layer": 6, "num_layers": 6,
        },
        dataset={
            "name": "protein_reference.fasta", "source": "bundled:protein_reference.fasta",
            "sha256": "cd" * 32, "sequences": 4,
            "lengths": {"count": 4, "min": 10, "median": 250.5, "mean": 400.25, "max": 1100, "total": 1601},
            "max_length": 1022, "truncated": truncated, "max_tokens": 8192, "batches": 2,
        },
        thresholds={"min_cosine": 0.99, "allow_nonfinite": False},
        attempts=attempts,
        passed=passed,
        passing_policy="fp16+ln32" if passed else None,
        summary=(
            "PASS: esm2_t6_8M_UR50D meets the threshold under policy 'fp16+ln32' (float16 compute, FP32 layer norms)."
            if passed
            else "FAIL: no policy met the threshold (fp16, fp16+ln32 tried); keep this model in FP32."
        ),
        notes=["FP16 on CPU runs slowly"],
    )


@pytest.fixture()
def report() -> Report:
    return make_report(passed=True)


@pytest.fixture()
def failing_report() -> Report:
    return make_report(passed=False, truncated=["P3", "P4"])


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- the fixture itself


def test_fixture_has_none_for_nonfinite_metrics(report):
    fp16 = report.attempts[1].metrics
    assert fp16["cosines"][1] == {"id": "P2", "cosine": None}  # the NaN row
    assert [c["id"] for c in fp16["cosines"]] == IDS
    assert fp16["worst"][0] == ["P2", None]
    assert fp16["min_cosine"] is None and fp16["nonfinite_sequences"] == 1
    assert isinstance(fp16["tokens"], dict)
    assert report.attempts[2].metrics["tokens"] is None
    assert report.attempts[0].metrics is None
    assert set(fp16) == {f for f in Comparison.__dataclass_fields__ if f not in ("passed", "reason", "ids")}


def test_finite_or_none_recursive():
    value = {"a": math.nan, "b": [1.0, math.inf, (2, -math.inf)], "c": {"d": 3.5, "e": "x"}, "f": True, "g": 7}
    expected = {"a": None, "b": [1.0, None, [2, None]], "c": {"d": 3.5, "e": "x"}, "f": True, "g": 7}
    assert finite_or_none(value) == expected


# --------------------------------------------------------------------------- JSON round trip


@pytest.mark.parametrize("passed", [True, False])
def test_json_round_trip(passed):
    original = make_report(passed=passed, truncated=["P3"])
    text = json.dumps(original.to_dict(), allow_nan=False)
    again = Report.from_dict(json.loads(text))
    assert again == original
    assert again.attempts[1].name == "fp16"
    assert again.exit_code == original.exit_code


def test_to_dict_replaces_nonfinite_top_level_values(report):
    report.attempts[1].speedup_vs_fp32 = math.inf
    report.attempts[1].timing["tokens_per_second"] = math.nan
    data = report.to_dict()
    assert data["attempts"][1]["speedup_vs_fp32"] is None
    assert data["attempts"][1]["timing"]["tokens_per_second"] is None
    json.dumps(data, allow_nan=False)  # does not raise


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None, "1"])
def test_schema_version_mismatch_raises(report, version):
    data = json.loads(json.dumps(report.to_dict()))
    data["schema_version"] = version
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict(data)


def test_missing_schema_version_raises(report):
    data = report.to_dict()
    del data["schema_version"]
    with pytest.raises(ValueError):
        Report.from_dict(data)


# --------------------------------------------------------------------------- writers


def test_write_report_writes_four_files_and_no_temporaries(report, tmp_path):
    out = tmp_path / "nested" / "out"
    paths = write_report(report, out)
    assert {p.name for p in paths} == OUTPUT_FILES
    assert all(p.parent == out for p in paths)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    # Written again over the old files: still exactly three.
    write_report(report, out)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES


@pytest.mark.parametrize("passed", [True, False])
def test_report_json_is_strict_json_and_reads_back(tmp_path, passed):
    original = make_report(passed=passed)
    write_report(original, tmp_path)
    text = (tmp_path / "report.json").read_text()
    data = _strict_loads(text)
    assert not re.search(r"[:\[,]\s*-?(NaN|Infinity)\b", text)  # no bare NaN/Infinity values
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["passed"] is passed
    assert read_report(tmp_path / "report.json") == original


def test_junit_xml(tmp_path):
    report = make_report(passed=True)
    write_report(report, tmp_path)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.tag == "testsuite"
    assert suite.get("tests") == "2"
    assert suite.get("failures") == "1"
    assert suite.get("errors") == "0"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["fp16", "fp16+ln32"]
    failures = {c.get("name"): c.find("failure") for c in cases}
    assert failures["fp16"] is not None
    assert failures["fp16+ln32"] is None
    assert failures["fp16"].get("message") == report.attempts[1].reason
    assert "NaN" in failures["fp16"].get("message")
    assert all(c.get("classname") == "fp16guard.esm2.esm2_t6_8M_UR50D" for c in cases)
    assert cases[0].get("time") == "1.000"


def test_junit_xml_all_failing(tmp_path, failing_report):
    write_report(failing_report, tmp_path)
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 2
    assert suite.get("tests") == "2" and suite.get("failures") == "2"
    assert all(len(c.findall("failure")) == 1 for c in cases)
    assert cases[1].find("failure").get("message") == "still NaN"


def _table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def test_markdown_report(tmp_path, report):
    write_report(report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# fp16guard PASS: esm2_t6_8M_UR50D")
    assert report.summary in text.splitlines()
    table = _table(text)
    assert len(table) == 2 + len(report.attempts)  # header, separator, one row per attempt
    rows = table[2:]
    assert rows[0].startswith("| fp32 (ref) |")
    assert rows[1].startswith("| fp16 |") and "FAIL" in rows[1]
    assert rows[2].startswith("| fp16+ln32 |") and "PASS" in rows[2]
    for name in ("fp32", "fp16", "fp16+ln32"):
        assert f"### {name}:" in text
    assert "`P2` NaN" in text  # the NaN row, as None, is shown as NaN
    assert "and 2 more" in text  # 10 FP32 modules, 8 shown
    assert "Truncated sequences" not in text
    assert "7,840,763 parameters" in text


def test_markdown_report_lists_truncated_sequences(tmp_path, failing_report):
    write_report(failing_report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# fp16guard FAIL:")
    assert failing_report.summary in text
    assert "## Truncated sequences" in text
    assert "`P3`, `P4`" in text
    assert "2 truncated to 1022" in text
    assert len(_table(text)) == 2 + len(failing_report.attempts)


def test_exit_code(report, failing_report):
    assert report.exit_code == 0
    assert failing_report.exit_code == 1


# --------------------------------------------------------------------------- atomic writes


def test_write_text_atomic_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    write_text_atomic(path, "one\n")
    assert path.read_text() == "one\n"
    write_text_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_write_text_atomic_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("old content\n")

    def refuse(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(outputs_module.os, "replace", refuse)
    with pytest.raises(OSError, match="disk on fire"):
        write_text_atomic(path, "new content\n")
    monkeypatch.undo()
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_text_atomic_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "junit.xml"
    path.write_text("<old/>\n")

    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs_module.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "<new/>\n")
    monkeypatch.undo()
    assert path.read_text() == "<old/>\n"
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]


def test_write_report_rendering_error_leaves_old_report(tmp_path, report):
    write_report(report, tmp_path)
    before = {name: (tmp_path / name).read_text() for name in OUTPUT_FILES}
    broken = make_report(passed=False)
    broken.notes = [{"not", "json"}]  # a set: json.dumps raises before anything is written
    with pytest.raises(TypeError):
        write_report(broken, tmp_path)
    after = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert after == before


# --------------------------------------------------------------------------- NaN-aware metrics (issue 12)


def _nan_one_of_three() -> Comparison:
    ref = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    cand = ref.clone()
    cand[1, 0] = math.nan
    return compare(ref, cand, ["s1", "s2", "s3"], Thresholds())


def test_report_json_min_cosine_is_null_beside_the_nonfinite_count(tmp_path, report):
    report.attempts[1].metrics = _metrics(_nan_one_of_three())
    write_report(report, tmp_path)
    data = _strict_loads((tmp_path / "report.json").read_text())
    metrics = data["attempts"][1]["metrics"]
    assert metrics["min_cosine"] is None and metrics["mean_cosine"] is None
    assert metrics["nonfinite_sequences"] == 1 and metrics["sequences"] == 3
    assert metrics["cosines"] == [
        {"id": "s1", "cosine": 1.0}, {"id": "s2", "cosine": None}, {"id": "s3", "cosine": 1.0},
    ]
    assert metrics["worst"][0] == ["s2", None]
    assert read_report(tmp_path / "report.json") == report


def test_a_schema_1_report_is_refused_by_name(tmp_path, report):
    data = report.to_dict()
    data["schema_version"] = 1
    with pytest.raises(ValueError, match="schema version 1"):
        Report.from_dict(data)


def _near_one_report(cosine: float, threshold: float) -> Report:
    """A report whose fp16 attempt failed with one sequence just below ``threshold``."""
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    cand = ref.clone()
    u = torch.zeros(8, dtype=torch.float64)
    u[0], u[1] = -ref[2, 1], ref[2, 0]
    u = u / u.norm() * ref[2].norm()
    cand[2] = cosine * ref[2] + math.sqrt(1 - cosine**2) * u
    failing = compare(ref, cand, ["seq0", "seq1", "seq2"], Thresholds(min_cosine=threshold))
    assert not failing and failing.worst[0][0] == "seq2"
    report = make_report(passed=False)
    report.thresholds["min_cosine"] = threshold
    report.attempts[1].metrics = _metrics(failing)
    report.attempts[1].reason = failing.reason
    return report


def _cosines_shown(text: str) -> list[float]:
    """Every cosine-looking figure in ``text``, as a number: 0.999999 or 1-6.0e-08 (1 - gap)."""
    found = [1 - float(gap) for gap in re.findall(r"\b1-(\d\.\de-\d\d)\b", text)]
    found += [float(x) for x in re.findall(r"(?<![\d.e-])(0\.\d{6}|1\.0+)(?![\d])", text)]
    return found


@pytest.mark.parametrize("cosine, threshold", [(0.99999985, 0.9999999), (0.99999994, 0.99999995), (0.98999996, 0.99)])
def test_markdown_and_junit_never_show_a_failing_cosine_at_or_above_the_threshold(tmp_path, cosine, threshold):
    """Issue 12: six decimals printed `worst seq2: 1.000000` for a sequence below 0.9999999."""
    report = _near_one_report(cosine, threshold)
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    fp16 = markdown.split("### fp16:")[1].split("###")[0]
    row = next(line for line in markdown.splitlines() if line.startswith("| fp16 |"))
    junit = ET.parse(tmp_path / "junit.xml").getroot().find("testcase")
    for text in (fp16, row, junit.find("failure").get("message"), junit.find("system-out").text):
        shown = _cosines_shown(text)
        assert shown, text
        assert all(value < threshold for value in shown[:1]), text
        assert "1.000000" not in text and f"{threshold:.6f}" not in text, text
    assert "`seq2` " in fp16 and f"`seq2` {report.attempts[1].metrics['worst'][0][1]:.6f}" not in fp16


# --------------------------------------------------------------------------- the shared cells (report/text.py)


def test_shared_cells_round_down_and_name_what_is_missing():
    from fp16guard.report.text import fmt_change, fmt_percent, fmt_rounded_down, fmt_scientific, gates_clause

    assert fmt_rounded_down(0.8999, 3) == "0.899" and fmt_rounded_down(0.3, 1) == "0.3"
    assert fmt_rounded_down(None, 3) == fmt_rounded_down(math.nan, 3) == "NaN"
    assert fmt_percent(0.99999) == "99.9%" and fmt_percent(math.inf) == "NaN"
    assert fmt_scientific(0.0012345) == "1.234e-03" and fmt_scientific(None) == "NaN"
    assert fmt_change(0.99, 0.999) == "+9.00e-03" and fmt_change(None, 0.9) == "n/a"
    assert gates_clause({"min_knn_overlap": None}) == "; agreement metrics reported, not gated"
    assert gates_clause({"min_knn_overlap": 0.9, "min_rank_correlation": 0.99}) == (
        "; gates: mean kNN overlap >= 0.9, rank correlation >= 0.99"
    )


def test_verdict_labels_by_role(report):
    from fp16guard.report.text import verdict_label

    reference, fp16, passing = report.attempts
    assert [verdict_label(a) for a in report.attempts] == ["reference", "FAIL", "PASS"]
    fast = replace(passing, role="fast")
    assert verdict_label(fast, recommended=fast.name) == "PASS (fast)"
    assert verdict_label(fast, recommended="other") == "PASS (variant)"
    assert verdict_label(replace(fp16, role="comparison")) == "fail (info)"
