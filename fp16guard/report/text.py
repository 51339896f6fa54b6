"""Cells and sentences shared by every writer of a report (terminal, Markdown, JUnit, HTML).

Pure functions of a report's plain data; they import no writer, so every writer can use them.
Figures that a threshold judges are rounded down, never up, so that one below a gate never
prints at or above it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fp16guard.core.formatting import format_cosine

if TYPE_CHECKING:
    from fp16guard.report.document import Attempt, Report


def fmt_rounded_down(value: float | None, places: int) -> str:
    """``value`` with ``places`` decimals, rounded down (so 0.8999 never shows as 0.900); "NaN"
    for None or a non-finite value."""
    if value is None or not math.isfinite(value):
        return "NaN"
    scale = 10**places
    # The 1e-9 keeps a value that is exactly on a decimal (0.3 stored as 0.29999...) on it.
    return f"{math.floor(value * scale + 1e-9) / scale:.{places}f}"


def fmt_percent(value: float | None) -> str:
    """A share as a percentage with one decimal, rounded down ("99.9%"); "NaN" for none."""
    if value is None or not math.isfinite(value):
        return "NaN"
    return f"{math.floor(value * 1000) / 10:.1f}%"


def fmt_scientific(value: float | None) -> str:
    """An error figure in scientific notation with four digits ("1.234e-03"); "NaN" for None."""
    return "NaN" if value is None else f"{value:.3e}"


def fmt_change(before: float | None, after: float | None) -> str:
    """``after - before`` with its sign ("+1.20e-05"); "n/a" when either is missing."""
    if before is None or after is None:
        return "n/a"
    return f"{after - before:+.2e}"


def fmt_rate(value: float | None) -> str:
    """A throughput (tokens/s) with thousands separators and no decimals; "n/a" for None."""
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio to FP32 ("2.45x"); "n/a" for None."""
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_bytes(value: int | None) -> str:
    """A size in GiB with two decimals; "n/a" for None."""
    if value is None:
        return "n/a"
    return f"{value / 1024**3:.2f} GiB"


def knn_cell(metrics: dict | None) -> str:
    """The summary cell of neighbour agreement: mean overlap@k ("0.987@10"); "-" for none."""
    neighbours = ((metrics or {}).get("agreement") or {}).get("neighbours")
    return f"{fmt_rounded_down(neighbours['mean_overlap'], 3)}@{neighbours['k']}" if neighbours else "-"


def rank_cell(metrics: dict | None) -> str:
    """The summary cell of ranking agreement: Spearman of pairwise cosines, shown by the cosine
    rule (never rounded up: "1-3.0e-07"); "-" for none."""
    ranking = ((metrics or {}).get("agreement") or {}).get("ranking")
    return format_cosine(ranking["spearman"]) if ranking else "-"


def verdict_label(attempt: Attempt, recommended: str | None = None) -> str:
    """An attempt's verdict as the tables show it: "reference", "PASS", "FAIL", "PASS (fast)" for
    the recommended fast variant, "... (variant)" for one that was not, "pass (info)" for a
    comparison beside the ladder."""
    if attempt.passed is None:
        return "reference"
    verdict = "PASS" if attempt.passed else "FAIL"
    if attempt.role == "fast":
        # "fast" only for the variant that was recommended, i.e. measured faster.
        return verdict + (" (fast)" if attempt.passed and attempt.name == recommended else " (variant)")
    return verdict.lower() + " (info)" if attempt.role == "comparison" else verdict


def gates_clause(thresholds: dict) -> str:
    """The agreement gates the run set, as the end of the threshold sentence ("; gates: ...")."""
    gates = [
        f"mean kNN overlap >= {thresholds['min_knn_overlap']}" if thresholds.get("min_knn_overlap") is not None else "",
        f"rank correlation >= {thresholds['min_rank_correlation']}"
        if thresholds.get("min_rank_correlation") is not None else "",
    ]
    gates = [g for g in gates if g]
    return ("; gates: " + ", ".join(gates)) if gates else "; agreement metrics reported, not gated"


def agreement_lines(agreement: dict | None) -> list[str]:
    """Plain-text sentences (no markup) on an attempt's agreement metrics, for report.md,
    report.html and JUnit: neighbours and ranking, probe, centroid, FP64 floor, decisions."""
    if not agreement:
        return []
    sentences = (
        (_neighbours_sentence, "neighbours"),
        (_ranking_sentence, "ranking"),
        (_probe_sentence, "probe"),
        (_centroid_sentence, "centroid"),
        (_fp64_sentence, "fp64"),
        (_decisions_sentence, "decisions"),
    )
    return [sentence(agreement[key]) for sentence, key in sentences if agreement.get(key)]


def _neighbours_sentence(neighbours: dict) -> str:
    """Mean and least overlap of the k nearest neighbours, who lost one, and the sample."""
    sample = (f" (on an evenly spaced sample of {neighbours['sequences']} of {neighbours['of']} sequences)"
              if neighbours["sequences"] < neighbours["of"] else "")
    changed = (f"; {neighbours['changed']} of {neighbours['sequences']} sequences lost a neighbour, worst "
               f"{neighbours['worst']} at {fmt_rounded_down(neighbours['min_overlap'], 3)}"
               if neighbours.get("changed") else "")
    return (
        f"Neighbours: mean overlap of the {neighbours['k']} nearest (cosine) "
        f"{fmt_rounded_down(neighbours['mean_overlap'], 4)}, min {fmt_rounded_down(neighbours['min_overlap'], 4)}"
        f"{changed}{sample}"
    )


def _ranking_sentence(ranking: dict) -> str:
    """The Spearman correlation of all pairwise cosines."""
    return (f"Ranking: Spearman correlation of all {ranking['pairs']:,} pairwise cosines, FP32 vs this, "
            f"{format_cosine(ranking['spearman'])}")


def _probe_sentence(probe: dict) -> str:
    """A linear probe's decisions and logits, FP32 against the attempt, and what flipped."""
    flipped = ""
    if probe.get("flipped"):
        more = " ..." if probe["flipped"] > len(probe["flipped_ids"]) else ""
        flipped = f"; flipped: {', '.join(probe['flipped_ids'])}" + more
    count = probe["flipped"] if probe["flipped"] is not None else "NaN"
    return (
        f"Probe {probe['path']} ({probe['classes']} classes): same decision for {fmt_percent(probe['same_decision'])} "
        f"of the sequences ({count} flipped); largest logit change {fmt_scientific(probe['max_logit_change'])} "
        f"(FP32 logits spread {fmt_scientific(probe['logit_scale'])}){flipped}"
    )


def _centroid_sentence(centroid: dict) -> str:
    """Leave-one-out nearest-centroid accuracy, FP32 against the attempt."""
    changed = centroid["changed_predictions"] if centroid["changed_predictions"] is not None else "NaN"
    return (
        f"Nearest-centroid accuracy ({centroid['labelled']} labelled sequences, {centroid['classes']} classes, leave "
        f"one out): FP32 {fmt_percent(centroid['fp32_accuracy'])}, this {fmt_percent(centroid['accuracy'])}; "
        f"{changed} predictions changed"
    )


def _fp64_sentence(floor: dict) -> str:
    """The error against FP64, beside FP32's own, and their ratio."""
    ratio = floor["ratio"]
    if ratio is None or not math.isfinite(ratio):
        times = "NaN"
    else:
        times = f"{ratio:,.0f}x FP32's error" if ratio >= 10 else f"{ratio:.2f}x FP32's error"
    return (
        f"FP64 floor ({floor['sequences']} sequences): relative error against FP64 "
        f"{fmt_scientific(floor['relative_error'])}, FP32's own {fmt_scientific(floor['fp32_relative_error'])}: "
        + times
    )


def _decisions_sentence(decided: list[dict]) -> str:
    """Each agreement threshold, whether the attempt met it, and whether it gates."""
    return "Decisions: " + "; ".join(
        f"{d['metric']} >= {d['threshold']}: " + ("pass" if d["passed"] else "fail")
        + (" (gate)" if d["gated"] else f" (would have; not gated, {d['option']} gates it)")
        for d in decided
    )


def first_divergent_layer(layers: list[dict], threshold: float) -> int | None:
    """The first block whose output has NaN/Inf or a cosine below ``threshold``; None if none."""
    return next(
        (e["layer"] for e in layers if e["nonfinite_tokens"] or e["min_cosine"] is None or e["min_cosine"] < threshold),
        None,
    )


#: The per-layer profile's columns (report.md and report.html), in order; see ``layer_cells``.
LAYER_COLUMNS = (
    "block", "min cos", "mean cos", "relative error", "max abs activation", "FP16 headroom", "non-finite tokens",
)


def layer_cells(entry: dict) -> dict[str, str]:
    """One block of a per-layer profile as formatted cells, keyed by LAYER_COLUMNS."""
    headroom = entry["fp16_headroom"]
    return {
        "block": str(entry["layer"]),
        "min cos": format_cosine(entry["min_cosine"]),
        "mean cos": format_cosine(entry["mean_cosine"]),
        "relative error": fmt_scientific(entry["relative_error"]),
        "max abs activation": f"{entry['max_abs_activation']:.4g}",
        "FP16 headroom": "inf" if headroom is None else f"{headroom:.3g}x",
        "non-finite tokens": str(entry["nonfinite_tokens"]),
    }


def summary_rows(report: Report) -> list[dict[str, str]]:
    """One row of formatted cells per pass of ``report``, shared by the Markdown, HTML and terminal tables."""
    rows = []
    previous = None
    for attempt in report.attempts:
        m = attempt.metrics or {}
        delta = ""
        if attempt.role != "reference" and previous is not None and m:
            delta = fmt_change(previous.get("min_cosine"), m.get("min_cosine"))
        rows.append(_summary_row(report, attempt, delta))
        if m:
            previous = m
    return rows


def _summary_row(report: Report, attempt: Attempt, delta: str) -> dict[str, str]:
    """The summary table's cells of one pass; ``delta`` is its "vs previous" cell."""
    m = attempt.metrics or {}
    worst = m.get("worst") or []
    reference = attempt.role == "reference"
    return {
        "policy": attempt.name + ((" (saved ref)" if attempt.source else " (ref)") if reference else ""),
        "min cos": format_cosine(m.get("min_cosine")) if m else "-",
        "mean cos": format_cosine(m.get("mean_cosine")) if m else "-",
        "vs previous": delta,
        "worst sequence": worst[0][0] if worst else "-",
        "NaN/Inf": f"{m.get('nan_count', 0)}/{m.get('inf_count', 0)}" if m else "-",
        "kNN overlap": knn_cell(m),
        "rank corr": rank_cell(m),
        "FP32 modules": "all" if reference else str(attempt.fp32_module_count),
        "tokens/s": fmt_rate(attempt.timing.get("tokens_per_second")),
        "speed-up": fmt_ratio(attempt.speedup_vs_fp32),
        "peak memory": fmt_bytes(attempt.peak_memory_bytes),
        "memory ratio": fmt_ratio(attempt.memory_ratio_vs_fp32),
        "verdict": verdict_label(attempt, report.recommended_policy),
    }
