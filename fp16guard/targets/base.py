"""What every model family provides to the runner."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from ..precision import AppliedPolicy, Policy


@dataclass
class LoadedModel:
    """FP32 weights loaded once on the host; every attempt builds its own copy from them."""

    target: str
    name: str
    source: str
    module: nn.Module
    num_layers: int
    weights_sha256: str
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


@dataclass
class TokenBatch:
    """Token ids of one batch and the mask of positions that hold residues."""

    indices: tuple[int, ...]
    tokens: torch.Tensor
    residue_mask: torch.Tensor
    tokens_used: int  # residues plus special tokens, padding excluded


class Target(Protocol):
    """One model family: loading, tokenising, running, and its policy converter."""

    name: str
    residue_alphabet: str  # upper-case letters accepted in FASTA input
    max_residues: int  # longest input the model was trained on
    special_tokens_per_row: int

    def load(self, model: str | None, weights: Path | None, offline: bool) -> LoadedModel: ...

    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, T] and a residue mask [B, T] (special tokens and padding False)."""
        ...

    def hidden_states(self, module: nn.Module, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states [B, T, D] of ``layer`` (the last layer is ``loaded.num_layers``)."""
        ...

    def adapts(self, module: nn.Module) -> bool: ...

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy: ...


def build(target: Target, loaded: LoadedModel, policy: Policy, device: torch.device) -> tuple[nn.Module, AppliedPolicy]:
    """A fresh model from the loaded weights with ``policy`` applied, in eval mode on ``device``.

    A fresh copy per attempt means no state (such as a rotary cos/sin cache) leaks between
    precisions. The cast happens on the host, so FP16 attempts move half the bytes.
    """
    module = copy.deepcopy(loaded.module)
    applied = target.apply_policy(module, policy)
    return module.to(device).eval(), applied


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
