"""A packed batch holds exactly its rows without their padding, whatever the batch's shape."""

import random

import torch

from fp16guard.models.batch import TokenBatch


def rows_one_by_one(batch: TokenBatch):
    """The packed layout spelled out row by row: the reference the vectorised packing must match."""
    n = batch.row_lengths
    tokens = torch.cat([batch.tokens[i, :k] for i, k in enumerate(n)])
    mask = torch.cat([batch.pool_mask[i, :k] for i, k in enumerate(n)])
    segments = torch.cat([torch.full((k,), i, dtype=torch.int64) for i, k in enumerate(n)])
    positions = torch.cat([torch.arange(k) for k in n])
    offsets = [0]
    for k in n:
        offsets.append(offsets[-1] + k)
    return tokens, mask, segments, positions, offsets


def test_packing_matches_the_rows_one_by_one():
    rng = random.Random(0)
    for _ in range(100):
        count = rng.randint(1, 24)
        lengths = tuple(rng.randint(1, 40) for _ in range(count))
        width = max(lengths) + rng.randint(0, 3)
        batch = TokenBatch(tuple(range(count)), torch.randint(0, 33, (count, width)), torch.rand(count, width) > 0.3,
                           sum(lengths), lengths)
        for part in (batch, batch.rows(slice(count // 2, None))):  # a view of some rows packs the same way
            if not part.row_lengths:
                continue
            packed = part.pack()
            tokens, mask, segments, positions, offsets = rows_one_by_one(part)
            assert torch.equal(packed.tokens, tokens) and packed.tokens.dtype == part.tokens.dtype
            assert torch.equal(packed.pool_mask, mask) and packed.pool_mask.dtype == torch.bool
            assert torch.equal(packed.segments, segments) and torch.equal(packed.positions, positions)
            assert packed.cu_seqlens.dtype == torch.int32 and packed.cu_seqlens.tolist() == offsets
            assert packed.offsets == tuple(offsets) and all(type(k) is int for k in packed.offsets)
            assert packed.max_seqlen == max(part.row_lengths) and packed.sequences == len(part.row_lengths)
            assert torch.equal(part.unpack(packed.tokens[:, None].float())[..., 0][mask_of(part)],
                               packed.tokens.float())


def mask_of(batch: TokenBatch) -> torch.Tensor:
    lengths = torch.tensor(batch.row_lengths)
    return torch.arange(batch.tokens.shape[1])[None, :] < lengths[:, None]
