"""One target x one policy over the prepared batches: pooled embeddings, time, memory."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fp16guard.core.progress import Progress
from fp16guard.execution.build import build
from fp16guard.execution.placement import describe as placement_of
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.metrics import (
    TokenStats,
    count_nonfinite,
    masked_mean,
    segment_mean,
)
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import AppliedPolicy


@dataclass(frozen=True)
class Timing:
    """Wall-clock figures of the embedding pass (forward and pooling; the build and warm-up
    excluded).

    ``seconds`` is the figure that decides: the steady-state time of one whole pass, projected
    from ``passes`` timed re-runs of a sample of the batches after every batch shape has run
    once (the median of the re-runs), or the first pass itself where no re-run was made.
    ``first_pass_seconds`` is the first pass over every batch, one-time costs included (lazy
    kernel loading, per-shape kernel plans): reported beside, never instead.
    """

    build_seconds: float
    warmup_seconds: float
    seconds: float
    tokens: int
    padded_tokens: int
    passes: int = 0  # timed re-runs of the steady sample; 0: ``seconds`` is the first pass
    first_pass_seconds: float | None = None
    steady_fraction: float = 1.0  # share of the tokens in the steady sample
    spread: float | None = None  # (slowest - fastest) / median of the re-runs: the noise
    attention: str = ""  # the attention kernel that ran (see ``attention_kernel``)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def first_pass_tokens_per_second(self) -> float:
        first = self.first_pass_seconds
        return self.tokens / first if first else float("nan")


@dataclass
class RunResult:
    """What one pass produced. ``token_states`` is kept for the reference pass only."""

    applied: AppliedPolicy
    pooled: torch.Tensor  # [N, D] float32 on the host, rows in input order
    timing: Timing
    peak_memory_bytes: int | None
    token_stats: TokenStats | None = None
    token_nonfinite: tuple[int, int] = (0, 0)
    token_states: list[torch.Tensor | None] = field(default_factory=list)
    oom_splits: int = 0  # batches halved after running out of GPU memory
    # Per batch, the token statistics of each row, in the order they were summed into
    # ``token_stats`` (empty where no reference states were kept): lets a distributed run
    # redo the sum in the single-process order, so the float totals match bit for bit.
    token_rows: list[tuple[TokenStats, ...]] = field(default_factory=list)
    kept_sequences: int = 0  # sequences whose token states were kept (for the reference)
    placement: str = ""  # where the model ran: a device, or the GPUs its blocks were spread over
    ranks: list[dict] | None = None  # per-rank figures of a distributed run


#: The steady re-timing: at least MIN_TIMED_SECONDS of re-runs (at most MAX_REPEATS), over a
#: sample of the batches worth about STEADY_SHARE of the first pass (every batch when the pass
#: is short), so that a validation costs little more than its passes.
MIN_TIMED_SECONDS = 2.0
MAX_REPEATS = 5
STEADY_SHARE = 0.15
MAX_STEADY_SECONDS = 30.0
WARMUP_ROWS = 2


def forward_splitting(target: Target, loaded: LoadedModel, model, batch: TokenBatch, device: torch.device,
                      layers: Sequence[int], packed: bool, splits: list[int]) -> dict[int, torch.Tensor]:
    """Hidden states of a batch for each of ``layers``, from one forward pass: [B, T, D] padded,
    or [N, D] for the packed layout (rows concatenated in order). A batch that runs out of GPU
    memory is halved by rows and retried, recursively, so no sequence is lost (a padded half
    keeps the batch's width, so every row's result is unchanged). ``splits`` counts the
    halvings. One row that does not fit re-raises."""
    try:
        if packed:
            return target.packed_hidden_states(loaded, model, batch.pack().to(device), layers)
        return target.hidden_states(loaded, model, batch.tokens.to(device, non_blocking=True), layers)
    except torch.OutOfMemoryError:
        if len(batch.indices) < 2:
            raise
    # Retry outside the handler: inside it, the traceback would keep the failed attempt's
    # activations alive, and the halves would run out of memory too.
    if device.type == "cuda":
        torch.cuda.empty_cache()
    splits[0] += 1
    half = len(batch.indices) // 2
    halves = [forward_splitting(target, loaded, model, batch.rows(part), device, layers, packed, splits)
              for part in (slice(None, half), slice(half, None))]
    return {layer: torch.cat([part[layer] for part in halves]) for layer in layers}


def pool(batch: TokenBatch, hidden: torch.Tensor, packed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled FP32 rows [B, D] of a batch's hidden states, and the mask of pooled positions in
    the hidden states' own layout (for NaN/Inf scans)."""
    if packed:
        pack = batch.pack()
        mask = pack.pool_mask.to(device, non_blocking=True)
        return segment_mean(hidden, mask, pack.segments.to(device, non_blocking=True), pack.sequences, pack.max_seqlen), mask
    mask = batch.pool_mask.to(device, non_blocking=True)
    return masked_mean(hidden, mask), mask


def embed_batch(target: Target, loaded: LoadedModel, model, batch: TokenBatch, device: torch.device, layer: int,
                packed: bool, splits: list[int] | None = None) -> torch.Tensor:
    """Pooled FP32 embeddings [B, D] of one batch, in its rows' order, on ``device``."""
    hidden = forward_splitting(target, loaded, model, batch, device, (layer,), packed, [0] if splits is None else splits)
    return pool(batch, hidden[layer], packed, device)[0]


def _sample(batches: list[TokenBatch], first_seconds: float, careful: bool) -> list[TokenBatch]:
    """The batches re-timed for the steady figure: all of them for a short pass (or with
    ``careful``), otherwise every k-th (the batches are sorted by length, so every length range
    stays represented) for about STEADY_SHARE of the pass."""
    wanted = min(MAX_STEADY_SECONDS, max(MIN_TIMED_SECONDS, STEADY_SHARE * first_seconds))
    if careful or first_seconds <= wanted:
        return batches
    step = max(1, round(first_seconds / wanted))
    return batches[::step]


def _timed(target: Target, loaded: LoadedModel, model, batches: list[TokenBatch], device: torch.device, layer: int,
           packed: bool) -> float:
    """Seconds for one pass over ``batches`` (forward and pooling), synchronised at the end."""
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        embed_batch(target, loaded, model, batch, device, layer, packed)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: aten operators that name the attention kernel a pass ran, most specific first.
ATTENTION_OPERATORS = (
    ("varlen", "flash, variable-length (packed)"),
    ("_flash_attention_forward", "flash, variable-length (packed)"),
    ("_scaled_dot_product_cudnn_attention", "cuDNN (SDPA)"),
    ("_scaled_dot_product_flash_attention_for_cpu", "SDPA, CPU kernel"),
    ("_scaled_dot_product_flash_attention", "flash (SDPA)"),
    ("_scaled_dot_product_efficient_attention", "memory-efficient (SDPA)"),
    ("_scaled_dot_product_attention_math", "math (SDPA)"),
    ("aten.scaled_dot_product_attention.", "SDPA (kernel choice not reported by this torch)"),
)


def _sdpa_choice(args, kwargs) -> str:
    """The backend scaled_dot_product_attention chooses for these arguments, as an operator-like
    name that ATTENTION_OPERATORS knows ("" when torch cannot say)."""
    try:
        from torch.nn.attention import SDPBackend

        choice = SDPBackend(int(torch._fused_sdp_choice(*args, **kwargs))).name
    except Exception:  # a private chooser: absent or different in some torch versions
        return ""
    if choice == "FLASH_ATTENTION" and not args[0].is_cuda:
        return "_scaled_dot_product_flash_attention_for_cpu"
    return {
        "FLASH_ATTENTION": "_scaled_dot_product_flash_attention",
        "EFFICIENT_ATTENTION": "_scaled_dot_product_efficient_attention",
        "CUDNN_ATTENTION": "_scaled_dot_product_cudnn_attention",
        "MATH": "_scaled_dot_product_attention_math",
    }.get(choice, "")


def attention_kernel(run) -> str:
    """The attention kernel that ``run()`` (one small forward) actually executes, read from the
    operators PyTorch dispatches: flash, memory-efficient, cuDNN, the CPU kernel, math, or
    unfused matmuls and softmax (fair-esm's own attention)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names: set[str] = set()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(str(func))
            if func is torch.ops.aten.scaled_dot_product_attention.default:
                # SDPA picks its kernel inside one operator: ask the same chooser it asks.
                names.add(_sdpa_choice(args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Recorder():
        run()
    found = [next((label for key, label in ATTENTION_OPERATORS if key in name), None) for name in sorted(names)]
    found = [label for label in found if label]
    if len(set(found)) > 1:  # the chooser's answer makes the generic SDPA entry redundant
        found = [label for label in found if label != ATTENTION_OPERATORS[-1][1]]
    if found:
        return " + ".join(dict.fromkeys(found))
    if any("softmax" in name for name in names) and any(op in name for name in names for op in ("bmm", "matmul")):
        return "unfused (matmul + softmax)"
    return "unknown"


def run_policy(
    target: Target,
    loaded: LoadedModel,
    policy: Policy,
    batches: list[TokenBatch],
    count: int,
    device: torch.device,
    layer: int,
    progress: Progress | None = None,
    reference: RunResult | None = None,
    keep_states_bytes: int = 0,
    measure: bool = True,
    spread: bool = False,
    repeat: bool | None = None,
) -> RunResult:
    """Build a fresh model under ``policy`` and embed every batch.

    With ``reference``, token-level statistics are gathered against its kept token states.
    ``keep_states_bytes`` > 0 keeps this pass's token states on the host, up to that many bytes.
    ``measure=False`` skips the warm-up and the repeated timing passes (for searches).
    ``spread`` spreads the model's blocks over every visible GPU (``device`` is then the first);
    peak memory is then the sum over the GPUs. ``repeat``: re-time a sample of the batches after
    the first pass for the steady figure (None: on CUDA only; True: every batch, at least three
    times). The policy's ``layout`` decides whether batches run padded or packed.
    """
    progress = progress or Progress()
    cuda = device.type == "cuda"
    packed = policy.layout == "packed"
    start = time.perf_counter()
    model, applied = build(target, loaded, policy, device, spread)
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if spread else [device]
    placement = placement_of(model) if spread else str(device)
    _sync(device)
    build_seconds = time.perf_counter() - start

    pooled: torch.Tensor | None = None
    stats = TokenStats() if reference is not None else None
    nonfinite = [0, 0]
    kept: list[torch.Tensor | None] = []
    rows_stats: list[tuple[TokenStats, ...]] = []
    kept_bytes = 0
    peak = 0
    seconds = 0.0
    splits = [0]
    with torch.inference_mode():
        # Warm up on the longest and the shortest batch: the first call of each kernel (lazy
        # CUDA module loading, GEMM heuristics, attention-kernel choice) is not throughput. A few
        # rows at the full padded width load the same kernels at a fraction of a batch's cost.
        # The attention kernel that runs is read off the first of them.
        start = time.perf_counter()
        attention = ""
        for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values() if measure else ():
            rows = batch.rows(slice(None, WARMUP_ROWS))
            if not attention:
                attention = attention_kernel(lambda: forward_splitting(target, loaded, model, rows, device, (layer,), packed, [0]))
            forward_splitting(target, loaded, model, rows, device, (layer,), packed, [0])
        _sync(device)
        warmup_seconds = time.perf_counter() - start

        progress.pass_started(policy.name, sum(b.tokens_used for b in batches))
        for number, batch in enumerate(batches):
            if cuda:
                for gpu in gpus:
                    torch.cuda.reset_peak_memory_stats(gpu)
            _sync(device)
            start = time.perf_counter()
            hidden = forward_splitting(target, loaded, model, batch, device, (layer,), packed, splits)[layer]
            rows, mask = pool(batch, hidden, packed, device)
            _sync(device)
            seconds += time.perf_counter() - start
            if cuda:
                for gpu in gpus[1:]:
                    _sync(gpu)
                peak = max(peak, sum(torch.cuda.max_memory_allocated(gpu) for gpu in gpus))

            if pooled is None:
                pooled = torch.empty(count, rows.shape[-1], dtype=torch.float32)
            pooled[list(batch.indices)] = rows.cpu()
            nan, inf = count_nonfinite(hidden[mask])
            nonfinite[0] += nan
            nonfinite[1] += inf
            batch_rows: list[TokenStats] = []
            if reference is not None and reference.token_states[number] is not None:
                if packed:  # the reference's token states are padded rows
                    hidden, mask = batch.unpack(hidden), batch.pool_mask.to(device)
                # Row by row: the float64 comparison of a whole batch would rival the model's
                # own activations in memory.
                for row, ref_row in enumerate(reference.token_states[number]):
                    batch_rows.append(TokenStats.of_batch(ref_row[None].to(device), hidden[row : row + 1], mask[row : row + 1]))
                    stats = stats + batch_rows[-1]
            rows_stats.append(tuple(batch_rows))
            if keep_states_bytes:
                if packed and hidden.dim() == 2:
                    hidden = batch.unpack(hidden)
                size = hidden.numel() * 4
                if kept_bytes + size <= keep_states_bytes:
                    kept.append(hidden.float().cpu())
                    kept_bytes += size
                else:
                    kept.append(None)
            progress.advance(batch.tokens_used)
        progress.pass_finished()

        # The first pass pays one-time costs: lazy kernel loading and, for some attention
        # backends (cuDNN), a plan per new shape. Every shape has run once now, so re-timing a
        # sample of the batches gives the steady rate, which is what decides a recommendation.
        first_seconds = seconds
        wanted = cuda if repeat is None else repeat
        timed: list[float] = []
        sample = _sample(batches, first_seconds, careful=bool(repeat)) if measure and wanted else []
        while sample and len(timed) < MAX_REPEATS and (sum(timed) < MIN_TIMED_SECONDS or (repeat and len(timed) < 3)):
            timed.append(_timed(target, loaded, model, sample, device, layer, packed))
        fraction = sum(b.tokens_used for b in sample) / sum(b.tokens_used for b in batches) if sample else 1.0
        noise = None
        if timed:
            middle = statistics.median(timed)
            seconds = middle / fraction
            noise = (max(timed) - min(timed)) / middle if len(timed) > 1 and middle > 0 else None

    del model
    if spread:
        gc.collect()  # accelerate's hooks and the modules refer to each other
    if cuda:
        torch.cuda.empty_cache()
    timing = Timing(
        build_seconds=build_seconds,
        warmup_seconds=warmup_seconds,
        seconds=seconds,
        tokens=sum(b.tokens_used for b in batches),
        padded_tokens=sum(b.tokens_used if packed else b.tokens.numel() for b in batches),
        passes=len(timed),
        first_pass_seconds=first_seconds,
        steady_fraction=fraction,
        spread=noise,
        attention=attention,
    )
    assert pooled is not None
    return RunResult(
        applied=applied,
        pooled=pooled,
        timing=timing,
        peak_memory_bytes=peak if cuda else None,
        token_stats=stats,
        token_nonfinite=(nonfinite[0], nonfinite[1]),
        oom_splits=splits[0],
        token_states=kept,
        token_rows=rows_stats,
        kept_sequences=sum(state.shape[0] for state in kept if state is not None),
        placement=placement,
    )
