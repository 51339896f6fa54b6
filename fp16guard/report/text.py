"""Cells and sentences shared by every writer of a report (terminal, Markdown, JUnit, HTML).

Pure functions of a report's plain data; they import no writer, so every writer can use them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fp16guard.core.formatting import format_cosine

if TYPE_CHECKING:
    from fp16guard.report.document import Attempt, Report


def _down(value: float | None, places: int) -> str:
    """``value`` with ``places`` decimals, rounded down (so 0.8999 never shows as 0.900)."""
    if value is None or not math.isfinite(value):
        return "NaN"
    scale = 10**places
    return f"{math.floor(value * scale + 1e-9) / scale:.{places}f}"


def knn_cell(metrics: dict | None) -> str:
    """The summary cell of neighbour agreement: mean overlap@k ("0.987@10"); "-" for none."""
    neighbours = ((metrics or {}).get("agreement") or {}).get("neighbours")
    return f"{_down(neighbours['mean_overlap'], 3)}@{neighbours['k']}" if neighbours else "-"


def rank_cell(metrics: dict | None) -> str:
    """The summary cell of ranking agreement: Spearman of pairwise cosines, shown by the cosine
    rule (never rounded up: "1-3.0e-07"); "-" for none."""
    ranking = ((metrics or {}).get("agreement") or {}).get("ranking")
    return format_cosine(ranking["spearman"]) if ranking else "-"


def agreement_lines(agreement: dict | None) -> list[str]:
    """Plain-text sentences (no markup) on an attempt's agreement metrics, for report.md,
    report.html and JUnit: neighbours and ranking, probe, centroid, FP64 floor, decisions."""
    if not agreement:
        return []
    lines = []
    neighbours, ranking = agreement.get("neighbours"), agreement.get("ranking")
    if neighbours:
        sample = (f" (on an evenly spaced sample of {neighbours['sequences']} of {neighbours['of']} sequences)"
                  if neighbours["sequences"] < neighbours["of"] else "")
        changed = (f"; {neighbours['changed']} of {neighbours['sequences']} sequences lost a neighbour, worst "
                   f"{neighbours['worst']} at {_down(neighbours['min_overlap'], 3)}" if neighbours.get("changed") else "")
        lines.append(
            f"Neighbours: mean overlap of the {neighbours['k']} nearest (cosine) {_down(neighbours['mean_overlap'], 4)}, "
            f"min {_down(neighbours['min_overlap'], 4)}{changed}{sample}"
        )
    if ranking:
        lines.append(f"Ranking: Spearman correlation of all {ranking['pairs']:,} pairwise cosines, FP32 vs this, "
                     f"{format_cosine(ranking['spearman'])}")
    probe = agreement.get("probe")
    if probe:
        flipped = (f"; flipped: {', '.join(probe['flipped_ids'])}" + (" ..." if probe["flipped"] > len(probe["flipped_ids"]) else "")
                   if probe.get("flipped") else "")
        lines.append(
            f"Probe {probe['path']} ({probe['classes']} classes): same decision for {_percent(probe['same_decision'])} of the "
            f"sequences ({probe['flipped'] if probe['flipped'] is not None else 'NaN'} flipped); largest logit change "
            f"{_num(probe['max_logit_change'])} (FP32 logits spread {_num(probe['logit_scale'])}){flipped}"
        )
    centroid = agreement.get("centroid")
    if centroid:
        lines.append(
            f"Nearest-centroid accuracy ({centroid['labelled']} labelled sequences, {centroid['classes']} classes, leave one "
            f"out): FP32 {_percent(centroid['fp32_accuracy'])}, this {_percent(centroid['accuracy'])}; "
            f"{centroid['changed_predictions'] if centroid['changed_predictions'] is not None else 'NaN'} predictions changed"
        )
    floor = agreement.get("fp64")
    if floor:
        ratio = floor["ratio"]
        lines.append(
            f"FP64 floor ({floor['sequences']} sequences): relative error against FP64 {_num(floor['relative_error'])}, "
            f"FP32's own {_num(floor['fp32_relative_error'])}: "
            + ("NaN" if ratio is None or not math.isfinite(ratio) else f"{ratio:,.0f}x FP32's error" if ratio >= 10 else f"{ratio:.2f}x FP32's error")
        )
    decided = agreement.get("decisions") or []
    if decided:
        lines.append("Decisions: " + "; ".join(
            f"{d['metric']} >= {d['threshold']}: " + ("pass" if d["passed"] else "fail")
            + (" (gate)" if d["gated"] else f" (would have; not gated, {d['option']} gates it)")
            for d in decided
        ))
    return lines


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "NaN"
    return f"{math.floor(value * 1000) / 10:.1f}%"


def _verdict(attempt: Attempt, recommended: str | None = None) -> str:
    if attempt.passed is None:
        return "reference"
    verdict = "PASS" if attempt.passed else "FAIL"
    if attempt.role == "fast":
        # "fast" only for the variant that was recommended, i.e. measured faster.
        return verdict + (" (fast)" if attempt.passed and attempt.name == recommended else " (variant)")
    return verdict.lower() + " (info)" if attempt.role == "comparison" else verdict


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "n/a"
    return f"{after - before:+.2e}"


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1024**3:.2f} GiB"


def _gates(thresholds: dict) -> str:
    """The agreement gates the run set, for the threshold line ("" for none)."""
    gates = [f"mean kNN overlap >= {thresholds['min_knn_overlap']}" if thresholds.get("min_knn_overlap") is not None else "",
             f"rank correlation >= {thresholds['min_rank_correlation']}" if thresholds.get("min_rank_correlation") is not None else ""]
    gates = [g for g in gates if g]
    return ("; gates: " + ", ".join(gates)) if gates else "; agreement metrics reported, not gated"


def first_divergent_layer(layers: list[dict], threshold: float) -> int | None:
    """The first block whose output has NaN/Inf or a cosine below ``threshold``; None if none."""
    return next(
        (e["layer"] for e in layers if e["nonfinite_tokens"] or e["min_cosine"] is None or e["min_cosine"] < threshold),
        None,
    )


#: The per-layer profile's columns (report.md and report.html), in order; see ``layer_cells``.
LAYER_COLUMNS = ("block", "min cos", "mean cos", "relative error", "max abs activation", "FP16 headroom", "non-finite tokens")


def layer_cells(entry: dict) -> dict[str, str]:
    """One block of a per-layer profile as formatted cells, keyed by LAYER_COLUMNS."""
    headroom = entry["fp16_headroom"]
    return {
        "block": str(entry["layer"]),
        "min cos": format_cosine(entry["min_cosine"]),
        "mean cos": format_cosine(entry["mean_cosine"]),
        "relative error": _num(entry["relative_error"]),
        "max abs activation": f"{entry['max_abs_activation']:.4g}",
        "FP16 headroom": "inf" if headroom is None else f"{headroom:.3g}x",
        "non-finite tokens": str(entry["nonfinite_tokens"]),
    }


def _num(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.3e}"


def summary_rows(report: Report) -> list[dict[str, str]]:
    """One row of formatted cells per pass of ``report``, shared by the Markdown, HTML and terminal tables."""
    rows = []
    previous = None
    for attempt in report.attempts:
        m = attempt.metrics or {}
        worst = m.get("worst") or []
        delta = ""
        if attempt.role != "reference" and previous is not None and m:
            delta = _delta(previous.get("min_cosine"), m.get("min_cosine"))
        rows.append(
            {
                "policy": attempt.name + ((" (saved ref)" if attempt.source else " (ref)") if attempt.role == "reference" else ""),
                "min cos": format_cosine(m.get("min_cosine")) if m else "-",
                "mean cos": format_cosine(m.get("mean_cosine")) if m else "-",
                "vs previous": delta,
                "worst sequence": worst[0][0] if worst else "-",
                "NaN/Inf": f"{m.get('nan_count', 0)}/{m.get('inf_count', 0)}" if m else "-",
                "kNN overlap": knn_cell(m),
                "rank corr": rank_cell(m),
                "FP32 modules": "all" if attempt.role == "reference" else str(attempt.fp32_module_count),
                "tokens/s": fmt_rate(attempt.timing.get("tokens_per_second")),
                "speed-up": fmt_ratio(attempt.speedup_vs_fp32),
                "peak memory": fmt_bytes(attempt.peak_memory_bytes),
                "memory ratio": fmt_ratio(attempt.memory_ratio_vs_fp32),
                "verdict": _verdict(attempt, report.recommended_policy),
            }
        )
        if m:
            previous = m
    return rows
