"""The batch-composition check: a sequence's embedding must not depend on its batch.

For a sample of sequences, the embedding computed alone, inside one padded batch and inside one
packed batch (under the same policy) must agree to within rounding. A padding mask that leaks,
attention that crosses sequences in a pack, or pooling offsets show up here as disagreements
far beyond FP16 rounding, even where every embedding still looks plausible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fp16guard.execution.batching import token_batch
from fp16guard.execution.forward import forward_under
from fp16guard.models.base import LoadedModel, Target
from fp16guard.numerics.metrics import cosine_rows
from fp16guard.numerics.policy import Policy

SAMPLE_SIZE = 8
#: Disagreement (1 - cosine) tolerated between layouts whatever the sequence: FP16 rounding in
#: different kernels and summation orders stays near 1e-6 on healthy models.
TOLERANCE = 1e-4
#: ... or this many times the sequence's own FP16 error against FP32, for models whose FP16
#: rounding is larger: composition must not add more error than the precision itself does.
ERROR_FACTOR = 4.0
#: The views compared, in the report's order.
PAIRS = (("alone", "padded"), ("alone", "packed"), ("padded", "packed"))


def sample_indices(lengths: Sequence[int], size: int = SAMPLE_SIZE) -> list[int]:
    """A deterministic sample: the shortest and the longest sequence and others evenly spaced
    by length between them (so a padded batch of them has real padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if len(order) <= size:
        return order
    picks = {order[round(k * (len(order) - 1) / (size - 1))] for k in range(size)}
    return sorted(picks, key=lambda i: (lengths[i], i))


def _views(target: Target, loaded: LoadedModel, policy: Policy, texts: Sequence[str], lengths: Sequence[int],
           chosen: list[int], device: torch.device, layer: int) -> dict[str, torch.Tensor]:
    """The pooled embeddings [S, D] of the ``chosen`` sequences (in that order), on the host,
    per view: each alone, together as one padded batch and, for a packed policy, as one pack."""
    views: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        forward, _ = forward_under(target, loaded, replace(policy, layout="padded"), device)
        alone = (token_batch(target, loaded, texts, lengths, [i]) for i in chosen)
        views["alone"] = torch.cat([pooled.rows.cpu() for pooled in forward.each(alone, layer)])
        views["padded"] = forward.pooled(token_batch(target, loaded, texts, lengths, chosen), layer).rows.cpu()
        del forward
        if policy.layout == "packed":
            forward, _ = forward_under(target, loaded, policy, device)
            views["packed"] = forward.pooled(token_batch(target, loaded, texts, lengths, chosen), layer).rows.cpu()
            del forward
    return views


def check_composition(
    target: Target, loaded: LoadedModel, policy: Policy, texts: Sequence[str], lengths: Sequence[int],
    ids: Sequence[str], device: torch.device, layer: int, cosines: Sequence[float] | None = None,
    size: int = SAMPLE_SIZE,
) -> dict:
    """Embed a sample alone, as one padded batch and (for a packed policy, or where the target
    packs) as one pack, under ``policy``; compare every pair per sequence.

    ``cosines`` are each sequence's cosine to FP32 under ``policy`` (input order), which widen
    the tolerance for sequences whose FP16 error is large. Returns plain data for the report:
    per pair the least cosine and the largest absolute difference, and ``defects`` naming
    every sequence and pair beyond the tolerance (``passed`` is False when there are any)."""
    chosen = sample_indices(lengths, size)
    views = _views(target, loaded, policy, texts, lengths, chosen, device, layer)
    pairs = [(a, b) for a, b in PAIRS if a in views and b in views]
    limits = [_limit(cosines[i] if cosines is not None else None) for i in chosen]
    summary: dict[str, dict] = {}
    defects: list[str] = []
    for a, b in pairs:
        cos = cosine_rows(views[a], views[b])
        diff = (views[a] - views[b]).abs().amax(-1)
        summary[f"{a} vs {b}"] = {"min_cosine": float(cos.min()), "max_abs_difference": float(diff.max())}
        for row, index in enumerate(chosen):
            value = float(cos[row])
            if not value >= 1.0 - limits[row]:
                defects.append(
                    f"{ids[index]}: {a} vs {b} cosine {value:.7f} (1 - cos {1.0 - value:.1e}, "
                    f"tolerance {limits[row]:.1e}), max |difference| {float(diff[row]):.3g}"
                )
    return {
        "policy": policy.name,
        "sequences": [ids[i] for i in chosen],
        "pairs": summary,
        "tolerance": TOLERANCE,
        "defects": defects,
        "passed": not defects,
    }


def _limit(cosine: float | None) -> float:
    """The disagreement tolerated for a sequence whose cosine to FP32 is ``cosine`` (None or
    NaN: unknown)."""
    if cosine is None or cosine != cosine:
        return TOLERANCE
    return max(TOLERANCE, ERROR_FACTOR * (1.0 - cosine))
