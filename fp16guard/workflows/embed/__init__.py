"""The embed workflow: a FASTA file of any size embedded under a validated policy into one
HDF5 file (fp16guard.io.embedfile), with spot checks against FP32, resumable after any kill.

It reuses the targets, policies, the Embedder (build, batching, padded or packed forward) and
the sequence reader; what it owns is streaming the input, the output files and resuming:

- The input is read twice, streaming: a first pass validates every record (so that bad input
  fails before anything is written) and hashes the file's bytes; the second pass embeds.
- Records are grouped in chunks of ``chunk_size``; each chunk is sorted into token-budget
  batches, embedded, and written as one shard ``OUT.parts/shard-NNNNNN.h5`` (a temporary file
  renamed into place: a shard that exists is complete). ``OUT.parts/manifest.json`` holds the
  fingerprint of the run's arguments (input sha256, weights sha256, policy, layers, ...); a
  rerun with the same fingerprint skips the shards that exist.
- At the end the shards are merged in input order into OUT (atomically) and the parts removed.
- Under torch.distributed, chunk i belongs to rank i mod world size; rank 0 merges.

``plan`` holds what is decided before embedding (policy, layers, budget, compiling, the scan and
the chunks), ``pipeline`` the threads that embed and check the chunks, ``shards`` the parts
directory; ``embed`` here runs them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from fp16guard.core.config import ModelSource
from fp16guard.core.progress import Progress
from fp16guard.errors import InputError
from fp16guard.execution import distributed
from fp16guard.execution.devices import resolve_device
from fp16guard.execution.embedder import Embedder
from fp16guard.execution.launch import World
from fp16guard.io.embedfile import Part, is_ours
from fp16guard.io.outputs import check_output_file
from fp16guard.models import get_target
from fp16guard.models.base import LoadedModel, Target, no_class_fp32_note
from fp16guard.numerics.policy import FP32, Policy
from fp16guard.workflows.embed.pipeline import Pipeline, Stats, Worker, embed_chunks
from fp16guard.workflows.embed.plan import (
    CompileChoice,
    Scan,
    check_weights,
    checked_layers,
    decide_compile,
    read_chunks,
    resolve_policy,
    scan,
    threshold_of,
    token_budget,
)
from fp16guard.workflows.embed.shards import Fingerprint, Parts, Totals

T = TypeVar("T")
DEFAULT_CHUNK_SIZE = 10_000


@dataclass(frozen=True)
class EmbedConfig:
    """What ``embed`` is asked to do (the CLI's options)."""

    sequences: Path
    out: Path
    policy: str | None = None  # a --save-policy file, or a built-in name (needs force)
    force: bool = False
    device: str = "auto"
    max_tokens: int | None = None
    layers: tuple[int, ...] | None = None  # None: the last
    per_residue: bool = False
    spot_check_every: int = 1000
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compile: str = "auto"  # "auto" | "on" | "off": torch.compile for a packed ESM-2 (see decide_compile)


@dataclass
class EmbedResult:
    """What a finished run reports: counts, speed, the policy and the spot checks."""

    out: Path
    sequences: int
    policy: Policy
    policy_note: str
    layers: list[int]
    per_residue: bool
    spot_checks: int
    spot_min_cosine: float | None
    threshold: float | None
    tokens: int  # embedded by this run (resumed shards excluded)
    seconds: float
    resumed_shards: int
    shards: int
    truncated: int
    warnings: list[str] = field(default_factory=list)
    compiled: bool = False
    compile_note: str = ""
    spot_seconds: float = 0.0  # of ``seconds``, spent on the FP32 spot checks
    first_batch_seconds: float | None = None  # from the call to the first batch's output (start-up)

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens embedded by this run per second of embedding (None when it embedded none)."""
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


@dataclass(frozen=True)
class _Setup:
    """What is settled before the input is read: the model loaded, the policy, the layers, the budget."""

    target_name: str
    target: Target
    loaded: LoadedModel
    policy: Policy
    policy_note: str
    threshold: float
    device: torch.device
    layers: list[int]
    max_tokens: int
    pooling: str


@dataclass(frozen=True)
class _Run:
    """A run ready to embed: its models, its input scanned, its fingerprint, and the chunks left to this rank."""

    setup: _Setup
    embedder: Embedder
    checker: Embedder | None  # FP32, for the spot checks; None when the policy is FP32
    found: Scan
    compile: CompileChoice
    fingerprint: Fingerprint
    chunks: int
    done: set[int]  # resumed: the shards a stopped run finished
    mine: list[int]


def embed(target_name: str, source: ModelSource, config: EmbedConfig, progress: Progress | None = None) -> EmbedResult:
    """Embed ``config.sequences`` into ``config.out`` under ``config.policy``; resumes from
    ``OUT.parts`` when a run with the same arguments was stopped. Raises InputError (bad input,
    a foreign output or parts directory, a policy for other weights), AccuracyError (a spot
    check below the threshold, NaN/Inf), or another Fp16GuardError. Under torch.distributed
    every rank calls it; rank 0 merges."""
    began = time.perf_counter()
    progress = progress or Progress()
    out = Path(config.out)
    parts = Parts.beside(out)
    setup = _setup(target_name, source, config, out, parts, progress)
    world = distributed.current()
    run = _ready(setup, config, parts, world, progress)
    stats = Stats(began)
    _together(world, "embedding", lambda: _embed_mine(run, config, parts, progress, stats))
    warnings = _warned(run.embedder.notes, progress)

    def merge() -> Totals:  # on rank 0
        return parts.merge(out, run.chunks, run.fingerprint, setup.policy, setup.threshold)

    merged = _together(world, "merging the shards", merge, main_only=True)
    totals = merged if world is None or world.main else Totals()  # rank 0 alone reports the shards' checks
    ranks = distributed.exchange(world, "summing up", lambda: stats) if world else [stats]
    return _result(run, config, out, totals, ranks, warnings)


def _setup(target_name: str, source: ModelSource, config: EmbedConfig, out: Path, parts: Parts,
           progress: Progress) -> _Setup:
    """Check the arguments, resolve the policy, load the model (InputError for what does not fit)."""
    check_output_file(out, "--out")
    if out.exists() and not is_ours(out):
        raise InputError(
            f"--out {out}: exists and is not an embeddings file written by fp16guard; choose another path or remove it"
        )
    parts.check_usable()
    if config.spot_check_every < 1 or config.chunk_size < 1:
        raise InputError("--spot-check-every and --chunk-size must be positive")
    target = get_target(target_name)
    choice = resolve_policy(config.policy, config.force, progress)
    if config.per_residue and source.pooling == "cls":
        raise InputError(
            "--per-residue keeps the pooled positions, and --pooling cls pools one: use --pooling mean or residues"
        )
    device = distributed.local_device(resolve_device(config.device))
    progress.stage(f"loading {target_name} weights")
    loaded = target.load(source)
    check_weights(choice.record, loaded, config.policy, config.force, progress)
    policy_note = choice.note
    if same := no_class_fp32_note(loaded.module, choice.policy):
        policy_note += f"; {same}"
    layers = checked_layers(config.layers, loaded)
    return _Setup(target_name, target, loaded, choice.policy, policy_note, threshold_of(choice.record), device, layers,
                  token_budget(config.max_tokens, device), source.pooling)


def _ready(setup: _Setup, config: EmbedConfig, parts: Parts, world: World | None, progress: Progress) -> _Run:
    """Build the models while the input is scanned, decide whether to compile, prepare the parts
    directory (rank 0) and pick the chunks left to this rank."""
    (embedder, checker), found = _models_and_scan(setup, config, progress)
    # Decided on the whole input, never on what is left or on the number of processes: compiled
    # and eager kernels round differently, and a file must not mix them (nor depend on --gpus).
    choice = decide_compile(config.compile, setup.target, setup.policy, setup.device, found.tokens(setup.target))
    fingerprint = _fingerprint(setup, config, found, choice.compiled)
    chunks = found.chunks(config.chunk_size)

    def prepare() -> set[int]:  # rank 0: the parts directory, its manifest, the shards done
        parts.prepare(fingerprint)
        return parts.done(fingerprint.key, chunks)

    done = _together(world, "preparing the parts directory", prepare, main_only=True)
    if done:
        progress.stage(f"resuming: {len(done)} of {chunks} shard(s) already in {parts.path}")
    rank, size = (world.rank, world.size) if world else (0, 1)
    mine = [n for n in range(chunks) if n % size == rank and n not in done]
    if choice.compiled:
        embedder.compile()
        progress.stage("compiling the model's blocks with torch.compile: the first batches wait for it")
    return _Run(setup, embedder, checker, found, choice, fingerprint, chunks, done, mine)


def _models_and_scan(setup: _Setup, config: EmbedConfig,
                     progress: Progress) -> tuple[tuple[Embedder, Embedder | None], Scan]:
    """The embedder under the policy and the FP32 checker (None for an FP32 policy), built in a
    thread while this one scans the input: copying, casting and moving weights is C work, beside
    the scan's Python."""

    def build() -> tuple[Embedder, Embedder | None]:
        embedder = Embedder(setup.target, setup.loaded, setup.policy, setup.device, setup.layers[0], setup.max_tokens)
        if setup.policy.is_full_precision:
            return embedder, None
        return embedder, Embedder(setup.target, setup.loaded, FP32, setup.device, setup.layers[0], setup.max_tokens)

    builder = Worker("fp16guard-build", build)
    progress.stage(f"reading {config.sequences}")
    try:
        found = scan(setup.target, setup.loaded, Path(config.sequences), config.chunk_size)
    finally:
        builder.thread.join()
    return builder.result(), found


def _fingerprint(setup: _Setup, config: EmbedConfig, found: Scan, compiled: bool) -> Fingerprint:
    """What the run's shards depend on (shards.Fingerprint)."""
    return Fingerprint(
        target=setup.target_name, model=setup.loaded.name, weights_sha256=setup.loaded.weights_sha256,
        policy=setup.policy.to_dict(), input_sha256=found.sha256, sequences=found.count, layers=setup.layers,
        per_residue=config.per_residue, pooling=setup.pooling, chunk_size=config.chunk_size,
        max_tokens=setup.max_tokens, spot_check_every=config.spot_check_every, device_type=setup.device.type,
        compiled=compiled,
    )


def _embed_mine(run: _Run, config: EmbedConfig, parts: Parts, progress: Progress, stats: Stats) -> None:
    """Embed this rank's chunks into their shards."""
    setup = run.setup
    pipeline = Pipeline(run.embedder, run.checker, setup.layers, config.per_residue, config.spot_check_every,
                        setup.threshold, run.fingerprint.key, parts.kept)
    chunks = read_chunks(setup.target, setup.loaded, run.embedder, Path(config.sequences), config.chunk_size,
                         set(run.mine))

    def write(number: int, part: Part) -> None:
        parts.write(number, part, setup.layers, config.per_residue)

    total = sum(run.found.chunk_residues[n] for n in run.mine)
    embed_chunks(pipeline, chunks, write, total, progress, stats)


def _warned(notes: list[str], progress: Progress) -> list[str]:
    """The embedder's notes, each also warned of."""
    for note in notes:
        progress.warn(note)
    return list(notes)


def _compile_note(run: _Run) -> str:
    """The summary's line on compiling, once the run has shown whether compiling worked."""
    if run.compile.compiled and not run.embedder.compiled:
        return "not compiled (torch.compile failed; see the warning)"
    if run.embedder.compilation is not None:
        return f"{run.compile.note}; {run.embedder.compilation.describe()}"
    return run.compile.note


def _result(run: _Run, config: EmbedConfig, out: Path, totals: Totals, ranks: list[Stats],
            warnings: list[str]) -> EmbedResult:
    """What the run reports: the shards' checks, and the speed over every rank (tokens summed, times the longest)."""
    policy = run.setup.policy
    return EmbedResult(
        out=out, sequences=run.found.count, policy=policy, policy_note=run.setup.policy_note, layers=run.setup.layers,
        per_residue=config.per_residue, spot_checks=totals.spot_checks, spot_min_cosine=totals.spot_min_cosine,
        threshold=None if policy.is_full_precision else run.setup.threshold, tokens=sum(s.tokens for s in ranks),
        seconds=max(s.seconds for s in ranks), resumed_shards=len(run.done), shards=run.chunks,
        truncated=totals.truncated,
        warnings=warnings, compiled=run.embedder.compiled, compile_note=_compile_note(run),
        spot_seconds=max(s.spot_seconds for s in ranks),
        first_batch_seconds=max((s.first_batch for s in ranks if s.first_batch is not None), default=None),
    )


def _together(world: World | None, what: str, work: Callable[[], T], main_only: bool = False) -> T | None:
    """Run ``work`` (on rank 0 only with ``main_only``) and agree on the outcome: one rank's
    failure is raised on every rank (see distributed.exchange). Returns rank 0's result."""
    if world is None:
        return work()
    return distributed.exchange(world, what, work if (world.main or not main_only) else (lambda: None))[0]
