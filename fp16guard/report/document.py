"""The report of a validation run as plain data: what every writer (report/*) renders."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

#: 2: metrics gain ``nonfinite_sequences``; their min/mean/p1 cosine and errors are null when
#: anything is non-finite; ``cosines`` is a list of {"id", "cosine"}; attempts gain
#: ``composition`` (the batch-composition check) and their timing first-pass and steady figures.
#: 3: metrics gain ``agreement`` (neighbours, ranking, probe, centroid, fp64, decisions: see
#: fp16guard.numerics.agreement) and ``tokens.p1_cosine``; thresholds gain ``min_knn_overlap`` and
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
    composition: dict | None = None  # the batch-composition check (fp16guard.execution.composition)

    @property
    def name(self) -> str:
        """The policy's name ("fp16+ln32")."""
        return self.policy["name"]

    @property
    def fp32_module_count(self) -> int:
        """How many modules this pass kept in FP32."""
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
        """The CLI's exit status for this verdict: 0 pass, 1 accuracy failure."""
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        """The report as plain JSON data (NaN/Inf as None)."""
        data = asdict(self)
        return finite_or_none(data)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """A report from ``to_dict``'s data (of a readable schema version; ValueError otherwise)."""
        version = data.get("schema_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            older = ", ".join(map(str, READABLE_VERSIONS[:-1]))
            raise ValueError(f"report schema version {version} is not {SCHEMA_VERSION} (or {older})")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["attempts"] = [Attempt(**a) for a in data["attempts"]]
        return cls(**values)


def read_report(path: str | Path) -> Report:
    """Load a report.json."""
    return Report.from_dict(json.loads(Path(path).read_text()))
