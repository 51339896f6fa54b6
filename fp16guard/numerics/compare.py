"""compare(reference, candidate) -> Comparison: pure, and truthy when the candidate passes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from fp16guard.core.config import Thresholds
from fp16guard.core.formatting import format_cosine
from fp16guard.errors import NonFiniteReferenceError
from fp16guard.numerics.agreement import AgreementInputs, decisions, measure
from fp16guard.numerics.metrics import (
    TokenStats,
    cosine_rows,
    count_nonfinite,
    percentile,
)

WORST_SHOWN = 5


@dataclass(frozen=True)
class Comparison:
    """How a candidate's pooled embeddings agree with the FP32 reference, and the verdict.

    NaN-aware: a non-finite sequence is the worst one (first in ``worst``), and every summary
    over sequences (min, mean, 1st percentile, errors) is NaN when any sequence or hidden state
    is non-finite, so a gate on any of them cannot pass; ``nonfinite_sequences`` counts them.
    """

    passed: bool
    reason: str
    threshold: float
    sequences: int
    nonfinite_sequences: int  # sequences whose pooled embedding has NaN/Inf
    ids: tuple[str, ...]  # the sequences, in input order
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
    # Neighbour, ranking, probe and FP64-floor agreement (fp16guard.numerics.agreement.measure), with
    # ``decisions``: what each metric decided (gated) or would have decided (advisory).
    agreement: dict | None = None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """The metrics as plain data (verdict fields excluded): ``cosines`` is a list of
        {"id", "cosine"} in input order; token stats include relative L2."""
        skip = ("passed", "reason", "tokens", "ids", "cosines")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        data["cosines"] = [{"id": i, "cosine": c} for i, c in zip(self.ids, self.cosines, strict=True)]
        data["tokens"] = self.tokens.to_dict() if self.tokens is not None and self.tokens.tokens else None
        data["agreement"] = self.agreement
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
    agreement: AgreementInputs | None = None,
) -> Comparison:
    """Compare pooled embeddings [N, D] row by row against the FP32 ``reference``.

    ``tokens`` adds token-level statistics; ``token_nonfinite`` gives the NaN/Inf element counts
    of the candidate's hidden states (otherwise those of the pooled embeddings are reported).
    The agreement metrics (neighbours, ranking; the probe, labels and FP64 floor in
    ``agreement``) are always measured; they gate only where ``thresholds`` sets
    ``min_knn_overlap`` or ``min_rank_correlation``, after cosine and NaN/Inf.
    Raises NonFiniteReferenceError if the reference has NaN/Inf.
    """
    if reference.shape != candidate.shape or reference.shape[0] != len(ids):
        raise ValueError(f"shape mismatch: {tuple(reference.shape)}, {tuple(candidate.shape)}, {len(ids)} ids")
    check_reference(reference, ids)
    cos = cosine_rows(reference, candidate)
    nan_count, inf_count = token_nonfinite if token_nonfinite is not None else count_nonfinite(candidate)
    bad_rows = int((~torch.isfinite(candidate).all(-1)).sum())
    threshold = thresholds.min_cosine
    # A NaN cosine sorts as the worst possible agreement (stable: NaN rows in input order).
    order = torch.argsort(torch.nan_to_num(cos, nan=-math.inf), stable=True)
    worst = tuple((ids[i], float(cos[i])) for i in order[:WORST_SHOWN].tolist())
    below = int((torch.nan_to_num(cos, nan=-math.inf) < threshold).sum())
    nonfinite = bool(nan_count or inf_count or bad_rows)
    # Summaries are NaN as soon as anything is non-finite: skipping the NaN rows would make a
    # failing candidate's min cosine look like a pass to anyone who reads only that number.
    if nonfinite:
        min_cos = mean_cos = p1_cos = max_abs = rel_l2 = math.nan
    else:
        min_cos, mean_cos, p1_cos = float(cos.min()), float(cos.mean()), percentile(cos, 1.0)
        diff = candidate.double() - reference.double()
        max_abs = float(diff.abs().max())
        ref_norm = reference.double().norm()
        rel_l2 = float(diff.norm() / ref_norm) if ref_norm > 0 else math.nan
    if nonfinite:
        passed = False
        reason = f"NaN/Inf in {bad_rows} of {len(ids)} sequences ({nan_count} NaN, {inf_count} Inf values)"
    elif below:
        passed = False
        reason = (f"{below} of {len(ids)} sequences below cosine {threshold} "
                  f"(worst {worst[0][0]}: {format_cosine(worst[0][1])})")
    else:
        passed, reason = True, f"all {len(ids)} sequences at cosine >= {threshold} (min {format_cosine(min_cos)})"
    agreed = measure(reference, candidate, ids, agreement)
    agreed["decisions"] = decisions(agreed, thresholds.min_knn_overlap, thresholds.min_rank_correlation)
    if passed:
        failed = _failed_gate(agreed, thresholds)
        if failed:
            passed, reason = False, f"{failed}; cosine passed ({reason})"
    return Comparison(
        passed=passed,
        reason=reason,
        threshold=threshold,
        sequences=len(ids),
        nonfinite_sequences=bad_rows,
        ids=tuple(ids),
        cosines=tuple(float(c) for c in cos),
        min_cosine=min_cos,
        mean_cosine=mean_cos,
        p1_cosine=p1_cos,
        below_threshold=below,
        worst=worst,
        nan_count=nan_count,
        inf_count=inf_count,
        max_abs_error=max_abs,
        relative_l2_error=rel_l2,
        tokens=tokens,
        agreement=agreed,
    )


def _failed_gate(agreed: dict, thresholds: Thresholds) -> str:
    """The first agreement gate the candidate misses, as a reason naming the metric ("" if none)."""
    gates = (("neighbours", thresholds.min_knn_overlap, "--min-knn-overlap"),
             ("ranking", thresholds.min_rank_correlation, "--min-rank-correlation"))
    for key, gate, option in gates:
        if gate is None:
            continue
        if key not in agreed:
            return f"{option} {gate}: not measurable on fewer than 3 sequences"
        decision = next(d for d in agreed["decisions"] if d["option"] == option)
        if not decision["passed"]:
            return f"{decision['metric']} {_figure(decision['value'])} below {option} {gate}" + (
                f" (worst {agreed['neighbours']['worst']}: min overlap {_figure(agreed['neighbours']['min_overlap'])})"
                if key == "neighbours" and agreed["neighbours"]["worst"] else ""
            )
    return ""


def _figure(value: float | None) -> str:
    """Four decimals rounded down, so a figure below its gate never prints at the gate."""
    return "NaN" if value is None or not math.isfinite(value) else f"{math.floor(value * 1e4) / 1e4:.4f}"
