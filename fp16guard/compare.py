"""compare(reference, candidate) -> Comparison: pure, and truthy when the candidate passes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from .config import Thresholds
from .errors import NonFiniteReferenceError
from .metrics import TokenStats, cosine_rows, count_nonfinite, percentile

WORST_SHOWN = 5


@dataclass(frozen=True)
class Comparison:
    """How a candidate's pooled embeddings agree with the FP32 reference, and the verdict."""

    passed: bool
    reason: str
    threshold: float
    sequences: int
    cosines: tuple[float, ...]  # per sequence, in input order; NaN where not finite
    min_cosine: float
    mean_cosine: float
    p1_cosine: float
    below_threshold: int
    worst: tuple[tuple[str, float], ...]
    nan_count: int
    inf_count: int
    max_abs_error: float
    relative_l2_error: float
    tokens: TokenStats | None = None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """The metrics as plain data (verdict fields excluded); token stats include relative L2."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("passed", "reason", "tokens")}
        data["tokens"] = self.tokens.to_dict() if self.tokens is not None and self.tokens.tokens else None
        return data

    @property
    def margin(self) -> float:
        """How far the worst sequence is above (positive) or below the threshold."""
        return self.min_cosine - self.threshold


def check_reference(reference: torch.Tensor, ids: Sequence[str]) -> None:
    """Raise NonFiniteReferenceError if any FP32 reference row has NaN/Inf."""
    bad_reference = ~torch.isfinite(reference).all(-1)
    if bad_reference.any():
        names = [ids[i] for i in bad_reference.nonzero().flatten().tolist()]
        raise NonFiniteReferenceError(
            f"the FP32 reference has NaN/Inf for {len(names)} sequence(s) ({', '.join(names[:5])}): "
            "the model is broken in full precision, so there is nothing to validate against"
        )


def compare(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    ids: Sequence[str],
    thresholds: Thresholds,
    tokens: TokenStats | None = None,
    token_nonfinite: tuple[int, int] | None = None,
) -> Comparison:
    """Compare pooled embeddings [N, D] row by row against the FP32 ``reference``.

    ``tokens`` adds token-level statistics; ``token_nonfinite`` gives the NaN/Inf element counts
    of the candidate's hidden states (otherwise those of the pooled embeddings are reported). Raises NonFiniteReferenceError if the reference has NaN/Inf.
    """
    if reference.shape != candidate.shape or reference.shape[0] != len(ids):
        raise ValueError(f"shape mismatch: {tuple(reference.shape)}, {tuple(candidate.shape)}, {len(ids)} ids")
    check_reference(reference, ids)
    cos = cosine_rows(reference, candidate)
    finite = cos[~torch.isnan(cos)]
    nan_count, inf_count = token_nonfinite if token_nonfinite is not None else count_nonfinite(candidate)
    bad_rows = int((~torch.isfinite(candidate).all(-1)).sum())
    threshold = thresholds.min_cosine
    # A NaN cosine sorts as the worst possible agreement.
    order = torch.argsort(torch.nan_to_num(cos, nan=-math.inf))
    worst = tuple((ids[i], float(cos[i])) for i in order[:WORST_SHOWN].tolist())
    below = int((torch.nan_to_num(cos, nan=-math.inf) < threshold).sum())
    diff = (candidate.double() - reference.double())[torch.isfinite(candidate).all(-1)]
    ref_rows = reference.double()[torch.isfinite(candidate).all(-1)]
    min_cos = float(finite.min()) if finite.numel() else math.nan
    if nan_count or inf_count or bad_rows:
        passed = False
        reason = f"NaN/Inf in {bad_rows} of {len(ids)} sequences ({nan_count} NaN, {inf_count} Inf values)"
    elif below:
        passed = False
        reason = f"{below} of {len(ids)} sequences below cosine {threshold} (worst {worst[0][0]}: {worst[0][1]:.6f})"
    else:
        passed, reason = True, f"all {len(ids)} sequences at cosine >= {threshold} (min {min_cos:.6f})"
    return Comparison(
        passed=passed,
        reason=reason,
        threshold=threshold,
        sequences=len(ids),
        cosines=tuple(float(c) for c in cos),
        min_cosine=min_cos,
        mean_cosine=float(finite.mean()) if finite.numel() else math.nan,
        p1_cosine=percentile(finite, 1.0),
        below_threshold=below,
        worst=worst,
        nan_count=nan_count,
        inf_count=inf_count,
        max_abs_error=float(diff.abs().max()) if diff.numel() else math.nan,
        relative_l2_error=float(diff.norm() / ref_rows.norm()) if diff.numel() and ref_rows.norm() > 0 else math.nan,
        tokens=tokens,
    )
