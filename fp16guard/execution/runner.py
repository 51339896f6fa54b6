"""One target x one policy over the prepared batches: pooled embeddings, time, memory."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import torch

from fp16guard.core.progress import Progress
from fp16guard.execution.attention import attention_kernel
from fp16guard.execution.forward import Forward, Pooled, forward_under
from fp16guard.execution.placement import describe as placement_of
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.metrics import TokenStats, count_nonfinite
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
        """Tokens a second at the deciding (steady) figure."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def first_pass_tokens_per_second(self) -> float:
        """Tokens a second over the first pass, one-time costs included."""
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


@dataclass
class _Built:
    """The model of one pass, built and placed."""

    forward: Forward
    applied: AppliedPolicy
    gpus: list[torch.device]  # the GPUs whose peak memory counts
    placement: str  # where the model runs: a device, or the GPUs its blocks were spread over
    seconds: float


@dataclass
class _Steady:
    """The steady re-timing: seconds of each timed re-run of a sample of the batches."""

    passes: list[float]
    fraction: float  # share of the tokens in the sample


@dataclass
class _FirstPass:
    """The first pass over every batch, gathered batch by batch."""

    count: int  # sequences in the whole set
    stats: TokenStats | None  # summed against the reference's token states (None without a reference)
    keep_bytes: int  # the cap on this pass's token states kept on the host (0: keep none)
    pooled: torch.Tensor | None = None  # [count, D] float32 on the host, rows in input order
    seconds: float = 0.0
    peak: int = 0
    nonfinite: tuple[int, int] = (0, 0)
    splits: int = 0
    token_states: list[torch.Tensor | None] = field(default_factory=list)
    token_rows: list[tuple[TokenStats, ...]] = field(default_factory=list)
    kept_bytes: int = 0

    def add(self, pooled: Pooled, reference_states: torch.Tensor | None, device: torch.device) -> Pooled:
        """One batch's outputs: its pooled rows, the NaN/Inf scan of its pooled positions, its
        token statistics against ``reference_states`` (the reference's padded rows, if it kept
        them) and its own token states where kept. Returns the outputs as last used (as padded
        rows where they were compared or kept)."""
        rows = pooled.rows
        if self.pooled is None:
            self.pooled = torch.empty(self.count, rows.shape[-1], dtype=torch.float32)
        self.pooled[list(pooled.batch.indices)] = rows.cpu()
        nan, inf = count_nonfinite(pooled.residues())
        self.nonfinite = (self.nonfinite[0] + nan, self.nonfinite[1] + inf)
        self.splits += pooled.splits
        if reference_states is not None or self.keep_bytes:
            pooled = pooled.as_padded()
        batch_rows = _token_rows(pooled, reference_states, device) if reference_states is not None else ()
        for row in batch_rows:
            self.stats = self.stats + row
        self.token_rows.append(batch_rows)
        if self.keep_bytes:
            self._keep(pooled.hidden)
        return pooled

    def _keep(self, hidden: torch.Tensor) -> None:
        size = hidden.numel() * 4
        if self.kept_bytes + size <= self.keep_bytes:
            self.token_states.append(hidden.float().cpu())
            self.kept_bytes += size
        else:
            self.token_states.append(None)


def _token_rows(padded: Pooled, reference_states: torch.Tensor, device: torch.device) -> tuple[TokenStats, ...]:
    """Token statistics of each row of a batch (``padded``: its outputs as padded rows) against
    the reference's token states of the same rows."""
    # Row by row: the float64 comparison of a whole batch would rival the model's own
    # activations in memory.
    return tuple(
        TokenStats.of_batch(ref_row[None].to(device), padded.hidden[row : row + 1], padded.mask[row : row + 1])
        for row, ref_row in enumerate(reference_states)
    )


def _build(target: Target, loaded: LoadedModel, policy: Policy, device: torch.device, spread: bool) -> _Built:
    """A fresh model under ``policy`` on ``device`` (its blocks over every GPU with ``spread``)."""
    start = time.perf_counter()
    forward, applied = forward_under(target, loaded, policy, device, spread)
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if spread else [device]
    placement = placement_of(forward.model) if spread else str(device)
    _sync(device)
    return _Built(forward, applied, gpus, placement, time.perf_counter() - start)


def _warm_up(forward: Forward, batches: list[TokenBatch], layer: int, measure: bool) -> tuple[float, str]:
    """Seconds spent warming up, and the attention kernel that ran ("" without ``measure``).

    The first call of each kernel (lazy CUDA module loading, GEMM heuristics, attention-kernel
    choice) is not throughput: a few rows of the longest and of the shortest batch, at the full
    padded width, load the same kernels at a fraction of a batch's cost. The attention kernel
    is read off the first of them."""
    start = time.perf_counter()
    attention = ""
    for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values() if measure else ():
        rows = batch.rows(slice(None, WARMUP_ROWS))
        if not attention:
            attention = attention_kernel(lambda: forward.states(rows, (layer,)))
        forward.states(rows, (layer,))
    _sync(forward.device)
    return time.perf_counter() - start, attention


def _first_pass(built: _Built, name: str, batches: list[TokenBatch], count: int, layer: int, progress: Progress,
                reference: RunResult | None, keep_states_bytes: int) -> _FirstPass:
    """Every batch once, each timed on its own (forward and pooling) with its peak memory."""
    forward, device = built.forward, built.forward.device
    cuda = device.type == "cuda"
    record = _FirstPass(count, TokenStats() if reference is not None else None, keep_states_bytes)
    progress.pass_started(name, sum(b.tokens_used for b in batches))
    for number, batch in enumerate(batches):
        if cuda:
            for gpu in built.gpus:
                torch.cuda.reset_peak_memory_stats(gpu)
        _sync(device)
        start = time.perf_counter()
        pooled = forward.pooled(batch, layer)
        _sync(device)
        record.seconds += time.perf_counter() - start
        if cuda:
            for gpu in built.gpus[1:]:
                _sync(gpu)
            record.peak = max(record.peak, sum(torch.cuda.max_memory_allocated(gpu) for gpu in built.gpus))
        # Held until the next batch's outputs replace it: the next batch's peak memory counts
        # these outputs, as it always has.
        pooled = record.add(pooled, reference.token_states[number] if reference is not None else None, device)
        progress.advance(batch.tokens_used)
    progress.pass_finished()
    return record


def _sample(batches: list[TokenBatch], first_seconds: float, careful: bool) -> list[TokenBatch]:
    """The batches re-timed for the steady figure: all of them for a short pass (or with
    ``careful``), otherwise every k-th (the batches are sorted by length, so every length range
    stays represented) for about STEADY_SHARE of the pass."""
    wanted = min(MAX_STEADY_SECONDS, max(MIN_TIMED_SECONDS, STEADY_SHARE * first_seconds))
    if careful or first_seconds <= wanted:
        return batches
    step = max(1, round(first_seconds / wanted))
    return batches[::step]


def _steady(forward: Forward, batches: list[TokenBatch], layer: int, first_seconds: float, measure: bool,
            repeat: bool | None) -> _Steady:
    """Re-runs of a sample of the batches once every shape has run (None ``repeat``: on CUDA
    only; True: every batch, at least three times).

    The first pass pays one-time costs: lazy kernel loading and, for some attention backends
    (cuDNN), a plan per new shape. Re-timing a sample gives the steady rate, which is what
    decides a recommendation."""
    wanted = forward.device.type == "cuda" if repeat is None else repeat
    timed: list[float] = []
    sample = _sample(batches, first_seconds, careful=bool(repeat)) if measure and wanted else []
    while sample and len(timed) < MAX_REPEATS and (sum(timed) < MIN_TIMED_SECONDS or (repeat and len(timed) < 3)):
        timed.append(_timed(forward, sample, layer))
    fraction = sum(b.tokens_used for b in sample) / sum(b.tokens_used for b in batches) if sample else 1.0
    return _Steady(timed, fraction)


def _timed(forward: Forward, batches: list[TokenBatch], layer: int) -> float:
    """Seconds for one pass over ``batches`` (forward and pooling), synchronised at the end."""
    _sync(forward.device)
    start = time.perf_counter()
    for batch in batches:
        forward.pooled(batch, layer)
    _sync(forward.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing(built: _Built, warmup: tuple[float, str], first: _FirstPass, steady: _Steady,
            batches: list[TokenBatch]) -> Timing:
    """The pass's Timing: the steady figure where re-runs were made, the first pass otherwise."""
    seconds, noise = first.seconds, None
    if steady.passes:
        middle = statistics.median(steady.passes)
        seconds = middle / steady.fraction
        noise = (max(steady.passes) - min(steady.passes)) / middle if len(steady.passes) > 1 and middle > 0 else None
    return Timing(
        build_seconds=built.seconds,
        warmup_seconds=warmup[0],
        seconds=seconds,
        tokens=sum(b.tokens_used for b in batches),
        padded_tokens=sum(built.forward.layout.tokens(b) for b in batches),
        passes=len(steady.passes),
        first_pass_seconds=first.seconds,
        steady_fraction=steady.fraction,
        spread=noise,
        attention=warmup[1],
    )


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
    built = _build(target, loaded, policy, device, spread)
    with torch.inference_mode():
        warmup = _warm_up(built.forward, batches, layer, measure)
        first = _first_pass(built, policy.name, batches, count, layer, progress, reference, keep_states_bytes)
        steady = _steady(built.forward, batches, layer, first.seconds, measure, repeat)
    timing = _timing(built, warmup, first, steady, batches)
    applied, placement = built.applied, built.placement
    del built
    if spread:
        gc.collect()  # accelerate's hooks and the modules refer to each other
    if device.type == "cuda":
        torch.cuda.empty_cache()
    assert first.pooled is not None
    return RunResult(
        applied=applied,
        pooled=first.pooled,
        timing=timing,
        peak_memory_bytes=first.peak if device.type == "cuda" else None,
        token_stats=first.stats,
        token_nonfinite=first.nonfinite,
        oom_splits=first.splits,
        token_states=first.token_states,
        token_rows=first.token_rows,
        kept_sequences=sum(state.shape[0] for state in first.token_states if state is not None),
        placement=placement,
    )
