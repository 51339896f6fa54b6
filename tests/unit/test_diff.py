"""fp16guard.diff on hand-made reports: what counts as a regression, NaN/null cosines, speed
gated on the same device only, and unreadable input."""

from __future__ import annotations

import json
import math

import pytest

from fp16guard.diff import diff_reports, load_report
from fp16guard.errors import InputError
from fp16guard.report import Report


def attempt(name, cosines, passed=True, role="attempt", tps=1000.0, memory=2**30):
    finite = [c for c in cosines.values() if c is not None]
    return {
        "policy": {"name": name}, "description": name, "role": role, "fp32_modules": [], "notes": [],
        "timing": {"tokens_per_second": tps}, "peak_memory_bytes": memory, "speedup_vs_fp32": None,
        "memory_ratio_vs_fp32": None, "passed": passed, "reason": "",
        "metrics": None if role == "reference" else {
            "min_cosine": min(finite) if len(finite) == len(cosines) else None,
            "cosines": [{"id": i, "cosine": c} for i, c in cosines.items()],
        },
    }


def report(fp16, passed=True, device="H200", torch="2.11.0", tps=1000.0, threshold=0.99):
    return Report.from_dict({
        "tool": {"version": "0.1.0"}, "created": "now",
        "environment": {"torch": torch, "device_name": device, "cuda": "12.8"},
        "model": {"name": "m", "weights_sha256": "aa"}, "dataset": {"name": "d", "sha256": "bb"},
        "thresholds": {"min_cosine": threshold},
        "attempts": [attempt("fp32", {}, passed=None, role="reference", tps=300.0), attempt("fp16", fp16, passed, tps=tps)],
        "passed": passed, "passing_policy": "fp16" if passed else None, "summary": "", "schema_version": 2,
    })


GOOD = {"a": 0.9999, "b": 0.9995, "c": 0.999}


def test_the_same_run_is_no_regression():
    result = diff_reports(report(GOOD), report(GOOD))
    assert result and result.exit_code == 0 and not result.regressions and not result.environment
    assert [c.slowdown for c in result.policies] == [1.0, 1.0]


def test_a_sequence_crossing_the_threshold_is_named_and_nan_is_the_worst():
    new = report({"a": 0.9999, "b": None, "c": 0.98}, passed=False)
    result = diff_reports(report(GOOD), new)
    assert not result and result.exit_code == 1
    fp16 = result.policies[1]
    assert fp16.crossed == ("b", "c")
    assert [s.id for s in fp16.sequences] == ["b", "c", "a"]  # largest fall first; NaN falls furthest
    assert fp16.sequences[0].delta == -math.inf
    text = "\n".join(result.regressions)
    assert "PASS (fp16) became FAIL" in text and "fp16: passed, now fails" in text
    assert "2 sequence(s) fell below 0.99: b, c" in text


def test_a_fall_beyond_the_tolerance_is_a_regression_within_it_is_not():
    new = report({"a": 0.9989, "b": 0.9995, "c": 0.999})  # a falls by 1e-3, above 0.99
    assert diff_reports(report(GOOD), new, tolerance=2e-3)
    result = diff_reports(report(GOOD), new, tolerance=5e-4)
    assert result.regressions == ("fp16: 1 sequence(s) fell by more than 0.0005: a",)


def test_improvements_and_a_cosine_that_was_nan_are_no_regression():
    old = report({"a": None, "b": 0.95, "c": 0.999}, passed=False)
    result = diff_reports(old, report(GOOD))
    assert result, result.regressions
    assert [s.delta for s in result.policies[1].sequences][-1] is None  # NaN -> finite: not comparable


def test_a_slowdown_is_gated_on_the_same_device_only():
    slow = report(GOOD, tps=700.0)
    result = diff_reports(report(GOOD), slow)
    assert result.regressions == ("fp16: 1.43x slower (more than 1.25x)",)
    assert diff_reports(report(GOOD), slow, max_slowdown=1.5)
    other = diff_reports(report(GOOD), report(GOOD, device="A100", tps=700.0))
    assert other and not other.speed_compared and ("device", "H200", "A100") in other.environment


def test_environment_differences_are_listed():
    result = diff_reports(report(GOOD), report(GOOD, torch="2.13.0"))
    assert result.environment == (("torch", "2.11.0", "2.13.0"),)


def test_the_json_is_valid_without_nan():
    result = diff_reports(report(GOOD), report({"a": None, "b": 0.9995, "c": 0.999}, passed=False))
    data = json.loads(result.to_json())
    assert data["passed"] is False and data["regressions"] == list(result.regressions)
    fp16 = data["policies"][1]
    assert fp16["sequences"][0] == {"id": "a", "old": 0.9999, "new": None, "crossed": True, "delta": None}
    assert fp16["slowdown"] == 1.0


def test_bad_options_are_input_errors():
    with pytest.raises(InputError):
        diff_reports(report(GOOD), report(GOOD), max_slowdown=0.5)


def test_unreadable_reports_are_input_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    data = report(GOOD).to_dict()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({**data, "schema_version": 1}))
    for path, words in [(tmp_path / "none", "cannot read"), (tmp_path / "bad.json", "is not JSON"),
                        (tmp_path / "old", "schema version 1")]:
        with pytest.raises(InputError, match=words) as caught:
            load_report(path)
        assert caught.value.exit_code == 2
    (tmp_path / "good.json").write_text(json.dumps(data))
    assert load_report(tmp_path / "good.json").passed


def test_a_schema_2_report_compares_with_a_schema_3_report(tmp_path):
    """Reports from before the agreement metrics (schema 2) stay comparable with newer ones."""
    old = report(GOOD).to_dict()
    assert old["schema_version"] == 2
    new = {**report(GOOD).to_dict(), "schema_version": 3}
    new["attempts"][1]["metrics"]["agreement"] = {"neighbours": {"k": 2, "mean_overlap": 1.0}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    result = diff_reports(load_report(tmp_path / "old.json"), load_report(tmp_path / "new.json"))
    assert result and result.exit_code == 0
