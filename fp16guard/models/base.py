"""What every model family provides to the runner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.models.batch import PackedBatch
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import AppliedPolicy


def no_class_fp32_note(module: nn.Module, policy: Policy) -> str | None:
    """The note for a policy that keeps the class's ``_keep_in_fp32_modules`` in FP32 on a model
    that declares none (fair-esm, the native DNABERT, most encoders): it keeps nothing extra."""
    if not policy.keep_in_fp32_modules or policy.is_full_precision or getattr(module, "_keep_in_fp32_modules", None):
        return None
    same = "fp16" if policy.name == "fp16+keep32" else "the same policy without keep_in_fp32_modules"
    return (f"{type(module).__name__} declares no _keep_in_fp32_modules: '{policy.name}' keeps nothing extra in FP32 "
            f"and is the same as {same} for this model")


@dataclass
class LoadedModel:
    """FP32 weights loaded once on the host; every attempt builds its own copy from them."""

    target: str
    name: str
    source: str
    module: nn.Module
    num_layers: int
    weights_sha256: str
    alphabet: str  # upper-case letters the tokenizer knows as residues
    max_length: int | None  # longest input in tokens, special tokens excluded; None: no limit
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


class Target(Protocol):
    """One model family: loading, tokenising, running, and its policy converter."""

    name: str
    description: str
    input_alphabet: str  # letters accepted when reading FASTA, before the tokenizer is known
    default_sequences: str  # bundled reference set
    special_tokens_per_row: int  # for batch planning

    def load(self, source: ModelSource) -> LoadedModel: ...

    def measure(self, loaded: LoadedModel, sequences: Sequence[str]) -> list[int]:
        """Tokens per sequence, special tokens excluded."""
        ...

    def truncate(self, loaded: LoadedModel, sequence: str, limit: int) -> str:
        """The longest prefix of ``sequence`` that fits in ``limit`` tokens."""
        ...

    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids [B, T], the mask of pooled positions [B, T], and the tokens read."""
        ...

    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] of each of ``layers`` (the last layer is ``loaded.num_layers``),
        all from one forward pass."""
        ...

    #: Whether the target runs the packed layout (``packed_hidden_states``).
    supports_packing: bool

    def packed_hidden_states(self, loaded: LoadedModel, module: nn.Module, packed: PackedBatch,
                             layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states [N, D] of each of ``layers`` for a packed batch, from one forward pass
        (a model built under a packed policy)."""
        ...

    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """The transformer blocks in order, for per-layer profiling."""
        ...

    def block_orientation(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block's output as [B, T, D]."""
        ...

    def block_parts(self, block: nn.Module) -> dict:
        """Parts of one block that can be FP32 islands: ``{"attention": module, "mlp":
        (first_linear, last_linear)}``; layer norms are found without help."""
        ...

    def adapts(self, module: nn.Module) -> bool: ...

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy: ...


