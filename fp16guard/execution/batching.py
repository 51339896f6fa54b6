"""Token-budget batches: the one way sequences are grouped, tokenised and laid out for a pass.

``make_batches`` plans (lengths only, longest first); ``token_batch`` tokenises one planned
batch through its target; ``prepare_batches`` does both for a whole set. Validate, embed, the
composition check and the FP64 floor all batch through here, so their batches agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fp16guard.errors import InputError
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch


def token_batch(target: Target, loaded: LoadedModel, texts: Sequence[str], lengths: Sequence[int],
                indices: Sequence[int]) -> TokenBatch:
    """The sequences ``indices`` of ``texts`` tokenised as one batch; ``lengths`` are their
    token counts without special tokens (``target.measure``)."""
    tokens, mask, used = target.tokenize(loaded, [texts[i] for i in indices])
    rows = tuple(lengths[i] + target.special_tokens_per_row for i in indices)
    return TokenBatch(tuple(indices), tokens, mask, used, rows)


@dataclass(frozen=True)
class Batch:
    """Indices into the sequence list, all padded to the longest: ``padded_tokens`` of them."""

    indices: tuple[int, ...]
    padded_tokens: int


def make_batches(lengths: Sequence[int], max_tokens: int, overhead: int = 2) -> list[Batch]:
    """Group sequences, longest first, so that rows x (longest + ``overhead``) <= ``max_tokens``.

    ``lengths`` are residue counts (after truncation); ``overhead`` counts special tokens per
    row. A sequence too long for the budget on its own gets a batch of its own. Every index
    appears exactly once. The same batches serve every precision, so results compare per row.
    """
    if max_tokens < 1:
        raise InputError(f"--max-tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[Batch] = []
    current: list[int] = []
    width = 0
    for index in order:
        row = lengths[index] + overhead
        new_width = max(width, row)
        if current and new_width * (len(current) + 1) > max_tokens:
            batches.append(Batch(tuple(current), width * len(current)))
            current, new_width = [], row
        current.append(index)
        width = new_width
    if current:
        batches.append(Batch(tuple(current), width * len(current)))
    return batches


def prepare_batches(
    target: Target, loaded: LoadedModel, sequences: Sequence[str], lengths: Sequence[int], max_tokens: int
) -> list[TokenBatch]:
    """``sequences`` planned (``make_batches``, longest first) and tokenised (``token_batch``)
    in batches of at most ``max_tokens``; ``lengths`` are their token counts without special
    tokens. Tokenise once: the same batches serve every precision."""
    plan = make_batches(lengths, max_tokens, target.special_tokens_per_row)
    return [token_batch(target, loaded, sequences, lengths, batch.indices) for batch in plan]
