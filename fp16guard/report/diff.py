"""diff_reports(old, new) -> ReportDiff: what changed between two validation runs (a torch
upgrade, a new checkpoint). Pure, and truthy when NEW does not regress."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fp16guard.core.formatting import format_cosine
from fp16guard.errors import InputError
from fp16guard.report.document import Report

#: A sequence whose cosine falls by more than this is a regression (``--tolerance``).
DEFAULT_TOLERANCE = 1e-3
#: A mean kNN overlap, a probe's same-decision share or a nearest-centroid accuracy (shares of
#: sequences) that falls by more than this is a regression (``--agreement-tolerance``): one
#: neighbour swapped at a near tie in 84 sequences costs 0.0012 of mean overlap@10.
DEFAULT_AGREEMENT_TOLERANCE = 1e-2
#: A policy whose tokens/s falls by more than this ratio (old / new) is a regression (``--max-slowdown``).
DEFAULT_MAX_SLOWDOWN = 1.25
#: Roles whose results gate: the ladder's attempts and the fast variant that may be recommended.
GATED_ROLES = ("attempt", "fast")
#: Environment figures compared: (label, section of the report, key).
ENVIRONMENT_KEYS = (
    ("fp16guard", "tool", "version"),
    ("python", "environment", "python"),
    ("torch", "environment", "torch"),
    ("CUDA", "environment", "cuda"),
    ("cuDNN", "environment", "cudnn"),
    ("device", "environment", "device_name"),
    ("fair-esm", "environment", "fair-esm"),
    ("transformers", "environment", "transformers"),
    ("model", "model", "name"),
    ("model sha256", "model", "weights_sha256"),
    ("dataset", "dataset", "name"),
    ("dataset sha256", "dataset", "sha256"),
    ("min-cosine", "thresholds", "min_cosine"),
)


@dataclass(frozen=True)
class SequenceChange:
    """One sequence's cosine in both runs (None: non-finite, or absent from that run)."""

    id: str
    old: float | None
    new: float | None
    crossed: bool  # at or above NEW's threshold before, below it (or non-finite) now

    @property
    def delta(self) -> float | None:
        """new - old; -inf when a finite cosine became non-finite, None when not comparable."""
        if self.old is not None and self.new is None:
            return -math.inf
        return None if self.old is None or self.new is None else self.new - self.old


@dataclass(frozen=True)
class MetricChange:
    """One agreement metric of a pass in both runs (None: absent, or non-finite, in that run).
    ``compared`` is False where the runs measured it differently (another k, sample or probe),
    or either run lacks it (a schema-2 report has none): then it is shown, not gated."""

    key: str  # as in the JUnit properties: knn_overlap_mean, rank_correlation, ...
    label: str
    old: float | None
    new: float | None
    in_old: bool
    in_new: bool
    compared: bool
    gated: bool  # a fall in it can be a regression (the others are shown only)

    @property
    def delta(self) -> float | None:
        """new - old; -inf when a finite figure became non-finite, None when not comparable."""
        if not self.compared or self.old is None:
            return None
        return -math.inf if self.new is None else self.new - self.old


@dataclass(frozen=True)
class PolicyChange:
    """One pass (a policy in a role) in both runs; a side is None where that run lacks it."""

    policy: str
    role: str
    in_old: bool
    in_new: bool
    old_passed: bool | None
    new_passed: bool | None
    old_min_cosine: float | None
    new_min_cosine: float | None
    old_tokens_per_second: float | None
    new_tokens_per_second: float | None
    old_peak_memory_bytes: int | None
    new_peak_memory_bytes: int | None
    sequences: tuple[SequenceChange, ...]  # every sequence in both runs, the largest fall first
    agreement: tuple[MetricChange, ...] = ()  # the agreement metrics either run has

    def metric(self, key: str) -> MetricChange | None:
        """The agreement metric ``key`` (as in the JUnit properties), None when neither run has it."""
        return next((m for m in self.agreement if m.key == key), None)

    @property
    def slowdown(self) -> float | None:
        """old tokens/s over new (above 1: NEW is slower)."""
        old, new = self.old_tokens_per_second, self.new_tokens_per_second
        return old / new if old and new else None

    @property
    def memory_ratio(self) -> float | None:
        """new peak memory over old."""
        old, new = self.old_peak_memory_bytes, self.new_peak_memory_bytes
        return new / old if old and new else None

    @property
    def crossed(self) -> tuple[str, ...]:
        """The ids of the sequences that crossed NEW's threshold."""
        return tuple(s.id for s in self.sequences if s.crossed)


@dataclass(frozen=True)
class ReportDiff:
    """Two runs side by side; ``regressions`` say in words how NEW is worse (empty: it is not)."""

    old_passed: bool
    new_passed: bool
    old_policy: str | None  # the policy that passed
    new_policy: str | None
    policies: tuple[PolicyChange, ...]
    environment: tuple[tuple[str, object, object], ...]  # (what, old, new) for each difference
    regressions: tuple[str, ...]
    tolerance: float
    max_slowdown: float
    agreement_tolerance: float
    speed_compared: bool  # False when the runs are on different devices: speed is shown, not gated

    def __bool__(self) -> bool:
        return not self.regressions

    @property
    def exit_code(self) -> int:
        """``fp16guard diff``'s exit status: 0 no regression, 1 a regression."""
        return 0 if self else 1

    def to_dict(self) -> dict:
        """Plain data for ``fp16guard diff --json`` (NaN-free: non-finite deltas are null)."""
        data = asdict(self)
        data["passed"] = bool(self)
        data["environment"] = [{"what": w, "old": o, "new": n} for w, o, n in self.environment]
        for policy, change in zip(data["policies"], self.policies, strict=True):
            policy["slowdown"], policy["memory_ratio"] = change.slowdown, change.memory_ratio
            for sequence, seq in zip(policy["sequences"], change.sequences, strict=True):
                delta = seq.delta
                sequence["delta"] = delta if delta is not None and math.isfinite(delta) else None
            for metric, m in zip(policy["agreement"], change.agreement, strict=True):
                delta = m.delta
                metric["delta"] = delta if delta is not None and math.isfinite(delta) else None
        return data

    def to_json(self) -> str:
        """``to_dict`` as strict JSON, indented."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def load_report(path: str | Path) -> Report:
    """A report.json, or the one in a report directory; InputError (exit 2) when it cannot be
    read or is not a report of this schema."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        return Report.from_dict(json.loads(file.read_text()))
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{file} is not JSON: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{file} is not an fp16guard report this version can read: {exc}") from None


def diff_reports(
    old: Report, new: Report, tolerance: float = DEFAULT_TOLERANCE, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    agreement_tolerance: float = DEFAULT_AGREEMENT_TOLERANCE,
) -> ReportDiff:
    """Compare two reports pass by pass (matched by policy and role) and sequence by sequence
    (matched by id). NEW regresses when its verdict went from PASS to FAIL, a gated policy that
    passed now fails, a sequence crosses NEW's threshold or falls by more than ``tolerance``,
    an agreement metric crosses NEW's gate (--min-knn-overlap, --min-rank-correlation) or
    falls by more than its tolerance (the rank correlation ``tolerance``, the shares
    ``agreement_tolerance``), or a gated policy is slower by more than ``max_slowdown``
    (old / new tokens/s; only when both runs are on the same device model). A metric one run
    lacks (a schema-2 report) is not compared."""
    if tolerance < 0 or max_slowdown < 1 or agreement_tolerance < 0:
        raise InputError(f"--tolerance and --agreement-tolerance must be >= 0 and --max-slowdown >= 1, got "
                         f"{tolerance}, {agreement_tolerance} and {max_slowdown}")
    threshold = new.thresholds["min_cosine"]
    old_by, new_by = _passes(old), _passes(new)
    policies = tuple(_policy_change(key, old_by.get(key), new_by.get(key), threshold) for key in _union(old_by, new_by))
    environment = tuple((what, a, b) for what, a, b in _environment(old, new) if a != b)
    same_device = old.environment.get("device_name") == new.environment.get("device_name")
    regressions = [f"verdict: PASS ({old.passing_policy}) became FAIL"] if old.passed and not new.passed else []
    for change in policies:
        if change.role in GATED_ROLES:
            regressions += _policy_regressions(change, new.thresholds, tolerance, agreement_tolerance,
                                               max_slowdown if same_device else None)
    return ReportDiff(
        old_passed=old.passed, new_passed=new.passed, old_policy=old.passing_policy, new_policy=new.passing_policy,
        policies=policies, environment=environment, regressions=tuple(regressions), tolerance=tolerance,
        max_slowdown=max_slowdown, agreement_tolerance=agreement_tolerance, speed_compared=same_device,
    )


def _policy_regressions(change: PolicyChange, thresholds: dict, tolerance: float, agreement_tolerance: float,
                        max_slowdown: float | None) -> list[str]:
    """Sentences on how NEW made one gated pass worse; ``max_slowdown`` None: speed not compared."""
    name = change.policy if change.role == "attempt" else f"{change.policy} ({change.role})"
    threshold = thresholds["min_cosine"]
    regressions = []
    if change.old_passed and change.new_passed is False:
        regressions.append(f"{name}: passed, now fails")
    crossed = change.crossed
    if crossed:
        regressions.append(f"{name}: {len(crossed)} sequence(s) fell below {threshold}: {_names(crossed)}")
    fallen = [s.id for s in change.sequences if not s.crossed and s.delta is not None and s.delta < -tolerance]
    if fallen:
        regressions.append(f"{name}: {len(fallen)} sequence(s) fell by more than {tolerance:g}: {_names(fallen)}")
    agreement = _agreement_regressions(change, thresholds, tolerance, agreement_tolerance)
    regressions += [f"{name}: {line}" for line in agreement]
    if max_slowdown is not None and change.slowdown is not None and change.slowdown > max_slowdown:
        regressions.append(f"{name}: {change.slowdown:.2f}x slower (more than {max_slowdown:g}x)")
    return regressions


#: Agreement metrics: (key, label, section of metrics.agreement, figure, the section's fields that
#: must match for the runs to be compared, gated). A fall in a gated one can be a regression.
AGREEMENT_METRICS = (
    ("knn_overlap_mean", "mean kNN overlap", "neighbours", "mean_overlap", ("k", "sequences"), True),
    ("knn_overlap_min", "min kNN overlap", "neighbours", "min_overlap", ("k", "sequences"), False),
    ("rank_correlation", "rank correlation", "ranking", "spearman", ("sequences",), True),
    ("probe_same_decision", "probe same decision", "probe", "same_decision", ("classes",), True),
    ("centroid_accuracy", "nearest-centroid accuracy", "centroid", "accuracy", ("labelled", "classes"), True),
    ("fp64_error_ratio", "error vs FP64 / FP32's", "fp64", "ratio", ("sequences",), False),
)
#: NEW's gates on agreement metrics: metric key -> thresholds key (the option is its name).
AGREEMENT_GATES = {"knn_overlap_mean": "min_knn_overlap", "rank_correlation": "min_rank_correlation"}


def _agreement(old, new) -> tuple[MetricChange, ...]:
    """The agreement metrics of a pass that either run has."""
    old_agr, new_agr = _agreement_of(old), _agreement_of(new)
    out = []
    for key, label, section, figure, same, gated in AGREEMENT_METRICS:
        a, b = old_agr.get(section), new_agr.get(section)
        if not isinstance(a, dict) and not isinstance(b, dict):
            continue
        in_old, in_new = isinstance(a, dict), isinstance(b, dict)
        compared = in_old and in_new and all(a.get(f) == b.get(f) for f in same)
        k = (b if in_new else a).get("k")
        out.append(MetricChange(
            key=key, label=f"{label}@{k}" if section == "neighbours" and k else label,
            old=_finite(a.get(figure)) if in_old else None, new=_finite(b.get(figure)) if in_new else None,
            in_old=in_old, in_new=in_new, compared=compared, gated=gated,
        ))
    return tuple(out)


def _agreement_of(attempt) -> dict:
    metrics = attempt.metrics if attempt is not None else None
    agreement = (metrics or {}).get("agreement")
    return agreement if isinstance(agreement, dict) else {}


def _agreement_regressions(change: PolicyChange, thresholds: dict, tolerance: float, share_tolerance: float):
    """Sentences on the agreement metrics of one pass that NEW made worse."""
    for metric in change.agreement:
        if not metric.gated or metric.old is None or not metric.in_new:
            continue
        values = f"{_fmt(metric.old)} -> {_fmt(metric.new)}"
        option = AGREEMENT_GATES.get(metric.key)
        gate = thresholds.get(option) if option else None
        if gate is not None and metric.old >= gate and (metric.new is None or metric.new < gate):
            yield f"{metric.label} fell below --{option.replace('_', '-')} {gate:g}: {values}"
            continue
        allowed = tolerance if metric.key == "rank_correlation" else share_tolerance
        delta = metric.delta
        if delta is not None and delta < -allowed:
            yield f"{metric.label} fell by more than {allowed:g}: {values}"


def _fmt(value: float | None) -> str:
    return format_cosine(value)  # never rounded up, so a figure below a gate never prints at it


def _names(ids, shown: int = 10) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _passes(report: Report) -> dict:
    return {(a.name, a.role): a for a in report.attempts}


def _union(first: dict, second: dict) -> list:
    """Keys of both, in first's order and then second's new ones."""
    return list(first) + [key for key in second if key not in first]


def _environment(old: Report, new: Report):
    for what, section, key in ENVIRONMENT_KEYS:
        yield what, getattr(old, section).get(key), getattr(new, section).get(key)


def _cosines(attempt) -> dict[str, float | None]:
    metrics = attempt.metrics if attempt is not None else None
    return {c["id"]: _finite(c["cosine"]) for c in (metrics or {}).get("cosines", [])}


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _policy_change(key, old, new, threshold: float) -> PolicyChange:
    old_cos, new_cos = _cosines(old), _cosines(new)
    changes = []
    for seq in (i for i in old_cos if i in new_cos):
        a, b = old_cos[seq], new_cos[seq]
        crossed = a is not None and a >= threshold and (b is None or b < threshold)
        changes.append(SequenceChange(seq, a, b, crossed))
    changes.sort(key=lambda s: (s.delta is None, s.delta if s.delta is not None else 0.0))

    def side(attempt, pick):
        return pick(attempt) if attempt is not None else None

    return PolicyChange(
        policy=key[0], role=key[1], in_old=old is not None, in_new=new is not None,
        old_passed=side(old, lambda a: a.passed), new_passed=side(new, lambda a: a.passed),
        old_min_cosine=side(old, lambda a: _finite((a.metrics or {}).get("min_cosine"))),
        new_min_cosine=side(new, lambda a: _finite((a.metrics or {}).get("min_cosine"))),
        old_tokens_per_second=side(old, lambda a: a.timing.get("tokens_per_second")),
        new_tokens_per_second=side(new, lambda a: a.timing.get("tokens_per_second")),
        old_peak_memory_bytes=side(old, lambda a: a.peak_memory_bytes),
        new_peak_memory_bytes=side(new, lambda a: a.peak_memory_bytes),
        sequences=tuple(changes),
        agreement=_agreement(old, new),
    )
