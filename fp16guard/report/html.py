"""report.html: the report as one self-contained page (inline CSS and SVG; no script, no network).

Charts are SVG written here, so the page needs no plotting library and loads nothing: its
Content-Security-Policy forbids every fetch and every script, so a browser shows exactly this
file. All text from the run (sequence ids, model names, reasons) goes through ``html.escape``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from fp16guard.core.formatting import format_cosine
from fp16guard.report.text import (
    agreement_lines,
    first_divergent_layer,
    fmt_bytes,
    fmt_rate,
    fmt_ratio,
    gates_clause,
    layer_cells,
    summary_rows,
    verdict_label,
)

if TYPE_CHECKING:
    from fp16guard.report.document import Attempt, Report

#: Nothing may load or run: styles and images are inline, there is no script.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

#: The page's style sheet (a backslash at a line's end continues the line: the CSS has no break there).
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2127;margin:0;background:#f4f5f7}
main{max-width:1140px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:16px;margin:0 0 6px}
.banner{border-radius:8px;padding:14px 18px;color:#fff}
.banner.pass{background:#1a7f37}.banner.fail{background:#b42318}
.banner .status{font-size:30px;font-weight:700;letter-spacing:.04em;margin:0}
.banner p{margin:4px 0}.banner code{background:rgba(255,255,255,.18);color:#fff}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#e9ebef;\
padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13.5px}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef0f3;white-space:normal}.scroll{overflow-x:auto}td.text,th.text{text-align:left;white-space:normal}
tr.pass td.verdict{color:#1a7f37;font-weight:600}tr.fail td.verdict{color:#b42318;font-weight:600}
tr.first td{background:#fdecea}tr.bad td{color:#b42318;font-weight:600}
.attempt{background:#fff;border:1px solid #d5d9e0;border-left:6px solid #8c959f;\
border-radius:6px;padding:12px 16px;margin:14px 0}
.attempt.pass{border-left-color:#1a7f37}.attempt.fail{border-left-color:#b42318}
.attempt p{margin:4px 0}.cols{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
svg.chart{width:100%;max-width:680px;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#3a4049}svg .ok{fill:#2f81f7}svg .bad{fill:#d1242f}svg .nan{fill:#6e2bb5}
svg .axis{stroke:#8c959f}svg .threshold{stroke:#b42318;stroke-dasharray:4 3}
.muted{color:#59636e;font-size:13px}footer{margin-top:28px}
"""

BINS_PER_DECADE = 2
#: The chart's left edge never goes below this gap to 1 (closer ones, and exactly 1, share the first bin).
SMALLEST_GAP_EXPONENT = -12


#: Below the attempts table: what its agreement columns mean.
TABLE_LEGEND = (
    "<p class=muted>'vs previous' is the change in minimum cosine from the rung before. 'kNN overlap': the mean "
    "share of each sequence's k nearest FP32 neighbours that stay among its k nearest (@k); 'rank corr': Spearman "
    "correlation of all pairwise cosine similarities, FP32 vs the attempt.</p>"
)


class HtmlFormat:
    """report.html: the verdict, the attempts table, per attempt its cosine distribution, worst
    sequences, speed, memory, batch-composition check and per-layer profile; the environment."""

    filename = "report.html"

    def render(self, report: Report) -> str:
        """The page: its head, then the sections of the body in order."""
        status = "PASS" if report.passed else "FAIL"
        body = [
            _verdict_section(report, status),
            *_attempts_section(report),
            *_environment_section(report),
            *_notes_section(report.notes),
            _footer(report),
        ]
        return _head(f"fp16guard {status}: {report.model['name']}") + "\n".join(body) + "\n</main>\n</body>\n</html>\n"


def _head(title: str) -> str:
    """The document up to the opening of <main>: the policy that nothing loads, the style, the title."""
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name=viewport content="width=device-width,initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    )


def _verdict_section(report: Report, status: str) -> str:
    """The banner: PASS or FAIL, the summary, the recommended policy, what was validated against what."""
    model, data = report.model, report.dataset
    device = escape(str(report.environment.get("device_name")))
    lines = [
        f'<section id=verdict class="banner {status.lower()}">',
        f"<p class=status>{status}</p>",
        f"<p class=summary>{escape(report.summary)}</p>",
    ]
    if report.recommended_policy:
        lines.append(
            f"<p>Recommended policy: <code>{escape(report.recommended_policy)}</code> (what --save-policy writes)</p>"
        )
    lines += [
        f"<p>Model <code>{escape(model['name'])}</code> ({escape(model['target'])}, {model['parameters']:,} "
        f"parameters, layer {model['layer']} of {model['num_layers']}) on {device}; "
        f"{data['sequences']} sequences from <code>{escape(data['name'])}</code>; every sequence must reach cosine "
        f"&ge; {escape(str(report.thresholds['min_cosine']))} to FP32, with no NaN/Inf"
        f"{escape(gates_clause(report.thresholds))}.</p>",
        "</section>",
    ]
    return "\n".join(lines)


def _attempts_section(report: Report) -> list[str]:
    """The attempts table with its legend, then one card per attempt."""
    table = _table(summary_rows(report), "attempts", text_columns=("policy", "worst sequence", "verdict"),
                   verdict_column="verdict")
    threshold = report.thresholds["min_cosine"]
    return [
        "<h2>Attempts</h2>",
        "<div class=scroll>" + table + "</div>",
        TABLE_LEGEND,
        *(_attempt(report, a, threshold) for a in report.attempts),
    ]


def _notes_section(notes: list[str]) -> list[str]:
    """The run's notes as a list (nothing when there are none)."""
    if not notes:
        return []
    return ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"]


def _footer(report: Report) -> str:
    """Which fp16guard and report schema wrote the page, and when."""
    return (
        f"<footer class=muted>fp16guard {escape(report.tool['version'])}, report schema "
        f"{report.schema_version}, {escape(report.created)}</footer>"
    )


def _table(rows: list[dict[str, str]], table_id: str | None = None, text_columns=(), verdict_column: str | None = None,
           row_classes: list[str] | None = None) -> str:
    """An HTML table of formatted cells (every row has the first row's keys): ``text_columns`` are
    left-aligned, ``verdict_column`` colours each row by its verdict, else ``row_classes`` class them."""
    if not rows:
        return ""
    headers = list(rows[0])

    def cell(tag: str, header: str, value: str) -> str:
        classes = " ".join(
            c for c in ("text" if header in text_columns else "", "verdict" if header == verdict_column else "") if c
        )
        attribute = f' class="{classes}"' if classes else ""
        return f"<{tag}{attribute}>{escape(value)}</{tag}>"

    out = [
        f"<table{f' id={table_id}' if table_id else ''}>",
        "<thead><tr>" + "".join(cell("th", h, h) for h in headers) + "</tr></thead>",
        "<tbody>",
    ]
    for i, row in enumerate(rows):
        classes = row_classes[i] if row_classes else ""
        if verdict_column:
            classes = _verdict_class(row[verdict_column], classes)
        cells = "".join(cell("td", h, row[h]) for h in headers)
        out.append(f"<tr{f' class={classes}' if classes else ''}>" + cells + "</tr>")
    return "\n".join(out + ["</tbody>", "</table>"])


def _verdict_class(verdict: str, otherwise: str = "") -> str:
    """The CSS class of a verdict label ("PASS (fast)" -> "pass"); ``otherwise`` for the rest."""
    return {"PASS": "pass", "FAIL": "fail"}.get(verdict.split(" ")[0], otherwise)


def _attempt(report: Report, attempt: Attempt, threshold: float) -> str:
    """One attempt's card: verdict and reason, chart, worst sequences, speed and memory, checks."""
    verdict = verdict_label(attempt, report.recommended_policy)
    anchor = f"attempt-{escape(attempt.name)}-{escape(attempt.role)}"
    parts = [
        f'<section class="attempt {_verdict_class(verdict)}" id="{anchor}">',
        f"<h3>{escape(attempt.name)}: {escape(attempt.description)}</h3>",
        f"<p><strong>{escape(verdict)}</strong>. {escape(attempt.reason)}</p>",
    ]
    if attempt.metrics:
        parts += _accuracy(attempt.metrics, threshold)
    parts.append(_speed_and_memory(attempt))
    if attempt.role != "reference" and attempt.fp32_modules:
        shown = ", ".join(f"<code>{escape(n)}</code>" for n in attempt.fp32_modules[:12])
        more = f" and {attempt.fp32_module_count - 12} more" if attempt.fp32_module_count > 12 else ""
        parts.append(f"<p>Kept in FP32: {attempt.fp32_module_count} modules: {shown}{more}</p>")
    if attempt.source:
        parts.append(f"<p>FP32 reference loaded from <code>{escape(attempt.source)}</code>.</p>")
    if attempt.composition:
        parts.append(_composition(attempt.composition))
    if attempt.layers:
        parts.append(_layers(attempt.layers, threshold))
    parts += [f"<p class=muted>Note: {escape(n)}</p>" for n in attempt.notes]
    parts.append("</section>")
    return "\n".join(parts)


def _accuracy(m: dict, threshold: float) -> list[str]:
    """An attempt's cosine chart beside its worst sequences, the pooled figures, the agreement sentences."""
    worst = _table(
        [{"sequence": i, "cosine": format_cosine(c)} for i, c in m["worst"]], text_columns=("sequence",),
        row_classes=["" if c is not None and c >= threshold else "bad" for _, c in m["worst"]],
    )
    return [
        "<div class=cols>",
        cosine_chart(m.get("cosines") or [], threshold),
        "<div><h3>Worst sequences</h3>" + worst + "</div>",
        "</div>",
        f"<p>Pooled cosine: min {format_cosine(m['min_cosine'])}, mean {format_cosine(m['mean_cosine'])}, "
        f"1st percentile {format_cosine(m['p1_cosine'])}; {m.get('below_threshold', 0)} of {m.get('sequences', '?')} "
        f"sequences below {escape(str(threshold))}; non-finite sequences {m.get('nonfinite_sequences', 0)} "
        f"({m.get('nan_count', 0)} NaN, {m.get('inf_count', 0)} Inf values).</p>",
        *(f"<p class=agreement>{escape(line)}.</p>" for line in agreement_lines(m.get("agreement"))),
    ]


def _speed_and_memory(attempt: Attempt) -> str:
    """Steady and first-pass speed with the attention kernel, peak memory, where the attempt ran."""
    t = attempt.timing
    steady = (f"steady {fmt_rate(t.get('tokens_per_second'))} tokens/s (median of {t['passes']} re-runs)"
              if t.get("passes") else f"{fmt_rate(t.get('tokens_per_second'))} tokens/s (one pass, not re-timed)")
    speed = f"Speed: {steady}; first pass {fmt_rate(t.get('first_pass_tokens_per_second'))} tokens/s"
    if t.get("attention"):
        speed += f"; attention: {t['attention']}"
    if attempt.role != "reference":
        speed += f"; {fmt_ratio(attempt.speedup_vs_fp32)} FP32's speed"
    memory = f"Peak memory: {fmt_bytes(attempt.peak_memory_bytes)}"
    if attempt.role != "reference":
        memory += f" ({fmt_ratio(attempt.memory_ratio_vs_fp32)} FP32's)"
    where = f"; ran on {attempt.placement}" if attempt.placement else ""
    return f"<p class=speed>{escape(speed)}.</p>\n<p class=memory>{escape(memory + where)}.</p>"


def _composition(check: dict) -> str:
    """The batch-composition check: each pair's agreement (alone, padded, packed) and its defects."""
    status = "passed" if check["passed"] else f"FAILED ({len(check['defects'])} defects)"
    rows = [
        {"pair": pair, "min cosine": format_cosine(v["min_cosine"]),
         "max abs difference": f"{v['max_abs_difference']:.2g}"}
        for pair, v in check["pairs"].items()
    ]
    defects = "".join(f"<li>{escape(d)}</li>" for d in check["defects"])
    return (
        f"<h3>Batch composition check: {escape(status)}</h3>"
        f"<p class=muted>{len(check['sequences'])} sequences embedded alone, padded and packed "
        f"(tolerance {escape(str(check['tolerance']))}).</p>"
        + _table(rows, text_columns=("pair",))
        + (f"<ul>{defects}</ul>" if defects else "")
    )


def _layers(layers: list[dict], threshold: float) -> str:
    """The per-layer profile as a table, the first divergent block's row marked."""
    first = first_divergent_layer(layers, threshold)
    return (
        f"<h3>Per layer (first divergent block: {first if first else 'none'})</h3>"
        + _table([layer_cells(e) for e in layers], row_classes=["first" if e["layer"] == first else "" for e in layers])
    )


def _environment_section(report: Report) -> list[str]:
    """What the run ran on, the model's source and checksum, and the sequences."""
    model, data = report.model, report.dataset
    lengths = data["lengths"]
    rows = [{"": str(k), "value": "n/a" if v is None else str(v)} for k, v in report.environment.items()]
    rows += [
        {"": "model source", "value": str(model.get("source"))},
        {"": "weights sha256", "value": model["weights_sha256"]},
        {"": "sequences", "value": f"{data['name']} ({data['sequences']} sequences, {lengths['min']}-"
                                   f"{lengths['max']} residues, median {lengths['median']})"},
        {"": "sequences sha256", "value": data["sha256"]},
        {"": "truncated", "value": ", ".join(data["truncated"]) or "none"},
    ]
    return ["<h2>Environment</h2>", _table(rows, "environment", text_columns=("", "value"))]


@dataclass(frozen=True)
class _Histogram:
    """The cosine chart's bins: 1 - cosine binned by its decimal exponent, from decade ``lo`` to
    ``hi``, with the threshold's exponent as one more edge so that no bin straddles it."""

    lo: int
    hi: int
    edges: list[float]
    counts: list[list[int]]  # per bin: [passing, failing]
    threshold_exp: float
    finite: list[float]  # the finite cosines
    nonfinite: int  # sequences with NaN/Inf embeddings (None cosines)


def _histogram(cosines: list[dict], threshold: float) -> _Histogram:
    """Bin the cosines for ``cosine_chart`` (log scale of 1 - cosine)."""
    values = [c["cosine"] for c in cosines]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    # Rounded so that 1 - 0.99 (0.010000000000000009) falls on the edge 1e-2, not a sliver beside it.
    threshold_exp = round(math.log10(max(1 - threshold, 10.0**SMALLEST_GAP_EXPONENT)), 9)
    exps = [math.log10(1 - v) for v in finite if 1 - v > 0]
    lo = max(SMALLEST_GAP_EXPONENT, math.floor(min([*exps, threshold_exp]) - 1e-9))
    hi = min(1, max(math.ceil(max([*exps, threshold_exp]) + 1e-9), math.floor(threshold_exp) + 1))
    edges = sorted({lo + i / BINS_PER_DECADE for i in range((hi - lo) * BINS_PER_DECADE + 1)} | {threshold_exp})
    counts = [[0, 0] for _ in edges[1:]]
    side = edges.index(threshold_exp)
    for v in finite:
        gap = 1 - v
        exp = math.log10(gap) if gap > 0 else -math.inf
        index = min(bisect_left(edges, exp, lo=1) - 1, len(counts) - 1)  # the bin (lower, upper] holding exp
        # 1 - v rounds: a cosine at the threshold may land just past its edge. The side is v's.
        index = min(index, side - 1) if v >= threshold else max(index, side)
        counts[index][v < threshold] += 1
    return _Histogram(lo, hi, edges, counts, threshold_exp, finite, len(values) - len(finite))


def cosine_chart(cosines: list[dict], threshold: float) -> str:
    """Inline SVG histogram of 1 - cosine on a log scale (so 0.9999 and 0.999999 stand apart),
    the threshold as a dashed line, bars past it red, and non-finite sequences as their own bar."""
    h = _histogram(cosines, threshold)
    lo, hi, edges, counts, nonfinite = h.lo, h.hi, h.edges, h.counts, h.nonfinite
    # Geometry: plot area x0..x1, NaN bar to the right of it, baseline at y1.
    width, height, x0, x1, y0, y1 = 680, 200, 34, 580, 18, 150
    peak = max([nonfinite, *(sum(c) for c in counts), 1])

    def x(exp: float) -> float:
        return x0 + (x1 - x0) * (exp - lo) / (hi - lo)

    def bar(left: float, right: float, count: int, cls: str, label: str) -> str:
        tall = (y1 - y0) * count / peak
        return (f'<rect class="{cls}" x="{left + 1:.1f}" y="{y1 - tall:.1f}" width="{max(right - left - 2, 1):.1f}" '
                f'height="{tall:.1f}"><title>{escape(label)}</title></rect>'
                f'<text x="{(left + right) / 2:.1f}" y="{y1 - tall - 3:.1f}" text-anchor="middle">{count}</text>')

    shapes = []
    for (lower, upper), (good, bad) in zip(zip(edges, edges[1:]), counts):
        span = f"1 - cosine in ({'0' if lower == lo else f'{10**lower:.2g}'}, {10**upper:.2g}]"
        for count, cls in ((good, "ok"), (bad, "bad")):
            if count:
                shapes.append(bar(x(lower), x(upper), count, cls, f"{count} sequence(s), {span}"))
    nan_left, nan_right = x1 + 30, x1 + 80
    shapes.append(bar(nan_left, nan_right, nonfinite, "nan", f"{nonfinite} sequence(s) with NaN/Inf embeddings"))
    clipped = any(1 - v <= 10.0**lo for v in h.finite)  # the first bin also holds these (exactly 1 among them)
    ticks = "".join(
        f'<line class="axis" x1="{x(e):.1f}" y1="{y1}" x2="{x(e):.1f}" y2="{y1 + 4}"/>'
        f'<text x="{x(e):.1f}" y="{y1 + 16}" text-anchor="middle">{"≤" if e == lo and clipped else ""}1e{e}</text>'
        for e in range(lo, hi + 1)
    )
    tx = x(h.threshold_exp)
    summary = (f"{len(h.finite)} finite cosines, {sum(c[1] for c in counts)} below threshold {threshold}, "
               f"{nonfinite} NaN/Inf")
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(summary)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(summary)}</title>'
        f'<line class="axis" x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}"/>'
        f'<line class="axis" x1="{nan_left}" y1="{y1}" x2="{nan_right}" y2="{y1}"/>'
        + ticks + "".join(shapes)
        + f'<line class="threshold" x1="{tx:.1f}" y1="{y0 - 6}" x2="{tx:.1f}" y2="{y1}"/>'
        f'<text x="{tx + 4:.1f}" y="{y0 - 8}">threshold {escape(str(threshold))}</text>'
        f'<text x="{(nan_left + nan_right) / 2:.1f}" y="{y1 + 16}" text-anchor="middle">NaN/Inf</text>'
        f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 + 36}" text-anchor="middle">1 − cosine to FP32 per sequence '
        f"(log scale; further right is worse)</text></svg>"
    )
