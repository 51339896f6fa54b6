"""fp16guard.report.diff on hand-made reports: what counts as a regression, NaN/null cosines, speed
gated on the same device only, and unreadable input."""

from __future__ import annotations

import json
import math

import pytest

from fp16guard.errors import InputError
from fp16guard.report.diff import diff_reports, load_report
from fp16guard.report.document import Report


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
        "attempts": [
            attempt("fp32", {}, passed=None, role="reference", tps=300.0),
            attempt("fp16", fp16, passed, tps=tps),
        ],
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


def with_agreement(rep, mean=0.998, spearman=0.9999997, k=10, sequences=84, gates=None, minimum=0.9, **extra):
    """A schema-3 copy of ``rep`` whose fp16 pass carries agreement metrics."""
    data = {**rep.to_dict(), "schema_version": 3}
    data["thresholds"] = {**data["thresholds"], "min_knn_overlap": None, "min_rank_correlation": None, **(gates or {})}
    data["attempts"][1]["metrics"]["agreement"] = {
        "neighbours": {"k": k, "sequences": sequences, "of": sequences, "mean_overlap": mean, "min_overlap": minimum},
        "ranking": {"spearman": spearman, "pairs": sequences * (sequences - 1) // 2, "sequences": sequences},
        **extra,
    }
    return Report.from_dict(data)


def test_equal_agreement_metrics_are_no_regression():
    result = diff_reports(with_agreement(report(GOOD)), with_agreement(report(GOOD)))
    assert result and result.exit_code == 0
    fp16 = result.policies[1]
    assert [m.key for m in fp16.agreement] == ["knn_overlap_mean", "knn_overlap_min", "rank_correlation"]
    knn = fp16.metric("knn_overlap_mean")
    assert knn.delta == 0.0 and knn.label == "mean kNN overlap@10"


def test_a_lower_knn_overlap_is_a_regression_naming_the_metric():
    result = diff_reports(with_agreement(report(GOOD)), with_agreement(report(GOOD), mean=0.78, minimum=0.5))
    assert not result and result.exit_code == 1
    assert result.regressions == ("fp16: mean kNN overlap@10 fell by more than 0.01: 0.998000 -> 0.780000",)
    # Within --agreement-tolerance, and the minimum overlap (one near tie costs 0.1) is shown, not gated.
    assert diff_reports(with_agreement(report(GOOD)), with_agreement(report(GOOD), mean=0.992, minimum=0.5))
    lower = with_agreement(report(GOOD), mean=0.992)
    assert not diff_reports(with_agreement(report(GOOD)), lower, agreement_tolerance=1e-3)


def test_a_lower_rank_correlation_uses_the_cosine_tolerance():
    result = diff_reports(with_agreement(report(GOOD)), with_agreement(report(GOOD), spearman=0.95))
    assert result.regressions == ("fp16: rank correlation fell by more than 0.001: 1-3.0e-07 -> 0.950000",)
    assert diff_reports(with_agreement(report(GOOD)), with_agreement(report(GOOD), spearman=0.9995))


def test_crossing_news_agreement_gate_is_a_regression_even_within_the_tolerance():
    gates = {"min_knn_overlap": 0.9, "min_rank_correlation": 0.99}
    old = with_agreement(report(GOOD), mean=0.903, spearman=0.9905, gates=gates)
    new = with_agreement(report(GOOD), mean=0.898, spearman=0.9899, gates=gates)
    assert diff_reports(old, new).regressions == (
        "fp16: mean kNN overlap@10 fell below --min-knn-overlap 0.9: 0.903000 -> 0.898000",
        "fp16: rank correlation fell below --min-rank-correlation 0.99: 0.990500 -> 0.989900",
    )
    assert diff_reports(old, with_agreement(report(GOOD), mean=0.898, spearman=0.9899))  # no gate in NEW


def test_a_metric_that_became_nan_is_a_regression():
    new = with_agreement(report(GOOD))
    new.attempts[1].metrics["agreement"]["neighbours"]["mean_overlap"] = None  # NaN reads back as null
    result = diff_reports(with_agreement(report(GOOD)), new)
    assert result.regressions == ("fp16: mean kNN overlap@10 fell by more than 0.01: 0.998000 -> NaN",)
    assert result.policies[1].metric("knn_overlap_mean").delta == -math.inf
    assert json.loads(result.to_json())["policies"][1]["agreement"][0]["delta"] is None


def test_metrics_measured_differently_or_in_one_run_only_are_shown_not_compared():
    result = diff_reports(with_agreement(report(GOOD), k=5), with_agreement(report(GOOD), mean=0.5))
    knn = result.policies[1].metric("knn_overlap_mean")
    assert result and not knn.compared and knn.delta is None
    # schema 2 (no metrics) against schema 3 with poor ones, both ways round: nothing to compare.
    for old, new in [(report(GOOD), with_agreement(report(GOOD), mean=0.5, spearman=0.5)),
                     (with_agreement(report(GOOD)), report(GOOD))]:
        result = diff_reports(old, new)
        assert result and result.exit_code == 0, result.regressions
        assert all(not m.compared for m in result.policies[1].agreement)


def test_probe_and_labels_falls_are_regressions_and_the_fp64_ratio_is_shown():
    def extra(same, accuracy, ratio):
        return {"probe": {"classes": 2, "same_decision": same},
                "centroid": {"labelled": 60, "classes": 3, "accuracy": accuracy},
                "fp64": {"sequences": 32, "ratio": ratio}}

    result = diff_reports(with_agreement(report(GOOD), **extra(1.0, 0.95, 2500.0)),
                          with_agreement(report(GOOD), **extra(0.8, 0.9, 90000.0)))
    assert result.regressions == (
        "fp16: probe same decision fell by more than 0.01: 1 -> 0.800000",
        "fp16: nearest-centroid accuracy fell by more than 0.01: 0.950000 -> 0.900000",
    )
    data = json.loads(result.to_json())["policies"][1]["agreement"]
    assert data[-1] == {"key": "fp64_error_ratio", "label": "error vs FP64 / FP32's", "old": 2500.0, "new": 90000.0,
                        "in_old": True, "in_new": True, "compared": True, "gated": False, "delta": 87500.0}
