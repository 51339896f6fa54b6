"""Embedding sequences with a validated policy, in user code: the same build, batching and
forward (padded or packed, as the policy says) that ``validate`` timed and compared."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fp16guard.core.config import ModelSource
from fp16guard.errors import Fp16GuardError, InputError
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.budget import MAX_TOKENS
from fp16guard.execution.forward import States, forward_under
from fp16guard.models import get_target
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.policy import FP32, Policy, get_policy


class Embedder:
    """One model built once under one policy; ``embed`` returns pooled FP32 embeddings.

        embedder = Embedder.load("esm2", weights="esm2_t33_650M_UR50D.pt", policy="policy.json", device="cuda")
        vectors = embedder.embed(["MKTAYIAKQR", "MSTNPKPQ"])   # [2, 1280] float32, input order
    """

    def __init__(self, target: Target, loaded: LoadedModel, policy: Policy, device: torch.device,
                 layer: int | None = None, max_tokens: int = MAX_TOKENS, compile: bool = False):
        layer = loaded.num_layers if layer is None else layer
        if not 0 <= layer <= loaded.num_layers:
            raise InputError(f"layer must be between 0 and {loaded.num_layers}, got {layer}")
        if max_tokens < 1:
            raise InputError(f"max_tokens must be positive, got {max_tokens}")
        self.target, self.loaded, self.policy, self.device = target, loaded, policy, device
        self.layer, self.max_tokens = layer, max_tokens
        self._forward, self.applied = forward_under(target, loaded, policy, device)
        self.model = self._forward.model
        #: Things the caller should tell the user (a compilation that failed and was dropped).
        self.notes: list[str] = []
        self.compiled = False
        self._proven = True  # a compiled model has run one batch
        #: How the first compiled batch went (None until it has run compiled).
        self.compilation: Compilation | None = None
        if compile:
            self.compile()

    def compile(self) -> None:
        """Put the model's packed blocks under torch.compile (a packed policy on ESM-2; InputError
        otherwise). The first batch compiles them; if that fails, the run goes on eager and
        ``notes`` says why."""
        if self.compiled:
            return
        if not can_compile(self.target, self.policy):
            raise InputError(
                "compiling needs a packed policy on a target that supports it (esm2); "
                f"'{self.policy.name}' on {self.target.name} is not"
            )
        self.target.compile_packed(self.loaded, self.model)
        self.compiled, self._proven = True, False

    @classmethod
    def load(cls, target: str, *, model: str | None = None, weights: str | Path | None = None,
             policy: str | Path | Policy | dict = FP32, device: str | torch.device = "auto", layer: int | None = None,
             max_tokens: int = MAX_TOKENS, offline: bool = False, pooling: str = "mean",
             trust_remote_code: bool = False, compile: bool = False) -> Embedder:
        """Load ``target``'s weights (a model name or id, or local ``weights``) and build the
        model under ``policy`` (a name, a policy file written by ``--save-policy``, a dict or a
        Policy) on ``device`` (auto: CUDA when present); ``compile`` puts a packed ESM-2's
        blocks under torch.compile (pays off from tens of millions of tokens on a GPU)."""
        chosen = get_target(target)
        if isinstance(device, str):
            device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        source = ModelSource(model=model, weights=Path(weights) if weights else None, offline=offline, pooling=pooling,
                             trust_remote_code=trust_remote_code)
        return cls(chosen, chosen.load(source), get_policy(policy), device, layer, max_tokens, compile)

    def embed(self, sequences: Sequence[str]) -> torch.Tensor:
        """Pooled embeddings [N, D] in FP32 on the host, in the order of ``sequences``.

        Sequences are upper-cased and must use the model's alphabet and fit its length limit
        (InputError otherwise: nothing is truncated silently)."""
        texts = [s.strip().upper() for s in sequences]
        if not texts:
            return torch.empty(0, 0)
        lengths = self._lengths(texts)
        out: torch.Tensor | None = None
        for batch, output in self.stream(self.batches(texts, lengths)):
            rows = output.pooled[self.layer]
            if out is None:
                out = torch.empty(len(texts), rows.shape[-1], dtype=torch.float32)
            out[list(batch.indices)] = rows
        assert out is not None
        return out

    def _lengths(self, texts: list[str]) -> list[int]:
        """Tokens of each of ``texts`` (special tokens excluded); InputError for an empty one, a
        letter outside the model's vocabulary, or one longer than the model's limit."""
        allowed, name = set(self.loaded.alphabet), self.loaded.name
        for number, text in enumerate(texts):
            if not text:
                raise InputError(f"sequence {number} is empty")
            unknown = sorted(set(text) - allowed)
            if unknown:
                raise InputError(f"sequence {number} has {unknown[0]!r}, which is not in {name}'s vocabulary")
        lengths = self.target.measure(self.loaded, texts)
        limit = self.loaded.max_length
        too_long = next((i for i, n in enumerate(lengths) if limit is not None and n > limit), None)
        if too_long is not None:
            raise InputError(f"sequence {too_long} has {lengths[too_long]} tokens, more than {name}'s {limit}")
        return lengths

    def batches(self, texts: Sequence[str], lengths: Sequence[int]) -> list[TokenBatch]:
        """``texts`` (validated, ``lengths`` tokens each without special tokens) tokenised in
        token-budget batches, longest first, as ``embed`` runs them (on a GPU, in page-locked
        memory)."""
        batches = prepare_batches(self.target, self.loaded, texts, lengths, self.max_tokens)
        pin = self.device.type == "cuda"
        for batch in batches:
            self._forward.layout.prepare(batch, pin)  # here (embed's reader thread), not between two forwards
        return batches

    def run(self, batch: TokenBatch, layers: Sequence[int] | None = None, per_residue: bool = False) -> BatchOutput:
        """One batch's outputs on the host in FP32, rows in the batch's order: pooled rows for
        each of ``layers`` (default: this embedder's layer), all from one forward pass, and,
        with ``per_residue``, the hidden states of every pooled position."""
        return self.launch(batch, layers, per_residue).result()

    def stream(self, batches: Iterable[TokenBatch], layers: Sequence[int] | None = None,
               per_residue: bool = False) -> Iterator[tuple[TokenBatch, BatchOutput]]:
        """Each batch with its outputs (as ``run`` gives them), in order; on a GPU the next
        batch is queued before the previous one's outputs are waited for, so the GPU does not
        idle while the host takes a batch's results and starts the next."""
        pending: tuple[TokenBatch, PendingOutput] | None = None
        for batch in batches:
            launched = (batch, self.launch(batch, layers, per_residue))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = launched
        if pending is not None:
            yield pending[0], pending[1].result()

    def launch(self, batch: TokenBatch, layers: Sequence[int] | None = None,
               per_residue: bool = False) -> PendingOutput:
        """Queue one batch's forward pass and the copies of its outputs to the host; the
        outputs are ready once ``result()`` returns (``run`` is ``launch(...).result()``)."""
        layers = (self.layer,) if layers is None else tuple(dict.fromkeys(layers))
        for layer in layers:
            if not 0 <= layer <= self.loaded.num_layers:
                raise InputError(f"layer must be between 0 and {self.loaded.num_layers}, got {layer}")
        out = BatchOutput({}, {}, [])
        with torch.inference_mode():
            states = self._states(batch, layers)
            for layer in layers:
                pooled = self._forward.pool(batch, states.hidden[layer])
                # To page-locked host memory without waiting: read only after result().
                out.pooled[layer] = pooled.rows.to("cpu", non_blocking=True)
                if per_residue:
                    out.residues[layer] = pooled.residues().float().to("cpu", non_blocking=True)
        if per_residue:
            out.counts = [int(n) for n in (batch.pool_mask.sum(-1))]
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return PendingOutput(out, done)

    def _states(self, batch: TokenBatch, layers: tuple[int, ...]) -> States:
        """The batch's hidden states (``Forward.states``); a compiled model whose first batch
        fails to compile (no C compiler, no Triton, an unsupported operator) falls back to
        eager, with a note."""
        if self._proven:
            return self._forward.states(batch, layers)
        began, before = time.perf_counter(), _compile_cache_counts()
        try:
            states = self._forward.states(batch, layers)
            self.compilation = Compilation.measured(time.perf_counter() - began, before, _compile_cache_counts())
        except (torch.OutOfMemoryError, Fp16GuardError, KeyboardInterrupt):
            raise
        except Exception as exc:  # torch.compile's failures come in many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            self.notes.append(f"torch.compile failed ({type(exc).__name__}: {first}); running uncompiled")
            self.target.uncompile_packed(self.model)
            self.compiled = False
            states = self._forward.states(batch, layers)
        self._proven = True
        return states


@dataclass(frozen=True)
class Compilation:
    """The first compiled batch: its seconds on the host (tracing, compiling or loading the
    compiled kernels) and whether torch's compile caches served it: ``hit`` (every graph from
    the cache), ``miss`` (every graph compiled afresh), ``partial`` or ``unknown`` (the caches
    were not consulted, as when they are switched off)."""

    seconds: float
    cache: str

    @classmethod
    def measured(cls, seconds: float, before: tuple[int, int], after: tuple[int, int]) -> Compilation:
        """From the compile caches' hit and miss counts before and after the batch."""
        hits, misses = after[0] - before[0], after[1] - before[1]
        cache = {(True, False): "hit", (False, True): "miss", (True, True): "partial"}.get((hits > 0, misses > 0))
        return cls(seconds, cache or "unknown")

    def describe(self) -> str:
        """One phrase for a summary line."""
        return f"first batch compiled in {self.seconds:.1f} s, compile cache {self.cache}"


def _compile_cache_counts() -> tuple[int, int]:
    """Inductor's compiled-graph cache: hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def can_compile(target: Target, policy: Policy) -> bool:
    """Whether ``Embedder(..., compile=True)`` is possible: a packed policy on a target whose
    blocks compile (ESM-2)."""
    return policy.layout == "packed" and target.supports_compile


@dataclass
class PendingOutput:
    """A batch's outputs on their way to the host (``Embedder.launch``)."""

    output: BatchOutput
    done: torch.cuda.Event | None  # recorded after the copies; None on the CPU (nothing pending)

    def result(self) -> BatchOutput:
        """The outputs, once their copies have landed."""
        if self.done is not None:
            self.done.synchronize()
        return self.output


@dataclass
class BatchOutput:
    """What ``Embedder.run`` returns for one batch: ``pooled`` layer -> [B, D]; ``residues``
    layer -> [R, D] (the pooled positions of every row, row after row) and ``counts``, the
    positions of each row (with ``per_residue``)."""

    pooled: dict[int, torch.Tensor]
    residues: dict[int, torch.Tensor]
    counts: list[int]


def embed_sequences(target: str, sequences: Sequence[str], **options) -> torch.Tensor:
    """``Embedder.load(target, **options).embed(sequences)``: pooled FP32 embeddings [N, D]."""
    return Embedder.load(target, **options).embed(sequences)
