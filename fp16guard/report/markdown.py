"""report.md: the report for a human, fit to paste into a pull request."""

from __future__ import annotations

from fp16guard.core.formatting import format_cosine
from fp16guard.report.document import Attempt, Report
from fp16guard.report.text import (
    LAYER_COLUMNS,
    agreement_lines,
    first_divergent_layer,
    fmt_rate,
    fmt_scientific,
    gates_clause,
    layer_cells,
    summary_rows,
    verdict_label,
)

#: Below the summary table: what its agreement columns mean.
TABLE_LEGEND = (
    "'vs previous' is the change in minimum cosine from the rung before. 'kNN overlap': the mean share of each "
    "sequence's k nearest FP32 neighbours (cosine) that stay among its k nearest (@k); 'rank corr': Spearman "
    "correlation of all pairwise cosine similarities, FP32 vs the attempt."
)


class MarkdownFormat:
    """report.md: for a human, fit to paste into a pull request."""

    filename = "report.md"

    def render(self, report: Report) -> str:
        """The page: verdict and run, the summary table, one section per attempt, truncations, notes."""
        lines = [*_heading(report), *_table(summary_rows(report)), "", TABLE_LEGEND, "", "## Attempts", ""]
        for attempt in report.attempts:
            lines += _attempt_section(report, attempt)
        if report.dataset["truncated"]:
            lines += ["## Truncated sequences", "", ", ".join(f"`{i}`" for i in report.dataset["truncated"]), ""]
        if report.notes:
            lines += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
        lines.append(f"_fp16guard {report.tool['version']}, report schema {report.schema_version}, {report.created}_")
        return "\n".join(lines) + "\n"


def _heading(report: Report) -> list[str]:
    """The title, the summary sentence, and what was validated on what, under which threshold."""
    model, data, env = report.model, report.dataset, report.environment
    status = "PASS" if report.passed else "FAIL"
    truncated = (f"{len(data['truncated'])} truncated to {data['max_length']} tokens" if data["max_length"]
                 else "no length limit")
    lines = [
        f"# fp16guard {status}: {model['name']}",
        "",
        report.summary,
        "",
        f"- **Model**: `{model['name']}` ({model['target']}, {model['parameters']:,} parameters, "
        f"layer {model['layer']} of {model['num_layers']}), weights sha256 `{model['weights_sha256'][:16]}`",
        f"- **Sequences**: `{data['name']}`, {data['sequences']} sequences, "
        f"{data['lengths']['min']}-{data['lengths']['max']} residues (median {data['lengths']['median']}), "
        f"sha256 `{data['sha256'][:16]}`; " + truncated,
        f"- **Device**: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
        f"CUDA {env.get('cuda') or 'none'}" + (f", cuDNN {env['cudnn']}" if env.get("cudnn") else ""),
        f"- **Threshold**: every sequence at cosine >= {report.thresholds['min_cosine']}, no NaN/Inf"
        + gates_clause(report.thresholds),
    ]
    if report.recommended_policy:
        lines.append(f"- **Recommended policy**: `{report.recommended_policy}` (what --save-policy writes)")
    return lines + [""]


def _table(rows: list[dict[str, str]]) -> list[str]:
    """A Markdown table of formatted cells (every row has the first row's keys)."""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(row[h] for h in headers) + " |" for row in rows]


def _attempt_section(report: Report, attempt: Attempt) -> list[str]:
    """One attempt: verdict and reason, speed, its metrics, the modules kept in FP32, notes, profile."""
    lines = [
        f"### {attempt.name}: {attempt.description}",
        "",
        f"- Verdict: {verdict_label(attempt, report.recommended_policy)}. {attempt.reason}",
        *_speed_lines(attempt.timing),
        *_composition_lines(attempt.composition),
    ]
    if attempt.metrics:
        lines += _metric_lines(attempt.metrics)
    if attempt.role != "reference":
        shown = ", ".join(f"`{n}`" for n in attempt.fp32_modules[:8])
        more = f" and {attempt.fp32_module_count - 8} more" if attempt.fp32_module_count > 8 else ""
        lines.append(f"- Kept in FP32: {attempt.fp32_module_count} modules" + (f": {shown}{more}" if shown else ""))
    lines += [f"- Note: {note}" for note in attempt.notes]
    lines.append("")
    if attempt.layers:
        lines += _layer_table(attempt.layers, report.thresholds["min_cosine"])
    return lines


def _metric_lines(m: dict) -> list[str]:
    """Pooled and per-token accuracy, the worst sequences, and the agreement sentences."""
    lines = [
        f"- Pooled: min {format_cosine(m['min_cosine'])}, mean {format_cosine(m['mean_cosine'])}, "
        f"1st percentile {format_cosine(m['p1_cosine'])}, max abs error {fmt_scientific(m['max_abs_error'])}, "
        f"relative L2 {fmt_scientific(m['relative_l2_error'])}; non-finite sequences "
        f"{m.get('nonfinite_sequences', 0)} of {m.get('sequences', '?')}"
    ]
    tokens = m.get("tokens") or {}
    if tokens:
        lines.append(
            f"- Per token ({tokens['sequences']} sequences): min cosine {format_cosine(tokens['min_cosine'])}, "
            f"1st percentile {format_cosine(tokens.get('p1_cosine'))}, max abs error "
            f"{fmt_scientific(tokens['max_abs_error'])}, relative L2 {fmt_scientific(tokens['relative_l2_error'])}, "
            f"non-finite tokens {tokens['nonfinite_tokens']}"
        )
    worst = ", ".join(f"`{i}` {format_cosine(c)}" for i, c in m["worst"])
    lines.append(f"- Worst sequences: {worst}")
    return lines + [f"- {line}" for line in agreement_lines(m.get("agreement"))]


def _speed_lines(timing: dict) -> list[str]:
    """Steady and first-pass speed, and the attention kernel that ran (none for a run not timed so)."""
    t = timing
    if not t.get("first_pass_seconds"):
        return []
    steady = (
        f"steady {fmt_rate(t.get('tokens_per_second'))} tokens/s (median of {t['passes']} re-runs of "
        f"{100 * t.get('steady_fraction', 1.0):.0f}% of the batches"
        + (f", spread {100 * t['spread']:.1f}%)" if t.get("spread") is not None else ")")
        if t.get("passes") else "one pass (not re-timed)"
    )
    return [
        f"- Speed: {steady}; first pass {fmt_rate(t.get('first_pass_tokens_per_second'))} tokens/s"
        + (f"; attention: {t['attention']}" if t.get("attention") else "")
    ]


def _composition_lines(check: dict | None) -> list[str]:
    """The batch-composition check: each sequence alone, padded and packed (none when not run)."""
    if not check:
        return []
    pairs = "; ".join(
        f"{pair}: min cosine {v['min_cosine']:.7f}, max abs difference {v['max_abs_difference']:.2g}"
        for pair, v in check["pairs"].items()
    )
    defects = check["defects"]
    status = "passed" if check["passed"] else f"FAILED ({len(defects)} defects: {'; '.join(defects[:3])})"
    alone = len(check["sequences"])
    return [f"- Batch composition ({alone} sequences alone, padded, packed): {status}. {pairs}"]


def _layer_table(layers: list[dict], threshold: float) -> list[str]:
    """Markdown rows of a per-layer profile, marking the first divergent block."""
    first = first_divergent_layer(layers, threshold)
    lines = [
        f"Per layer (first divergent block: {first if first else 'none'}):",
        "",
        "| " + " | ".join(LAYER_COLUMNS) + " |",
        "|" + "|".join("---" for _ in LAYER_COLUMNS) + "|",
    ]
    for e in layers:
        cells = layer_cells(e)
        if e["layer"] == first:
            cells["block"] += " **<- first**"
        lines.append("| " + " | ".join(cells.values()) + " |")
    return lines + [""]
