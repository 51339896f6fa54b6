"""Per-layer divergence: where in the network a precision policy departs from FP32.

The FP32 model and the candidate run batch by batch in lockstep; forward hooks read every
block's output, and the comparison is reduced on the fly, so nothing beyond one batch's
activations is kept. Hooks only read, so the embeddings are the same with and without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fp16guard.execution.build import build
from fp16guard.execution.forward import PADDED, Forward
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.metrics import cosine_rows
from fp16guard.numerics.policy import FP32, Policy

FP16_MAX = 65504.0


@dataclass
class LayerProfile:
    """Agreement of one block's output with FP32, over the pooled positions of every batch."""

    layer: int  # 1-based block index
    min_cosine: float = math.inf
    cosine_sum: float = 0.0
    tokens: int = 0
    squared_error: float = 0.0
    squared_reference: float = 0.0
    max_abs_activation: float = 0.0  # largest |value| in the candidate's finite tokens
    nonfinite: int = 0

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        """Add the tokens [T, D] of one batch, FP32's and the candidate's, compared in FP64."""
        ref, cand = reference.double(), candidate.double()
        finite = torch.isfinite(cand).all(-1)
        self.nonfinite += int((~finite).sum())
        ref, cand = ref[finite], cand[finite]
        if ref.numel():
            cos = cosine_rows(ref, cand)
            self.min_cosine = min(self.min_cosine, float(cos.min()))
            self.cosine_sum += float(cos.sum())
            self.tokens += int(cos.numel())
            self.squared_error += float(((cand - ref) ** 2).sum())
            self.squared_reference += float((ref**2).sum())
            self.max_abs_activation = max(self.max_abs_activation, float(cand.abs().max()))

    def merge(self, other: LayerProfile) -> None:
        """Add ``other``'s tokens (the same block, other batches) to this profile."""
        self.min_cosine = min(self.min_cosine, other.min_cosine)
        self.cosine_sum += other.cosine_sum
        self.tokens += other.tokens
        self.squared_error += other.squared_error
        self.squared_reference += other.squared_reference
        self.max_abs_activation = max(self.max_abs_activation, other.max_abs_activation)
        self.nonfinite += other.nonfinite

    def to_dict(self) -> dict:
        """The figures the report shows for this block."""
        mean = self.cosine_sum / self.tokens if self.tokens else math.nan
        relative = math.sqrt(self.squared_error / self.squared_reference) if self.squared_reference else math.nan
        return {
            "layer": self.layer,
            "min_cosine": self.min_cosine if self.tokens else math.nan,
            "mean_cosine": mean,
            "relative_error": relative,
            "max_abs_activation": self.max_abs_activation,
            "fp16_headroom": FP16_MAX / self.max_abs_activation if self.max_abs_activation else math.inf,
            "nonfinite_tokens": self.nonfinite,
        }


def _capture(blocks: list[nn.Module], orient, sink: list) -> list:
    """Forward hooks that put each block's output (as [B, T, D]) in ``sink``; their handles."""
    handles = []
    for index, block in enumerate(blocks):

        def hook(_module, _inputs, output, index=index):
            hidden = output[0] if isinstance(output, tuple) else output
            sink[index] = orient(hidden).detach()

        handles.append(block.register_forward_hook(hook))
    return handles


def profile_batches(
    target: Target, loaded: LoadedModel, policy: Policy, batches: list[TokenBatch], device: torch.device, layer: int
) -> list[list[LayerProfile]]:
    """Per batch, the agreement of each block's output under ``policy`` with FP32.

    Needs the FP32 and the candidate model in memory together; both run padded rows, which the
    hooks read (a batch that runs out of GPU memory is not halved, or the hooks would see halves)."""
    reference = Forward(target, loaded, build(target, loaded, FP32, device)[0], device, PADDED)
    candidate = Forward(target, loaded, build(target, loaded, policy, device)[0], device, PADDED)
    ref_blocks, cand_blocks = target.blocks(reference.model), target.blocks(candidate.model)
    per_batch = []
    ref_out: list = [None] * len(ref_blocks)
    cand_out: list = [None] * len(cand_blocks)
    handles = _capture(ref_blocks, target.block_orientation, ref_out)
    handles += _capture(cand_blocks, target.block_orientation, cand_out)
    try:
        with torch.inference_mode():
            for batch in batches:
                tokens, mask = reference.inputs(batch), reference.mask(batch)  # moved once, for both models
                reference.call(tokens, (layer,))
                candidate.call(tokens, (layer,))
                stats = [LayerProfile(i + 1) for i in range(len(ref_blocks))]
                for stat, ref, cand in zip(stats, ref_out, cand_out):
                    stat.update(ref[mask], cand[mask])
                per_batch.append(stats)
    finally:
        for handle in handles:
            handle.remove()
    return per_batch


def combine_profiles(per_batch: list[list[LayerProfile]]) -> list[dict]:
    """One entry per block over every batch, summed in batch order."""
    total = [LayerProfile(p.layer) for p in per_batch[0]] if per_batch else []
    for stats in per_batch:
        for merged, stat in zip(total, stats):
            merged.merge(stat)
    return [s.to_dict() for s in total]


def profile_policy(
    target: Target, loaded: LoadedModel, policy: Policy, batches: list[TokenBatch], device: torch.device, layer: int
) -> list[dict]:
    """Per-block agreement of ``policy`` with FP32, one entry per block, in order.

    Needs the FP32 and the candidate model in memory together."""
    return combine_profiles(profile_batches(target, loaded, policy, batches, device, layer))


def first_divergent_layer(layers: list[dict], min_cosine: float) -> dict | None:
    """The first block whose output has non-finite tokens or falls below ``min_cosine``."""
    for entry in layers:
        if entry["nonfinite_tokens"] or not entry["min_cosine"] >= min_cosine:
            return entry
    return None
