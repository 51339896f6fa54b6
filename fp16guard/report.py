"""The report of a validation run and its writers: JSON, Markdown, JUnit, HTML (atomic writes)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import OutputError
from .formatting import format_cosine
from .outputs import write_text_atomic
from .report_html import HtmlFormat

#: 2: metrics gain ``nonfinite_sequences``; their min/mean/p1 cosine and errors are null when
#: anything is non-finite; ``cosines`` is a list of {"id", "cosine"}; attempts gain
#: ``composition`` (the batch-composition check) and their timing first-pass and steady figures.
#: 3: metrics gain ``agreement`` (neighbours, ranking, probe, centroid, fp64, decisions: see
#: fp16guard.agreement) and ``tokens.p1_cosine``; thresholds gain ``min_knn_overlap`` and
#: ``min_rank_correlation`` (null: not gated).
SCHEMA_VERSION = 3
#: Versions ``read_report`` accepts: a schema-2 report reads as one without agreement metrics,
#: so that ``fp16guard diff`` compares a run from before them with one after.
READABLE_VERSIONS = (2, 3)


def finite_or_none(value):
    """Replace NaN/Inf floats (recursively) by None, so the JSON is valid and round-trips."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


@dataclass
class Attempt:
    """One pass: the FP32 reference (``role`` "reference"), a policy under test ("attempt"),
    one run beside the ladder for information ("comparison", never part of the verdict), or the
    fast-attention variant of the policy that passed ("fast", a candidate for the recommendation)."""

    policy: dict
    description: str
    role: str
    fp32_modules: list[str]
    notes: list[str]
    timing: dict
    peak_memory_bytes: int | None
    speedup_vs_fp32: float | None
    memory_ratio_vs_fp32: float | None
    passed: bool | None
    reason: str
    metrics: dict | None = None
    layers: list[dict] | None = None  # per-block profile (--profile)
    source: str | None = None  # the file a saved FP32 reference was loaded from (--reference)
    placement: str | None = None  # where it ran: a device, or the GPUs its blocks were spread over
    ranks: list[dict] | None = None  # per-rank figures of a distributed run
    composition: dict | None = None  # the batch-composition check (fp16guard.composition)

    @property
    def name(self) -> str:
        return self.policy["name"]

    @property
    def fp32_module_count(self) -> int:
        return len(self.fp32_modules)


@dataclass
class Report:
    """Everything a run found; ``passed`` and ``passing_policy`` are the verdict."""

    tool: dict
    created: str
    environment: dict
    model: dict
    dataset: dict
    thresholds: dict
    attempts: list[Attempt]
    passed: bool
    passing_policy: str | None
    summary: str
    recommended_policy: str | None = None  # the fast variant when it passes and is faster, else passing_policy
    notes: list[str] = field(default_factory=list)
    # The CLI's effective options: {key: {"value": ..., "source": "default" | "config:PATH" |
    # "environment" | "command line"}}; None for a report built through the library.
    settings: dict | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        data = asdict(self)
        return finite_or_none(data)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        version = data.get("schema_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ValueError(f"report schema version {version} is not {SCHEMA_VERSION} (or {', '.join(map(str, READABLE_VERSIONS[:-1]))})")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["attempts"] = [Attempt(**a) for a in data["attempts"]]
        return cls(**values)

    def summary_rows(self) -> list[dict[str, str]]:
        """One row of formatted cells per pass, shared by the Markdown and terminal tables."""
        rows = []
        previous = None
        for attempt in self.attempts:
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
                    "verdict": _verdict(attempt, self.recommended_policy),
                }
            )
            if m:
                previous = m
        return rows


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


class JsonFormat:
    """report.json: the machine-readable report with a versioned schema."""

    filename = "report.json"

    def render(self, report: Report) -> str:
        return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


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
        rows = report.summary_rows()
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


def _gates(thresholds: dict) -> str:
    """The agreement gates the run set, for the threshold line ("" for none)."""
    gates = [f"mean kNN overlap >= {thresholds['min_knn_overlap']}" if thresholds.get("min_knn_overlap") is not None else "",
             f"rank correlation >= {thresholds['min_rank_correlation']}" if thresholds.get("min_rank_correlation") is not None else ""]
    gates = [g for g in gates if g]
    return ("; gates: " + ", ".join(gates)) if gates else "; agreement metrics reported, not gated"


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


def plot_profile(report: Report, path: Path) -> Path | None:
    """profile.png: relative error against depth, one line per profiled attempt; None without
    matplotlib (pip install "fp16guard[plot]")."""
    profiled = [a for a in report.attempts if a.layers]
    if not profiled:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for attempt in profiled:
        xs = [e["layer"] for e in attempt.layers]
        # Non-finite layers are drawn at the top of the axis, not dropped.
        ys = [e["relative_error"] if e["relative_error"] is not None and not e["nonfinite_tokens"] else 1.0 for e in attempt.layers]
        axis.plot(xs, ys, marker="o", label=attempt.name)
    axis.set_yscale("log")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("block")
    axis.set_ylabel("relative error vs FP32 (1.0 = NaN/Inf)")
    axis.set_title(f"{report.model['name']}: where each policy departs from FP32")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _num(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.3e}"


class JUnitFormat:
    """junit.xml: one test case per attempt, so CI systems show each policy."""

    filename = "junit.xml"

    def render(self, report: Report) -> str:
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
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"fp16guard.{report.model['target']}.{report.model['name']}",
                name=attempt.name,
                time=f"{attempt.timing.get('seconds') or 0:.3f}",
            )
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
        ET.indent(suite)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


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
    return {k: "NaN" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(v) for k, v in present.items()}


def _present(agreement: dict, key: str) -> bool:
    """Whether the metric behind a JUnit property was measured (a NaN figure is still shown)."""
    section = {"knn": "neighbours", "rank": "ranking", "probe": "probe", "centroid": "centroid", "fp64": "fp64"}
    return any(key.startswith(prefix) and name in agreement for prefix, name in section.items())


FORMATS = (JsonFormat(), MarkdownFormat(), JUnitFormat(), HtmlFormat())


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; the file gets the
    umask's permissions (not mkstemp's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write every format into ``out_dir``; returns the paths written. OutputError (exit 3) if
    a file cannot be written."""
    out = Path(out_dir)
    # Render everything before writing anything, so a failure cannot mix old and new files.
    rendered = [(out / fmt.filename, fmt.render(report)) for fmt in FORMATS]
    path = out
    try:
        for path, text in rendered:
            write_atomic(path, text)
        path = out / "profile.png"
        plot = plot_profile(report, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    paths = [path for path, _ in rendered]
    return paths + ([plot] if plot else [])


POLICY_FILE_VERSION = 1


def write_policy(report: Report, path: str | Path) -> Path:
    """Save the recommended policy (the policy that passed, or its faster fast-attention variant
    that passed too), with what it was validated on, for ``apply_policy(model, path)``."""
    if not report.passing_policy:
        raise ValueError("no policy passed, so there is none to save")
    name = report.recommended_policy or report.passing_policy
    attempt = next(a for a in report.attempts if a.role in ("attempt", "fast") and a.name == name and a.passed)
    document = {
        "fp16guard_policy": POLICY_FILE_VERSION,
        "policy": attempt.policy,
        "fp32_modules": attempt.fp32_modules,
        "validated": {
            "model": report.model["name"],
            "target": report.model["target"],
            "weights_sha256": report.model["weights_sha256"],
            "dataset_sha256": report.dataset["sha256"],
            "min_cosine": (attempt.metrics or {}).get("min_cosine"),
            "threshold": report.thresholds["min_cosine"],
            "device": report.environment.get("device_name"),
            "fp16guard": report.tool["version"],
            "created": report.created,
        },
    }
    path = Path(path)
    try:
        write_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the policy to {path}: {exc.strerror or exc}") from None
    return path


def read_report(path: str | Path) -> Report:
    """Load a report.json."""
    return Report.from_dict(json.loads(Path(path).read_text()))
