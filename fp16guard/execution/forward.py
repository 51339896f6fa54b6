"""The one forward path: a built model, in one layout, on one device, run over token batches.

Every pass of the package runs its model through a ``Forward``: validate's timed pass and its
re-runs, embed, the FP64 floor, the batch-composition check and the per-layer profile. It is the
only caller of ``Target.hidden_states`` and ``Target.packed_hidden_states`` (halving a batch that
runs out of GPU memory) and the only place hidden states are pooled. The layout is an axis of
it: padded rows, packed rows, or padded rows pooled in FP64; another layout is another
``Layout``, not another loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fp16guard.execution.build import build
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import PackedBatch, TokenBatch
from fp16guard.numerics.metrics import masked_mean, segment_mean
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import AppliedPolicy

#: A batch's model inputs on the device: token ids [B, T] (padded) or a PackedBatch.
Inputs = torch.Tensor | PackedBatch


class Layout(ABC):
    """How a batch's rows are laid out for the model: its inputs, the forward call, the pooled
    positions and the pooling, all in that layout."""

    name: str

    @abstractmethod
    def inputs(self, batch: TokenBatch, device: torch.device) -> Inputs:
        """The batch's model inputs, on ``device``."""

    @abstractmethod
    def hidden_states(self, target: Target, loaded: LoadedModel, model: nn.Module, inputs: Inputs,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states of each of ``layers``, from one forward pass over ``inputs``."""

    @abstractmethod
    def mask(self, batch: TokenBatch, device: torch.device) -> torch.Tensor:
        """The pooled positions, in this layout's shape, on ``device``."""

    @abstractmethod
    def pool(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of ``hidden`` over the ``mask`` positions of each row: [B, D], in row order."""

    @abstractmethod
    def padded(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` and its pooled positions ``mask`` as the batch's padded rows: [B, T, D]
        (zeros at padding) and [B, T], on their device."""

    @abstractmethod
    def tokens(self, batch: TokenBatch) -> int:
        """The positions the model computes for ``batch`` (padding included where it pads)."""

    def prepare(self, batch: TokenBatch, pin: bool = False) -> None:
        """Build on the host, ahead of the forward, what this layout needs of ``batch``; with
        ``pin``, in page-locked memory, so that copying it to a GPU does not wait for the GPU."""
        if pin:
            batch.pin_memory()


class Padded(Layout):
    """Rows padded on the right to the batch's longest; pooled in FP32 (``masked_mean``)."""

    name = "padded"

    def inputs(self, batch: TokenBatch, device: torch.device) -> torch.Tensor:
        return batch.tokens.to(device, non_blocking=True)

    def hidden_states(self, target: Target, loaded: LoadedModel, model: nn.Module, inputs: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        return target.hidden_states(loaded, model, inputs, layers)

    def mask(self, batch: TokenBatch, device: torch.device) -> torch.Tensor:
        return batch.pool_mask.to(device, non_blocking=True)

    def pool(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, mask)

    def padded(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden, mask

    def tokens(self, batch: TokenBatch) -> int:
        return batch.tokens.numel()


class PaddedFloat64(Padded):
    """Padded rows pooled in FP64 (the FP64 floor's yardstick, on a model cast to FP64)."""

    name = "padded-float64"

    def pool(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Summed and divided in FP64, over the positions masked_mean pools: an FP32 sum would
        # round the exact answer to the very precision it is measuring.
        keep = mask[..., None]
        return torch.where(keep, hidden.double(), 0.0).sum(1) / keep.sum(1).clamp_min(1)


class Packed(Layout):
    """The batch's rows concatenated without padding (a model built under a packed policy);
    pooled in FP32 (``segment_mean``)."""

    name = "packed"

    def inputs(self, batch: TokenBatch, device: torch.device) -> PackedBatch:
        return batch.pack().to(device)

    def hidden_states(self, target: Target, loaded: LoadedModel, model: nn.Module, inputs: PackedBatch,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        return target.packed_hidden_states(loaded, model, inputs, layers)

    def mask(self, batch: TokenBatch, device: torch.device) -> torch.Tensor:
        return batch.pack().pool_mask.to(device, non_blocking=True)

    def pool(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pack = batch.pack()
        segments = pack.segments.to(mask.device, non_blocking=True)
        columns = pack.positions.to(mask.device, non_blocking=True)
        return segment_mean(hidden, mask, segments, pack.sequences, pack.max_seqlen, columns)

    def padded(self, batch: TokenBatch, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.unpack(hidden), batch.pool_mask.to(mask.device)

    def tokens(self, batch: TokenBatch) -> int:
        return batch.tokens_used

    def prepare(self, batch: TokenBatch, pin: bool = False) -> None:
        batch.pack()
        super().prepare(batch, pin)


PADDED, PADDED_FLOAT64, PACKED = Padded(), PaddedFloat64(), Packed()
#: The layouts a policy names (``Policy.layout``).
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (PADDED, PACKED)}


def layout_of(policy: Policy) -> Layout:
    """The layout ``policy`` runs in."""
    return LAYOUTS[policy.layout]


@dataclass
class States:
    """Hidden states of one batch from one forward pass: layer -> [B, T, D] padded, or [N, D]
    packed (rows concatenated in order)."""

    hidden: dict[int, torch.Tensor]
    splits: int = 0  # halvings of the batch after running out of GPU memory


@dataclass
class Pooled:
    """One layer of one batch, pooled, on the device."""

    batch: TokenBatch
    rows: torch.Tensor  # [B, D] in the batch's row order: FP32 (FP64 in the FP64 layout)
    hidden: torch.Tensor  # the layer's hidden states, in the layout's shape
    mask: torch.Tensor  # their pooled positions
    layout: Layout
    splits: int = 0  # halvings of the batch's forward after running out of GPU memory

    def residues(self) -> torch.Tensor:
        """Hidden states of the pooled positions [R, D], row after row (in both layouts)."""
        return self.hidden[self.mask]

    def as_padded(self) -> Pooled:
        """The same outputs with the hidden states and their mask as the batch's padded rows
        [B, T, D] and [B, T] (the same tensors where the layout pads), for comparisons with a
        padded reference."""
        hidden, mask = self.layout.padded(self.batch, self.hidden, self.mask)
        return Pooled(self.batch, self.rows, hidden, mask, PADDED, self.splits)


class Forward:
    """A built model in one layout on one device: hidden states, pooled rows and per-residue
    states of token batches. ``split``: halve a batch that runs out of GPU memory and retry."""

    def __init__(self, target: Target, loaded: LoadedModel, model: nn.Module, device: torch.device,
                 layout: Layout = PADDED, split: bool = True):
        self.target, self.loaded, self.model, self.device = target, loaded, model, device
        self.layout, self.split = layout, split

    def inputs(self, batch: TokenBatch) -> Inputs:
        """The batch's model inputs on this device (to share between models on it)."""
        return self.layout.inputs(batch, self.device)

    def mask(self, batch: TokenBatch) -> torch.Tensor:
        """The batch's pooled positions, in this layout, on this device."""
        return self.layout.mask(batch, self.device)

    def call(self, inputs: Inputs, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states of each of ``layers`` for inputs already on the device: one forward."""
        return self.layout.hidden_states(self.target, self.loaded, self.model, inputs, layers)

    def states(self, batch: TokenBatch, layers: Sequence[int]) -> States:
        """Hidden states of each of ``layers``, from one forward pass. A batch that runs out of
        GPU memory is halved by rows and retried, recursively, so no sequence is lost (a padded
        half keeps the batch's width, so every row's result is unchanged). One row that does not
        fit, or any batch without ``split``, re-raises."""
        try:
            return States(self.call(self.inputs(batch), layers))
        except torch.OutOfMemoryError:
            if not self.split or len(batch.indices) < 2:
                raise
        # Retry outside the handler: inside it, the traceback would keep the failed attempt's
        # activations alive, and the halves would run out of memory too.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch.indices) // 2
        halves = [self.states(batch.rows(part), layers) for part in (slice(None, half), slice(half, None))]
        hidden = {layer: torch.cat([part.hidden[layer] for part in halves]) for layer in layers}
        return States(hidden, 1 + sum(part.splits for part in halves))

    def pool(self, batch: TokenBatch, hidden: torch.Tensor, splits: int = 0) -> Pooled:
        """``hidden`` (one layer of ``batch``) pooled over the batch's pooled positions."""
        mask = self.mask(batch)
        return Pooled(batch, self.layout.pool(batch, hidden, mask), hidden, mask, self.layout, splits)

    def pooled(self, batch: TokenBatch, layer: int) -> Pooled:
        """``layer`` of ``batch``, from one forward pass, pooled."""
        states = self.states(batch, (layer,))
        return self.pool(batch, states.hidden[layer], states.splits)

    def each(self, batches: Iterable[TokenBatch], layer: int) -> Iterator[Pooled]:
        """``layer`` of every batch, pooled, batch after batch."""
        for batch in batches:
            yield self.pooled(batch, layer)


def forward_under(target: Target, loaded: LoadedModel, policy: Policy, device: torch.device,
                  spread: bool = False) -> tuple[Forward, AppliedPolicy]:
    """A fresh model built under ``policy`` (``build.build``), run in the policy's layout; the
    modules the policy kept in FP32."""
    model, applied = build(target, loaded, policy, device, spread)
    return Forward(target, loaded, model, device, layout_of(policy)), applied
