"""report.md: the report for a human, fit to paste into a pull request."""

from __future__ import annotations

from fp16guard.core.formatting import format_cosine
from fp16guard.report.document import Attempt, Report
from fp16guard.report.text import (
    LAYER_COLUMNS,
    _gates,
    _num,
    _verdict,
    agreement_lines,
    first_divergent_layer,
    fmt_rate,
    layer_cells,
    summary_rows,
)


class MarkdownFormat:
    """report.md: for a human, fit to paste into a pull request."""

    filename = "report.md"

    def render(self, report: Report) -> str:
        model, data, env = report.model, report.dataset, report.environment
        status = "PASS" if report.passed else "FAIL"
        lines = [
            f"# fp16guard {status}: {model['name']}",
            "",
            report.summary,
            "",
            f"- **Model**: `{model['name']}` ({model['target']}, {model['parameters']:,} parameters, "
            f"layer {model['layer']} of {model['num_layers']}), weights sha256 `{model['weights_sha256'][:16]}`",
            f"- **Sequences**: `{data['name']}`, {data['sequences']} sequences, "
            f"{data['lengths']['min']}-{data['lengths']['max']} residues (median {data['lengths']['median']}), "
            f"sha256 `{data['sha256'][:16]}`; "
            + (f"{len(data['truncated'])} truncated to {data['max_length']} tokens" if data["max_length"] else "no length limit"),
            f"- **Device**: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
            f"CUDA {env.get('cuda') or 'none'}" + (f", cuDNN {env['cudnn']}" if env.get("cudnn") else ""),
            f"- **Threshold**: every sequence at cosine >= {report.thresholds['min_cosine']}, no NaN/Inf" + _gates(report.thresholds),
        ]
        if report.recommended_policy:
            lines.append(f"- **Recommended policy**: `{report.recommended_policy}` (what --save-policy writes)")
        lines.append("")
        rows = summary_rows(report)
        headers = list(rows[0])
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            lines.append("| " + " | ".join(row[h] for h in headers) + " |")
        lines += ["", "'vs previous' is the change in minimum cosine from the rung before. 'kNN overlap': the mean share "
                  "of each sequence's k nearest FP32 neighbours (cosine) that stay among its k nearest (@k); 'rank corr': "
                  "Spearman correlation of all pairwise cosine similarities, FP32 vs the attempt.", ""]
        lines.append("## Attempts")
        lines.append("")
        for attempt in report.attempts:
            lines.append(f"### {attempt.name}: {attempt.description}")
            lines.append("")
            lines.append(f"- Verdict: {_verdict(attempt, report.recommended_policy)}. {attempt.reason}")
            lines += _speed_lines(attempt)
            m = attempt.metrics
            if m:
                tokens = m.get("tokens") or {}
                lines.append(
                    f"- Pooled: min {format_cosine(m['min_cosine'])}, mean {format_cosine(m['mean_cosine'])}, "
                    f"1st percentile {format_cosine(m['p1_cosine'])}, max abs error {_num(m['max_abs_error'])}, "
                    f"relative L2 {_num(m['relative_l2_error'])}; non-finite sequences "
                    f"{m.get('nonfinite_sequences', 0)} of {m.get('sequences', '?')}"
                )
                if tokens:
                    p1 = tokens.get("p1_cosine")
                    lines.append(
                        f"- Per token ({tokens['sequences']} sequences): min cosine "
                        f"{format_cosine(tokens['min_cosine'])}, 1st percentile {format_cosine(p1)}, max abs error {_num(tokens['max_abs_error'])}, "
                        f"relative L2 {_num(tokens['relative_l2_error'])}, non-finite tokens {tokens['nonfinite_tokens']}"
                    )
                worst = ", ".join(f"`{i}` {format_cosine(c)}" for i, c in m["worst"])
                lines.append(f"- Worst sequences: {worst}")
                lines += [f"- {line}" for line in agreement_lines(m.get("agreement"))]
            if attempt.role != "reference":
                shown = ", ".join(f"`{n}`" for n in attempt.fp32_modules[:8])
                more = f" and {attempt.fp32_module_count - 8} more" if attempt.fp32_module_count > 8 else ""
                lines.append(f"- Kept in FP32: {attempt.fp32_module_count} modules" + (f": {shown}{more}" if shown else ""))
            for note in attempt.notes:
                lines.append(f"- Note: {note}")
            lines.append("")
            if attempt.layers:
                lines += _layer_table(attempt.layers, report.thresholds["min_cosine"])
        if data["truncated"]:
            lines.append("## Truncated sequences")
            lines.append("")
            lines.append(", ".join(f"`{i}`" for i in data["truncated"]))
            lines.append("")
        if report.notes:
            lines.append("## Notes")
            lines.append("")
            lines += [f"- {note}" for note in report.notes]
            lines.append("")
        lines.append(f"_fp16guard {report.tool['version']}, report schema {report.schema_version}, {report.created}_")
        return "\n".join(lines) + "\n"


def _speed_lines(attempt: Attempt) -> list[str]:
    """Steady and first-pass speed, and the attention kernel that ran; the composition check."""
    t = attempt.timing
    lines = []
    if t.get("first_pass_seconds"):
        steady = (
            f"steady {fmt_rate(t.get('tokens_per_second'))} tokens/s (median of {t['passes']} re-runs of "
            f"{100 * t.get('steady_fraction', 1.0):.0f}% of the batches"
            + (f", spread {100 * t['spread']:.1f}%)" if t.get("spread") is not None else ")")
            if t.get("passes") else "one pass (not re-timed)"
        )
        lines.append(
            f"- Speed: {steady}; first pass {fmt_rate(t.get('first_pass_tokens_per_second'))} tokens/s"
            + (f"; attention: {t['attention']}" if t.get("attention") else "")
        )
    check = attempt.composition
    if check:
        pairs = "; ".join(f"{pair}: min cosine {v['min_cosine']:.7f}, max abs difference {v['max_abs_difference']:.2g}"
                          for pair, v in check["pairs"].items())
        status = "passed" if check["passed"] else f"FAILED ({len(check['defects'])} defects: {'; '.join(check['defects'][:3])})"
        lines.append(f"- Batch composition ({len(check['sequences'])} sequences alone, padded, packed): {status}. {pairs}")
    return lines


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
