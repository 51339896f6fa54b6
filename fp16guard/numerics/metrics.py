"""Pure tensor -> number functions. Nothing here knows about models."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


def cosine_rows(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows, in float64; NaN where a row is not finite.

    Two zero rows count as identical (1.0); a zero row against a non-zero one as 0.0.
    """
    a = reference.double()
    b = candidate.double()
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    both_zero = (a.abs().amax(-1) == 0) & (b.abs().amax(-1) == 0)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    # Identical rows are exactly 1: rounding in the norms would otherwise give 0.9999999999999998.
    identical = (a == b).all(-1)
    cos = torch.where(both_zero | identical, torch.ones_like(cos), cos)
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, cos.clamp(-1.0, 1.0), torch.full_like(cos, math.nan))


def count_nonfinite(x: torch.Tensor) -> tuple[int, int]:
    """Numbers of NaN and of +-Inf elements."""
    return int(torch.isnan(x).sum()), int(torch.isinf(x).sum())


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where ``mask`` is True, accumulated in FP32: [B, T, D] -> [B, D]."""
    keep = mask.unsqueeze(-1)
    # Select rather than multiply: 0 x Inf would let a padding position spoil the mean.
    total = torch.where(keep, hidden.float(), 0.0).sum(1)
    return total / keep.sum(1).clamp_min(1).to(torch.float32)


def segment_mean(hidden: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor, count: int,
                 longest: int | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per sequence of a packed batch, over the tokens where ``mask`` is True, accumulated
    in FP32: hidden [N, D], mask and segment numbers [N] (sequences contiguous, in order) ->
    [count, D] (``masked_mean`` for the packed layout).

    The tokens are laid out as padded rows and summed along them, as ``masked_mean`` sums: a
    scatter-add (index_add_) would accumulate with atomics on CUDA, in an order that changes from
    run to run, and the same sequence would not get the same bits twice (measured on an H200:
    1-GPU and 2-GPU embed outputs differing by up to 7e-7). ``longest`` (the longest sequence)
    and ``columns`` (each token's position in its sequence), when the caller knows them (a
    PackedBatch does), save reading sizes back from the device: with both, nothing here waits
    for the GPU, so the next batch can be queued while this one runs."""
    if columns is None:
        lengths = torch.bincount(segments, minlength=count)
        starts = torch.cumsum(lengths, 0) - lengths
        columns = torch.arange(segments.shape[0], device=segments.device) - starts[segments]
        if longest is None:
            longest = int(lengths.max()) if count else 0
    elif longest is None:
        raise ValueError("segment_mean needs the longest sequence along with the columns")
    rows = hidden.new_zeros(count, longest, hidden.shape[-1], dtype=torch.float32)
    keep = torch.zeros(count, longest, dtype=torch.bool, device=hidden.device)
    rows[segments, columns] = hidden.float()
    keep[segments, columns] = mask
    return masked_mean(rows, keep)


def percentile(values: torch.Tensor, q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if values.numel() == 0:
        return math.nan
    return float(torch.quantile(values.double(), q / 100.0))


#: Per-token cosines are kept as a histogram of their gap to 1 (log10 bins of 1/GAP_BINS_PER_DECADE
#: decade from 1e-12 to 2), so that a percentile survives the merging of batches and ranks in
#: constant memory: the 1st percentile is read off it to within one bin (12% of the gap).
GAP_BINS_PER_DECADE = 20
GAP_FLOOR_EXPONENT = -12
GAP_BINS = math.ceil((math.log10(2.0) - GAP_FLOOR_EXPONENT) * GAP_BINS_PER_DECADE)


def gap_histogram(cos: torch.Tensor) -> tuple[int, ...]:
    """Counts per bin of log10(1 - cosine) (see GAP_BINS); a gap at or below 1e-12 (1 itself
    included) counts in the first bin."""
    gap = (1.0 - cos.double()).clamp(10.0**GAP_FLOOR_EXPONENT, 2.0)
    index = ((gap.log10() - GAP_FLOOR_EXPONENT) * GAP_BINS_PER_DECADE).floor().long().clamp(0, GAP_BINS - 1)
    return tuple(torch.bincount(index, minlength=GAP_BINS).tolist())


def histogram_percentile(counts: tuple[int, ...], q: float) -> float:
    """The ``q``-th percentile (0-100) cosine from a gap histogram, rounded to the worse side
    (the upper edge of its bin's gap); NaN for no counts."""
    total = sum(counts)
    if not total:
        return math.nan
    wanted = max(1, math.ceil(total * q / 100.0))  # tokens at or below the percentile, worst first
    seen = 0
    for index in range(len(counts) - 1, -1, -1):
        seen += counts[index]
        if seen >= wanted:
            return max(-1.0, 1.0 - 10.0 ** (GAP_FLOOR_EXPONENT + (index + 1) / GAP_BINS_PER_DECADE))
    return math.nan


@dataclass(frozen=True)
class TokenStats:
    """Token-level agreement accumulated over batches; merge with ``+``."""

    tokens: int = 0
    sequences: int = 0
    nonfinite_tokens: int = 0
    min_cosine: float = math.inf  # inf until a finite token is seen
    max_abs_error: float = math.nan  # nan until a finite token is seen
    squared_error: float = 0.0
    squared_reference: float = 0.0
    gap_counts: tuple[int, ...] = ()  # histogram of per-token 1 - cosine (gap_histogram)

    @classmethod
    def of_batch(cls, reference: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor) -> TokenStats:
        """Stats over the masked positions of [B, T, D] tensors; non-finite tokens are counted
        and left out of the cosine and error sums."""
        ref = reference[mask].double()
        cand = candidate[mask].double()
        finite = torch.isfinite(cand).all(-1)
        ref, cand = ref[finite], cand[finite]
        cos = cosine_rows(ref, cand)
        diff = cand - ref
        return cls(
            tokens=int(mask.sum()),
            sequences=int(mask.shape[0]),
            nonfinite_tokens=int((~finite).sum()),
            min_cosine=float(cos.min()) if cos.numel() else math.inf,
            max_abs_error=float(diff.abs().max()) if diff.numel() else math.nan,
            squared_error=float((diff**2).sum()),
            squared_reference=float((ref**2).sum()),
            gap_counts=gap_histogram(cos),
        )

    def __add__(self, other: TokenStats) -> TokenStats:
        return TokenStats(
            tokens=self.tokens + other.tokens,
            sequences=self.sequences + other.sequences,
            nonfinite_tokens=self.nonfinite_tokens + other.nonfinite_tokens,
            min_cosine=min(self.min_cosine, other.min_cosine),
            max_abs_error=_nanmax(self.max_abs_error, other.max_abs_error),
            squared_error=self.squared_error + other.squared_error,
            squared_reference=self.squared_reference + other.squared_reference,
            gap_counts=_add_counts(self.gap_counts, other.gap_counts),
        )

    def to_dict(self) -> dict:
        """Plain data (the histogram replaced by its 1st percentile, ``p1_cosine``); the
        summaries (min, 1st percentile, errors) are NaN when any token is non-finite, with
        ``nonfinite_tokens`` beside them, so they never read as a pass."""
        data = {**asdict(self), "relative_l2_error": self.relative_l2_error, "p1_cosine": self.p1_cosine}
        del data["gap_counts"]
        if self.nonfinite_tokens:
            data.update(min_cosine=math.nan, max_abs_error=math.nan, relative_l2_error=math.nan, p1_cosine=math.nan)
        return data

    @property
    def p1_cosine(self) -> float:
        """The 1st percentile of the per-token cosines (to within one histogram bin, rounded to
        the worse side)."""
        return histogram_percentile(self.gap_counts, 1.0)

    @property
    def relative_l2_error(self) -> float:
        """||candidate - reference|| / ||reference|| over the finite tokens."""
        if self.squared_reference == 0:
            return math.nan
        return math.sqrt(self.squared_error / self.squared_reference)


def _add_counts(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a or not b:
        return a or b
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _nanmax(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)
