"""Frozen settings of one validation run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Sequences in the FP64 pass of ``--fp64-floor``: enough for a stable error figure, few enough
#: that FP64 on a CPU (several times slower than FP32) stays a small share of a run.
FP64_FLOOR_SEQUENCES = 32


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from and how to read them, as the user asked. Kept free of torch
    (like this whole module), so that the ``--gpus`` launcher starts its workers without it."""

    model: str | None = None  # a checkpoint name, a hub id or a directory
    weights: Path | None = None  # a local weights file
    offline: bool = False
    trust_remote_code: bool = False
    pooling: str = "mean"  # "mean" over the pooled positions, or "cls"


@dataclass(frozen=True)
class Thresholds:
    """What an attempt must meet to pass.

    ``min_cosine`` applies to every sequence's pooled embedding; any NaN or Inf fails. The
    optional agreement gates (None: reported, not gated): ``min_knn_overlap``, the mean share of
    each sequence's k nearest FP32 neighbours kept under the attempt; ``min_rank_correlation``,
    the Spearman correlation of all pairwise cosine similarities, FP32 vs the attempt.
    """

    min_cosine: float = 0.99
    min_knn_overlap: float | None = None
    min_rank_correlation: float | None = None

    def __post_init__(self) -> None:
        from fp16guard.errors import InputError

        if not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")
        if self.min_knn_overlap is not None and not 0.0 <= self.min_knn_overlap <= 1.0:
            raise InputError(f"--min-knn-overlap must lie in [0, 1], got {self.min_knn_overlap}")
        if self.min_rank_correlation is not None and not -1.0 <= self.min_rank_correlation <= 1.0:
            raise InputError(f"--min-rank-correlation must lie in [-1, 1], got {self.min_rank_correlation}")


@dataclass(frozen=True)
class ValidationConfig:
    """Everything that shapes a run apart from the model and the sequences."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    device: str = "auto"  # auto, cuda, cpu, or map (blocks spread over every GPU)
    reference_device: str | None = None  # where the FP32 reference runs; None: as ``device``
    max_tokens: int | None = None  # tokens per batch; None derives it from free memory (budget.py)
    max_length: int | None = None  # residues; None means the target's own limit
    layer: int | None = None  # None means the last layer
    policies: tuple[str, ...] | None = None  # None means the whole fallback ladder
    stop_at_first_pass: bool = True
    also_try: tuple[str, ...] = ()  # reported beside the ladder, never part of the verdict
    profile: bool = False  # per-layer agreement of every attempt with FP32
    # Repeat embedding passes shorter than 2 s on a GPU and keep the fastest: steadier speed
    # figures for small sets, at the cost of wall time (off: one timed pass per policy).
    careful_timing: bool = False
    search: bool = False  # when full FP16 fails: the fewest blocks to keep in FP32
    # Per-token metrics need the FP32 reference's token states kept on the host; beyond this
    # many bytes they are kept for the first batches only, and the report says how many.
    token_reference_budget_bytes: int = 4 * 1024**3
    save_reference: str | None = None  # write the FP32 reference (.npz) here after computing it
    reference: str | None = None  # load the FP32 reference from this .npz instead of computing it
    probe: str | None = None  # a linear head (.npz or .safetensors: W [classes, dim], b) to check decisions with
    labels: str | None = None  # a TSV of sequence id and label: nearest-centroid accuracy per attempt
    fp64_floor: int = 0  # sequences in the FP64 pass that measures FP32's own error (0: none)
