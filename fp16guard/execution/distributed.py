"""Data-parallel validation over torch.distributed: shard the batches, gather the results.

Under ``fp16guard validate ... --gpus N`` (or torchrun), every process
builds the same batches, deterministically, and embeds its own share of them (balanced by
padded tokens); the pooled embeddings and statistics are then gathered on every rank
(all_gather), so that every rank takes the same decisions (the ladder's stop, the search's
bisection) and reaches the verdict that one process would reach. A batch is embedded exactly as
in a single process (same rows, same padding, same device type), so every per-sequence number
is the same; sums over tokens are redone in the single-process order, so they match to the bit.

Every gather is also a status exchange: a rank that fails sends its error instead of its
results, and every rank then raises the same error, so none waits for a partner that is gone
and no rank writes a report.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

from fp16guard.core.progress import Progress
from fp16guard.errors import INTERNAL_ERROR_EXIT_CODE, Fp16GuardError, InputError
from fp16guard.execution.launch import EXIT_CODE_FILE_ENV, World, from_env
from fp16guard.execution.runner import RunResult, Timing
from fp16guard.execution.runner import run_policy as _run_policy
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.metrics import TokenStats
from fp16guard.numerics.policy import Policy

T = TypeVar("T")

#: A slow rank makes the others wait at the next gather; NCCL's default 10 minutes is short for
#: a large reference pass on a loaded machine.
GATHER_TIMEOUT = timedelta(minutes=60)


class DeviceCountError(Fp16GuardError):
    """More ranks on this host than CUDA devices; raised alike on every rank, before joining."""


class RankError(Fp16GuardError):
    """A failure on one rank, raised identically on every rank; keeps the failure's exit code."""

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


def current() -> World | None:
    """The initialised process group when it has more than one rank, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def init(device: str) -> World | None:
    """Join the process group the launcher set up (NCCL for CUDA, gloo for CPU); None when this
    process runs alone. ``device`` is the --device value: auto, cuda or cpu."""
    import torch.distributed as dist

    world = from_env()
    if world is None or world.size < 2:
        return None
    if dist.is_initialized():
        return current()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        visible = torch.cuda.device_count()
        # Every rank on this host sees the same count, so each rank fails alike (the CLI lets
        # rank 0 alone say so) instead of the first ranks waiting for the missing ones.
        wanted = max(world.local_size, world.local_rank + 1)
        if wanted > visible:
            raise DeviceCountError(
                f"{wanted} processes on this host but {visible} CUDA device(s) visible: start at most {visible} "
                "(--gpus / torchrun --nproc-per-node)" if visible
                else f"{wanted} processes for CUDA, but no CUDA device is visible (--device cpu runs them on the CPU)"
            )
        torch.cuda.set_device(world.local_rank)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GATHER_TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # torch's DistNetworkError and DistStoreError included
        raise Fp16GuardError(f"rank {world.rank} of {world.size} could not join the others: {exc}") from exc
    return current()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (its LOCAL_RANK) under a process group; ``device`` otherwise."""
    world = current()
    if world is not None and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def shard(costs: list[int], ranks: int) -> list[list[int]]:
    """Split batch numbers over ``ranks`` with balanced total cost (the costliest batch goes to
    the least loaded rank; ties to the lower rank and the lower batch number). Each rank's
    batches are in ascending order. Deterministic, so every rank computes the same split."""
    if len(costs) < ranks:
        raise InputError(
            f"{len(costs)} batch(es) for {ranks} processes: every process needs at least one; "
            "lower --max-tokens or start fewer processes"
        )
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for number in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        loads[rank] += costs[number]
        shares[rank].append(number)
    return [sorted(share) for share in shares]


def exchange(world: World, what: str | None, work: Callable[[], T]) -> list[T]:
    """Run ``work`` on this rank and gather every rank's result on every rank, in rank order.

    If any rank failed, every rank raises the same RankError, with the failing rank's message
    and exit code. ``what`` says what the ranks were doing (None: a failure from before).
    """
    import torch.distributed as dist

    try:
        mine: tuple = ("ok", work())
    except torch.OutOfMemoryError:
        mine = ("error", 3, "ran out of GPU memory, with batches split down to single sequences; "
                "lower --max-length or --max-tokens", what)
    except Fp16GuardError as exc:
        mine = ("error", exc.exit_code, str(exc), what)
    except Exception as exc:  # any failure must reach the gather, or the other ranks wait
        # Unexpected: an internal error (exit 4), as in a single process.
        mine = ("error", INTERNAL_ERROR_EXIT_CODE, f"internal error: {type(exc).__name__}: {exc}", what)
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, mine)
    failed = [(rank, status) for rank, status in enumerate(gathered) if status[0] != "ok"]
    if failed:
        rank, (_, code, message, where) = failed[0]
        others = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        during = f" while {where}" if where else ""
        raise RankError(f"rank {rank} of {world.size}{others} failed{during}: {message}", code)
    return [status[1] for status in gathered]


def smallest(value: int, what: str) -> int:
    """The smallest of every rank's ``value`` (the value itself when running alone): for
    settings each rank derives from its own device, such as the auto token budget from free GPU
    memory, which must agree for the ranks to form the same batches."""
    world = current()
    if world is None:
        return value
    return min(exchange(world, what, lambda: value))


def finish(world: World | None, error: Fp16GuardError | None) -> Fp16GuardError | None:
    """The last status exchange of a run: ``error`` is this rank's own failure outside any
    exchange (None if it has none). Returns the error every rank ends with (this rank's own
    first), or None if every rank succeeded. Not to be called after a RankError, which every
    rank already raised together."""
    if world is None:
        return error

    def check() -> None:
        if error is not None:
            raise error

    try:
        exchange(world, None, check)
    except RankError as agreed:
        return error or agreed
    return None


@dataclass
class _RankPart:
    """What one rank sends of its share of a pass (gathered on every rank)."""

    batches: list[int]  # the batch numbers of its share, ascending
    rows: list[int]  # the sequences of those batches, in batch order
    pooled: torch.Tensor  # their pooled rows, in ``rows`` order
    timing: Timing
    peak: int | None
    nonfinite: tuple[int, int]
    splits: int
    token_rows: list[tuple[TokenStats, ...]]
    kept: int
    device: str

    @classmethod
    def of(cls, result: RunResult, share: list[int], batches: list[TokenBatch]) -> _RankPart:
        """The part of ``result``, this rank's pass over the batches numbered in ``share``."""
        rows = [i for number in share for i in batches[number].indices]
        return cls(share, rows, result.pooled[rows].clone(), result.timing, result.peak_memory_bytes,
                   result.token_nonfinite, result.oom_splits, result.token_rows, result.kept_sequences,
                   result.placement)

    def describe(self, rank: int) -> dict:
        """The rank's figures, for the report."""
        return {
            "rank": rank,
            "device": self.device,
            "batches": len(self.batches),
            "sequences": len(self.rows),
            "tokens": self.timing.tokens,
            "seconds": self.timing.seconds,
            "peak_memory_bytes": self.peak,
            "oom_splits": self.splits,
        }


def run_policy(target: Target, loaded: LoadedModel, policy: Policy, batches: list[TokenBatch], count: int,
               device: torch.device, layer: int, progress: Progress | None = None, reference: RunResult | None = None,
               keep_states_bytes: int = 0, measure: bool = True, spread: bool = False,
               repeat: bool | None = None) -> RunResult:
    """``runner.run_policy`` over this rank's share of ``batches``, gathered from every rank
    into the result a single process would return. Without a process group, exactly
    ``runner.run_policy``. The returned result's ``token_states`` are this rank's own (they
    pair with its share of the batches in the next call)."""
    world = current()
    if world is None:
        return _run_policy(target, loaded, policy, batches, count, device, layer, progress, reference,
                           keep_states_bytes, measure, spread, repeat)
    share = shard([b.tokens.numel() for b in batches], world.size)[world.rank]
    result: RunResult | None = None

    def work() -> _RankPart:
        nonlocal result
        # The host-memory cap on kept token states is for the whole host, which the ranks share.
        result = _run_policy(target, loaded, policy, [batches[i] for i in share], count, device, layer,
                             progress, reference, keep_states_bytes // world.size, measure, spread, repeat)
        return _RankPart.of(result, share, batches)

    parts = exchange(world, f"running {policy.name}", work)
    assert result is not None
    peaks = [part.peak for part in parts if part.peak is not None]
    return RunResult(
        applied=result.applied,
        pooled=_gathered_pooled(parts, count),
        timing=_gathered_timing([part.timing for part in parts]),
        peak_memory_bytes=max(peaks) if peaks else None,
        token_stats=_gathered_stats(parts) if reference is not None else None,
        token_nonfinite=(sum(p.nonfinite[0] for p in parts), sum(p.nonfinite[1] for p in parts)),
        token_states=result.token_states,
        oom_splits=sum(p.splits for p in parts),
        kept_sequences=sum(p.kept for p in parts),
        placement=", ".join(part.device for part in parts),
        ranks=[part.describe(rank) for rank, part in enumerate(parts)],
    )


def _gathered_pooled(parts: list[_RankPart], count: int) -> torch.Tensor:
    """Every rank's pooled rows in input order: [count, D] float32 on the host."""
    pooled = torch.empty(count, parts[0].pooled.shape[-1], dtype=torch.float32)
    for part in parts:
        pooled[part.rows] = part.pooled
    return pooled


def _gathered_stats(parts: list[_RankPart]) -> TokenStats:
    """Every rank's token statistics, summed row by row in the global batch order, as one
    process sums them (so the float totals match bit for bit)."""
    by_batch = {n: rows for part in parts for n, rows in zip(part.batches, part.token_rows)}
    stats = TokenStats()
    for number in sorted(by_batch):
        for row in by_batch[number]:
            stats = stats + row
    return stats


def _gathered_timing(timings: list[Timing]) -> Timing:
    """The pass's timing over ranks that ran side by side: the slowest rank's time counts."""
    return Timing(
        build_seconds=max(t.build_seconds for t in timings),
        warmup_seconds=max(t.warmup_seconds for t in timings),
        seconds=max(t.seconds for t in timings),
        tokens=sum(t.tokens for t in timings),
        padded_tokens=sum(t.padded_tokens for t in timings),
        passes=max(t.passes for t in timings),
        first_pass_seconds=max((t.first_pass_seconds or 0.0) for t in timings) or None,
        steady_fraction=min(t.steady_fraction for t in timings),
        spread=max((t.spread for t in timings if t.spread is not None), default=None),
        attention=timings[0].attention,
    )


def profile_policy(target, loaded, policy, batches, device, layer) -> list[dict]:
    """``profile.profile_policy`` over this rank's share of the batches, gathered and summed in
    the single-process order."""
    from fp16guard.execution.profile import combine_profiles, profile_batches

    world = current()
    if world is None:
        return combine_profiles(profile_batches(target, loaded, policy, batches, device, layer))
    share = shard([b.tokens.numel() for b in batches], world.size)[world.rank]

    def work() -> list:
        return list(zip(share, profile_batches(target, loaded, policy, [batches[i] for i in share], device, layer)))

    parts = exchange(world, f"profiling {policy.name}", work)
    return combine_profiles([stats for _, stats in sorted(pair for part in parts for pair in part)])


def environment(info: dict) -> dict:
    """``info`` (this rank's environment) with the world size and every rank's device."""
    world = current()
    if world is None:
        return {**info, "world_size": 1}
    mine = {"host": socket.gethostname(), "device": info.get("device"), "device_name": info.get("device_name")}
    ranks = exchange(world, "describing its device", lambda: mine)
    return {**info, "world_size": world.size, "ranks": [{"rank": r, **d} for r, d in enumerate(ranks)]}


__all__ = [
    "EXIT_CODE_FILE_ENV", "DeviceCountError", "RankError", "World",
    "exchange", "finish", "from_env", "init", "shutdown",
]
