"""What every model family provides to the runner."""

from __future__ import annotations

import copy
import hashlib
import pickle
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..config import ModelSource
from ..policy import Policy
from ..precision import AppliedPolicy


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
        real = torch.arange(self.tokens.shape[1], device=flat.device)[None, :] < torch.tensor(self.row_lengths, device=flat.device)[:, None]
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
        return len(self.offsets) - 1

    def to(self, device: torch.device) -> PackedBatch:
        """The same batch with every tensor on ``device``."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(move(self.tokens), move(self.pool_mask), move(self.segments), move(self.positions),
                           move(self.cu_seqlens), self.offsets, self.max_seqlen)


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


def token_batch(target: Target, loaded: LoadedModel, texts: Sequence[str], lengths: Sequence[int],
                indices: Sequence[int]) -> TokenBatch:
    """The sequences ``indices`` of ``texts`` tokenised as one batch; ``lengths`` are their
    token counts without special tokens (``target.measure``)."""
    tokens, mask, used = target.tokenize(loaded, [texts[i] for i in indices])
    rows = tuple(lengths[i] + target.special_tokens_per_row for i in indices)
    return TokenBatch(tuple(indices), tokens, mask, used, rows)


def build(
    target: Target, loaded: LoadedModel, policy: Policy, device: torch.device, spread: bool = False
) -> tuple[nn.Module, AppliedPolicy]:
    """A fresh model from the loaded weights with ``policy`` applied, in eval mode on ``device``
    (with ``spread``: its blocks spread over every visible GPU, inputs and outputs on the first).

    A fresh copy per attempt means no state (such as a rotary cos/sin cache) leaks between
    precisions. The cast happens on the host, so FP16 attempts move half the bytes.
    """
    module = copy.deepcopy(loaded.module)
    applied = target.apply_policy(module, policy)
    if spread:
        from ..placement import spread as spread_over_gpus

        return spread_over_gpus(module, {type(b).__name__ for b in target.blocks(module)})[0], applied
    return module.to(device).eval(), applied


@contextmanager
def skipped_init():
    """Build modules without their random initialisation, for weights that a checkpoint then
    overwrites: drawing random numbers for every parameter is most of the time a large model
    takes to load on the host (about two thirds for ESM-2 650M). Parameters that the checkpoint
    does not fill hold arbitrary values: initialise those afterwards."""
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
             "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")
    saved = {name: getattr(nn.init, name) for name in names if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def hash_in_background(paths: Sequence[Path]) -> Future[str]:
    """``files_sha256`` in a thread (hashlib releases the GIL on large reads), so that hashing
    overlaps reading and building the model; call ``.result()`` for the digest."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp16guard-sha256")
    future = executor.submit(files_sha256, list(paths))
    executor.shutdown(wait=False)
    return future


def files_sha256(paths: Sequence[Path], chunk: int = 1 << 24) -> str:
    """SHA-256 over the contents of ``paths``, in the order given (one file: its plain hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


GZIP_MAGIC = b"\x1f\x8b"
#: Sentences of torch's errors that advise turning off weights-only loading (or allowlisting
#: globals): fp16guard never runs pickled code, so it never passes that advice on.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|arbitrary code|still be loaded|trust", re.IGNORECASE)


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (a compressed checkpoint)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def load_failure(path: Path, exc: BaseException, failed: str = "cannot read as a PyTorch checkpoint", limit: int = 200) -> str:
    """Why the weights file ``path`` could not be read, for "PATH: <this>": "is gzip-compressed"
    for a compressed file; otherwise the first line of ``exc`` without torch's advice to turn
    weights-only loading off or to allowlist globals (fp16guard never runs pickled code)."""
    if is_gzip(path):
        return f"is gzip-compressed: decompress it first (gunzip {path.name})"
    text = str(exc).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text, re.DOTALL)
    if detail:
        text = detail.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    kept = " ".join(s for s in re.split(r"(?<=[.!?])\s+", first) if s and not _UNSAFE_ADVICE.search(s))
    if not kept or " " not in kept:  # a bare key or code (KeyError: '101') says little on its own
        kept = f"{type(exc).__name__}: {kept}" if kept else type(exc).__name__
    if detail or isinstance(exc, pickle.UnpicklingError):
        return f"refused by weights-only loading (fp16guard never runs pickled code): {kept}"[:limit]
    return f"{failed} ({kept[:limit]})"
