"""Token batches as the models take them: padded rows, and the same rows packed without padding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenBatch:
    """Token ids of one batch (rows padded on the right) and the mask of the positions pooled."""

    indices: tuple[int, ...]
    tokens: torch.Tensor
    pool_mask: torch.Tensor
    tokens_used: int  # tokens the model reads, padding excluded
    row_lengths: tuple[int, ...] = ()  # tokens per row, special tokens included, padding excluded
    _packed: PackedBatch | None = field(default=None, init=False, repr=False, compare=False)

    def rows(self, part: slice) -> TokenBatch:
        """The rows in ``part`` as a batch of their own (same padded width)."""
        lengths = self.row_lengths[part]
        return TokenBatch(self.indices[part], self.tokens[part], self.pool_mask[part], sum(lengths), lengths)

    def pack(self) -> PackedBatch:
        """The same rows concatenated without padding (see PackedBatch); built once per batch
        (the runner asks for it when running and again when pooling)."""
        if self._packed is None:
            self._packed = self._build_pack()
        return self._packed

    def _build_pack(self) -> PackedBatch:
        if len(self.row_lengths) != self.tokens.shape[0]:
            raise ValueError("a batch needs its row lengths to be packed")
        lengths = torch.tensor(self.row_lengths, dtype=torch.int64)
        real = torch.arange(self.tokens.shape[1])[None, :] < lengths[:, None]
        offsets = [0]
        for n in self.row_lengths:
            offsets.append(offsets[-1] + n)
        segments = torch.repeat_interleave(torch.arange(len(self.row_lengths)), lengths)
        starts = torch.tensor(offsets[:-1], dtype=torch.int64)
        return PackedBatch(
            tokens=self.tokens[real],
            pool_mask=self.pool_mask[real],
            segments=segments,
            positions=torch.arange(offsets[-1]) - starts[segments],
            cu_seqlens=torch.tensor(offsets, dtype=torch.int32),
            offsets=tuple(offsets),
            max_seqlen=max(self.row_lengths),
        )

    def unpack(self, flat: torch.Tensor) -> torch.Tensor:
        """Hidden states of the packed layout [N, D] laid out as this batch's rows [B, T, D]
        (zeros at padding), for comparisons with a padded reference."""
        out = flat.new_zeros(*self.tokens.shape, flat.shape[-1])
        lengths = torch.tensor(self.row_lengths, device=flat.device)
        real = torch.arange(self.tokens.shape[1], device=flat.device)[None, :] < lengths[:, None]
        out[real] = flat
        return out


@dataclass
class PackedBatch:
    """Sequences concatenated without padding: N tokens in all, S sequences.

    ``cu_seqlens`` [S + 1] (int32, as variable-length attention kernels take them) are the
    sequences' start offsets and the total; ``offsets`` the same as Python ints (no device
    sync to read them); ``positions`` [N] restart at 0 for each sequence; ``segments`` [N] the
    sequence each token belongs to; ``pool_mask`` [N] the tokens that are pooled.
    """

    tokens: torch.Tensor
    pool_mask: torch.Tensor
    segments: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    offsets: tuple[int, ...]
    max_seqlen: int

    @property
    def sequences(self) -> int:
        """How many sequences the pack holds."""
        return len(self.offsets) - 1

    def to(self, device: torch.device) -> PackedBatch:
        """The same batch with every tensor on ``device``."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(move(self.tokens), move(self.pool_mask), move(self.segments), move(self.positions),
                           move(self.cu_seqlens), self.offsets, self.max_seqlen)
