"""One target x one policy over the prepared batches: pooled embeddings, time, memory."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import torch

from .metrics import TokenStats, count_nonfinite, masked_mean
from .placement import describe as placement_of
from .policy import Policy
from .precision import AppliedPolicy
from .progress import Progress
from .targets.base import LoadedModel, Target, TokenBatch, build


@dataclass(frozen=True)
class Timing:
    """Wall-clock figures of the embedding pass; ``seconds`` excludes the build and the warm-up
    batches, and is the fastest of ``passes`` timed passes."""

    build_seconds: float
    warmup_seconds: float
    seconds: float
    tokens: int
    padded_tokens: int
    passes: int = 1  # timed passes; ``seconds`` is the fastest

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


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


MIN_TIMED_SECONDS = 2.0
WARMUP_ROWS = 2
MAX_REPEATS = 5


def forward_splitting(target: Target, loaded: LoadedModel, model, tokens: torch.Tensor, layer: int, splits: list[int]) -> torch.Tensor:
    """Hidden states of a batch; a batch that runs out of GPU memory is halved by rows and
    retried, recursively, so no sequence is lost (the padded width, hence every row's result,
    is unchanged). ``splits`` counts the halvings. One row that does not fit re-raises."""
    try:
        return target.hidden_states(loaded, model, tokens, layer)
    except torch.OutOfMemoryError:
        if tokens.shape[0] < 2:
            raise
    # Retry outside the handler: inside it, the traceback would keep the failed attempt's
    # activations alive, and the halves would run out of memory too.
    if tokens.is_cuda:
        torch.cuda.empty_cache()
    splits[0] += 1
    half = tokens.shape[0] // 2
    return torch.cat(
        [forward_splitting(target, loaded, model, part, layer, splits) for part in (tokens[:half], tokens[half:])]
    )


def _timed_pass(target: Target, loaded: LoadedModel, model, batches: list[TokenBatch], device: torch.device, layer: int) -> float:
    """Seconds for one embedding pass over every batch (forward and pooling only)."""
    seconds = 0.0
    for batch in batches:
        tokens = batch.tokens.to(device)
        mask = batch.pool_mask.to(device)
        _sync(device)
        start = time.perf_counter()
        masked_mean(forward_splitting(target, loaded, model, tokens, layer, [0]), mask)
        _sync(device)
        seconds += time.perf_counter() - start
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    peak memory is then the sum over the GPUs. ``repeat``: repeat passes shorter than
    MIN_TIMED_SECONDS and keep the fastest (None: on CUDA only).
    """
    progress = progress or Progress()
    cuda = device.type == "cuda"
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
        start = time.perf_counter()
        for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values() if measure else ():
            forward_splitting(target, loaded, model, batch.tokens[:WARMUP_ROWS].to(device), layer, [0])
        _sync(device)
        warmup_seconds = time.perf_counter() - start

        progress.pass_started(policy.name, sum(b.tokens_used for b in batches))
        for number, batch in enumerate(batches):
            tokens = batch.tokens.to(device, non_blocking=True)
            mask = batch.pool_mask.to(device, non_blocking=True)
            if cuda:
                for gpu in gpus:
                    torch.cuda.reset_peak_memory_stats(gpu)
            _sync(device)
            start = time.perf_counter()
            hidden = forward_splitting(target, loaded, model, tokens, layer, splits)
            rows = masked_mean(hidden, mask)
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
                # Row by row: the float64 comparison of a whole batch would rival the model's
                # own activations in memory.
                for row, ref_row in enumerate(reference.token_states[number]):
                    batch_rows.append(TokenStats.of_batch(ref_row[None].to(device), hidden[row : row + 1], mask[row : row + 1]))
                    stats = stats + batch_rows[-1]
            rows_stats.append(tuple(batch_rows))
            if keep_states_bytes:
                size = hidden.numel() * 4
                if kept_bytes + size <= keep_states_bytes:
                    kept.append(hidden.float().cpu())
                    kept_bytes += size
                else:
                    kept.append(None)
            progress.advance(batch.tokens_used)
        progress.pass_finished()

        # On a GPU, a pass shorter than MIN_TIMED_SECONDS is dominated by launch overheads and
        # one-time costs (lazy kernel loading per new shape); repeat it, timing only, and keep
        # the fastest, as timeit's autorange does (CPU figures are for workflow tests only).
        repeats = 0
        spent = seconds
        wanted = cuda if repeat is None else repeat
        while measure and wanted and spent < MIN_TIMED_SECONDS and repeats < MAX_REPEATS:
            again = _timed_pass(target, loaded, model, batches, device, layer)
            seconds = min(seconds, again)
            spent += again
            repeats += 1

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
        padded_tokens=sum(b.tokens.numel() for b in batches),
        passes=1 + repeats,
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
