"""What every model family provides to the runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.errors import UnsupportedPolicyError
from fp16guard.models.batch import PackedBatch
from fp16guard.models.catalog import TargetSpec
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


@dataclass(frozen=True)
class Encoding:
    """How a loaded model's family turns sequences into token ids; each family extends it with
    its own tokenizer state (EsmEncoding, HfEncoding)."""

    pad_id: int  # the token id of padding, which the model's attention leaves out


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
    #: The family's tokenizer state, as its ``load`` made it (the family's own Encoding subclass).
    encoding: Encoding
    #: Warnings about the checkpoint for the user and the report (such as an ignored decoder).
    notes: tuple[str, ...] = ()
    #: The model class's ``_keep_in_fp32_modules`` (transformers), which fp16+keep32 keeps in FP32.
    keep_in_fp32_modules: tuple[str, ...] = ()
    #: Residues the vocabulary lacks, read as another it has (ProtT5's U -> X): letter -> letter.
    read_as: dict[str, str] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """Parameters of the module, each shared tensor counted once."""
        seen: set[int] = set()
        total = 0
        for p in self.module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


class Target(ABC):
    """One model family: loading, tokenising, running, and its policy converter.

    A family implements the abstract methods; the capabilities below default to "not
    supported", so the workflows ask a target what it can do instead of probing for methods.
    Its name, description and bundled reference set are its registry entry's (``spec``).
    """

    input_alphabet: str  # letters accepted when reading FASTA, before the tokenizer is known
    special_tokens_per_row: int  # for batch planning
    #: Letters read as N before tokenising (IUPAC ambiguity codes in DNA); "" for none.
    ambiguity_codes: str = ""
    #: Whether the target runs the packed layout (``packed_hidden_states``).
    supports_packing: bool = False
    #: Whether a model built under a packed policy can be compiled (``compile_packed``).
    supports_compile: bool = False

    def __init__(self, spec: TargetSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        """The registered name (``validate NAME``, the report's target)."""
        return self.spec.name

    @property
    def description(self) -> str:
        """One line on the family, as the registry gives it."""
        return self.spec.description

    @property
    def default_sequences(self) -> str:
        """The bundled reference set that validate reads without ``--sequences``."""
        return self.spec.default_sequences

    @abstractmethod
    def load(self, source: ModelSource) -> LoadedModel:
        """FP32 weights on the host, from ``source``; ModelLoadError when they cannot be read."""

    @abstractmethod
    def measure(self, loaded: LoadedModel, sequences: Sequence[str]) -> list[int]:
        """Tokens per sequence, special tokens excluded."""

    @abstractmethod
    def truncate(self, loaded: LoadedModel, sequence: str, limit: int) -> str:
        """The longest prefix of ``sequence`` that fits in ``limit`` tokens."""

    @abstractmethod
    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids [B, T], the mask of pooled positions [B, T], and the tokens read."""

    @abstractmethod
    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] of each of ``layers`` (the last layer is ``loaded.num_layers``),
        all from one forward pass."""

    def packed_hidden_states(self, loaded: LoadedModel, module: nn.Module, packed: PackedBatch,
                             layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states [N, D] of each of ``layers`` for a packed batch, from one forward pass
        (a model built under a packed policy)."""
        raise UnsupportedPolicyError(f"{self.name} has no packed layout")

    def compile_packed(self, loaded: LoadedModel, module: nn.Module) -> None:
        """Put ``module`` (built under a packed policy) under torch.compile."""
        raise UnsupportedPolicyError(f"{self.name} cannot compile its packed layout")

    def uncompile_packed(self, module: nn.Module) -> None:
        """Undo ``compile_packed``: ``module`` runs eagerly again (after a failed compilation)."""

    def read_as_unknown(self, loaded: LoadedModel) -> str:
        """Letters of the input alphabet that ``loaded``'s vocabulary reads as its unknown token
        (accepted with a warning instead of refused); "" for none."""
        return ""

    @abstractmethod
    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """The transformer blocks in order, for per-layer profiling."""

    def block_orientation(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block's output as [B, T, D] (most families already lay it out so)."""
        return hidden

    @abstractmethod
    def block_parts(self, block: nn.Module) -> dict:
        """Parts of one block that can be FP32 islands: ``{"attention": module, "mlp":
        (first_linear, last_linear)}``; layer norms are found without help."""

    @abstractmethod
    def adapts(self, module: nn.Module) -> bool:
        """Whether ``module`` is of this family (for ``apply_policy`` on a user's model)."""

    @abstractmethod
    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy:
        """Convert ``module`` in place to ``policy``; the modules kept in FP32."""
