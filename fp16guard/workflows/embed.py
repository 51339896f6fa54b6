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
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from fp16guard.core.config import ModelSource
from fp16guard.core.progress import Progress
from fp16guard.core.versions import fp16guard_version
from fp16guard.errors import AccuracyError, InputError, OutputError
from fp16guard.execution import distributed
from fp16guard.execution.budget import CPU_MAX_TOKENS, MAX_TOKENS
from fp16guard.execution.embedder import Embedder
from fp16guard.io.embedfile import (
    FORMAT,
    FORMAT_VERSION,
    Part,
    is_ours,
    merge,
    read_shard_attrs,
    write_shard,
)
from fp16guard.io.outputs import check_output_file, write_text_atomic
from fp16guard.io.sequences import Record
from fp16guard.models import get_target
from fp16guard.models.base import LoadedModel, Target, no_class_fp32_note
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.metrics import cosine_rows
from fp16guard.numerics.policy import FP32, POLICIES, Policy, read_policy_record
from fp16guard.workflows.inputs import stream_records

T = TypeVar("T")
DEFAULT_THRESHOLD = 0.99
DEFAULT_CHUNK_SIZE = 10_000
MIN_SPOT_CHECKS = 3
#: Bounded queues between the reader, the model and the writer: memory stays flat.
QUEUE_DEPTH = 2
MANIFEST = "manifest.json"
SHARD = re.compile(r"shard-(\d{6})\.h5")


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
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


#: Below this many tokens, compiling costs about what it saves. Measured on an H200 with
#: ESM-2 650M, 100,000 proteins (38.1M tokens; docs/benchmarks.md, "fp16guard embed"): the
#: first batch came about 12 s later (compiling, cold cache), the embedding took 142 s instead
#: of 162 s; so compiling pays from about 15M tokens.
COMPILE_MIN_TOKENS = 20_000_000


def decide_compile(choice: str, target: Target, policy: Policy, device: torch.device, tokens: int) -> tuple[bool, str]:
    """Whether to compile, and a line for the summary. ``auto`` compiles a packed policy on a
    GPU when the input has at least COMPILE_MIN_TOKENS tokens; ``on`` whenever the target and
    policy allow it (InputError otherwise); ``off`` never."""
    from fp16guard.execution.embedder import can_compile

    if choice not in ("auto", "on", "off"):
        raise InputError(f"--compile takes auto, on or off, not {choice!r}")
    possible = can_compile(target, policy)
    if choice == "off":
        return False, "not compiled (--compile off)"
    if choice == "on":
        if not possible:
            raise InputError(f"--compile on needs a packed policy and the esm2 target; '{policy.name}' on {target.name} cannot be compiled")
        return True, "compiled with torch.compile (--compile on)"
    if not possible:
        return False, ""  # nothing to say: compiling is not an option for this target and policy
    if device.type != "cuda":
        return False, "not compiled (auto: compiles on a GPU only)"
    if tokens < COMPILE_MIN_TOKENS:
        return False, f"not compiled (auto: {tokens:,} tokens is less than the {COMPILE_MIN_TOKENS:,} that pay for compiling)"
    return True, f"compiled with torch.compile (auto: {tokens:,} tokens)"


def parts_dir(out: Path) -> Path:
    """Where a run keeps its shards until they are merged: ``OUT.parts`` beside OUT."""
    return out.with_name(out.name + ".parts")


def resolve_policy(spec: str | None, force: bool, progress: Progress) -> tuple[Policy, dict | None, str]:
    """The policy to embed under, its validation record, and a line for the summary. Only a
    file written by ``validate --save-policy`` carries a record; anything else but FP32 is
    refused unless ``force``."""
    if spec is None:
        return FP32, None, "no --policy: embedding in FP32 (validate and pass --policy FILE to embed in FP16)"
    path = Path(spec)
    if spec in POLICIES and not (path.suffix == ".json" and path.is_file()):
        policy, record = POLICIES[spec], None
    elif path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise InputError(f"--policy {spec}: no such file")
        policy, record = read_policy_record(path)
    else:
        raise InputError(f"--policy {spec}: not a policy file or a built-in name ({', '.join(POLICIES)})")
    if record is None and not policy.is_full_precision:
        what = f"built-in policy '{spec}'" if spec in POLICIES else f"policy file {spec}"
        if not force:
            raise InputError(
                f"{what} has no validation record: validate first (fp16guard validate ... --save-policy policy.json) "
                "and pass that file, or add --force to embed unvalidated"
            )
        progress.warn(f"{what} has no validation record; embedding under it anyway (--force)")
        return policy, None, f"policy '{policy.name}' ({policy.describe()}), NOT validated (--force)"
    return policy, record, f"policy '{policy.name}' ({policy.describe()})" + (" validated" if record else "")


def check_weights(record: dict | None, loaded: LoadedModel, spec: str | None, force: bool, progress: Progress) -> None:
    """InputError when the policy file was validated on other weights (unless ``force``)."""
    validated = (record or {}).get("weights_sha256")
    if not validated or validated == loaded.weights_sha256:
        return
    message = (f"--policy {spec} was validated on weights sha256 {validated}, but the loaded weights have sha256 "
               f"{loaded.weights_sha256}")
    if not force:
        raise InputError(message + ": validate this model first, or add --force")
    progress.warn(message + " (--force)")


@dataclass
class Scan:
    """The first pass over the input: the record count, residues per chunk, the sha256 of its bytes."""

    count: int
    chunk_residues: list[int]
    sha256: str


def scan(target: Target, loaded: LoadedModel, path: Path, chunk_size: int) -> Scan:
    """Validate every record of ``path`` without keeping them; InputError for the first bad one."""
    records, digest = stream_records(target, loaded, path)
    count = 0
    residues: list[int] = []
    for record in records:
        if count % chunk_size == 0:
            residues.append(0)
        count += 1
        residues[-1] += len(record.sequence)
    return Scan(count, residues, digest())


def spot_positions(start: int, count: int, every: int) -> list[int]:
    """Positions (in the whole input) in ``start .. start+count-1`` that are spot-checked: every
    ``every``-th from the first, and the first MIN_SPOT_CHECKS."""
    return [i for i in range(start, start + count) if i < MIN_SPOT_CHECKS or i % every == 0]


@dataclass
class Chunk:
    """One chunk of input, tokenised: its place, ids, texts and batches."""

    number: int
    start: int
    ids: list[str]
    texts: list[str]
    residues: list[int]  # as read, before any truncation (for progress)
    lengths: list[int]
    batches: list[TokenBatch]
    truncated: int
    sha256: str


class _Worker:
    """A thread that runs ``body``; its exception is re-raised by ``check``."""

    def __init__(self, name: str, body: Callable[[], None]):
        self.error: BaseException | None = None

        def run() -> None:
            try:
                body()
            except BaseException as exc:  # handed to the main thread
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


_DONE = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set (then False): a full queue never blocks forever."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, worker: _Worker):
    """The next item, re-raising the producer's failure instead of waiting for it."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            worker.check()
            if not worker.thread.is_alive():
                worker.check()
                return _DONE


def embed(target_name: str, source: ModelSource, config: EmbedConfig, progress: Progress | None = None) -> EmbedResult:
    """Embed ``config.sequences`` into ``config.out`` under ``config.policy``; resumes from
    ``OUT.parts`` when a run with the same arguments was stopped. Raises InputError (bad input,
    a foreign output or parts directory, a policy for other weights), AccuracyError (a spot
    check below the threshold, NaN/Inf), or another Fp16GuardError. Under torch.distributed
    every rank calls it; rank 0 merges."""
    from fp16guard.execution.devices import resolve_device

    began = time.perf_counter()
    progress = progress or Progress()
    warnings: list[str] = []
    out, parts = Path(config.out), parts_dir(Path(config.out))
    check_output_file(out, "--out")
    if out.exists() and not is_ours(out):
        raise InputError(f"--out {out}: exists and is not an embeddings file written by fp16guard; choose another path or remove it")
    if parts.exists() and not parts.is_dir():
        raise InputError(f"{parts}: exists and is not a directory of shards; remove it")
    if config.spot_check_every < 1 or config.chunk_size < 1:
        raise InputError("--spot-check-every and --chunk-size must be positive")
    target = get_target(target_name)
    policy, record, policy_note = resolve_policy(config.policy, config.force, progress)
    if config.per_residue and source.pooling == "cls":
        raise InputError("--per-residue keeps the pooled positions, and --pooling cls pools one: use --pooling mean or residues")
    device = distributed.local_device(resolve_device(config.device))
    progress.stage(f"loading {target_name} weights")
    loaded = target.load(source)
    check_weights(record, loaded, config.policy, config.force, progress)
    if same := no_class_fp32_note(loaded.module, policy):
        policy_note += f"; {same}"
    layers = list(config.layers or (loaded.num_layers,))
    for layer in layers:
        if not 0 <= layer <= loaded.num_layers:
            raise InputError(f"--layers: {layer} is not a layer of {loaded.name} (0 to {loaded.num_layers})")
    if len(set(layers)) != len(layers):
        raise InputError("--layers names a layer twice")
    threshold = float((record or {}).get("threshold") or DEFAULT_THRESHOLD)

    # The budget measured best on an H200 on a GPU (packed or padded), 8192 on a CPU; not from
    # free memory (validate's auto): it is part of the fingerprint, so a resumed run or another
    # rank must arrive at the same batches. A batch that does not fit is halved anyway.
    max_tokens = config.max_tokens or (MAX_TOKENS if device.type == "cuda" else CPU_MAX_TOKENS)
    models: dict = {}

    def build_models() -> None:  # copying, casting and moving weights: C work, beside the scan's Python
        models["embedder"] = Embedder(target, loaded, policy, device, layers[0], max_tokens)
        models["checker"] = Embedder(target, loaded, FP32, device, layers[0], max_tokens) if not policy.is_full_precision else None

    builder = _Worker("fp16guard-build", build_models)
    progress.stage(f"reading {config.sequences}")
    try:
        found = scan(target, loaded, Path(config.sequences), config.chunk_size)
    finally:
        builder.thread.join()
    builder.check()
    # Decided on the whole input, never on what is left or on the number of processes: compiled
    # and eager kernels round differently, and a file must not mix them (nor depend on --gpus).
    tokens = sum(found.chunk_residues) + target.special_tokens_per_row * found.count
    compiled, compile_note = decide_compile(config.compile, target, policy, device, tokens)
    fingerprint = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "target": target_name, "model": loaded.name,
        "weights_sha256": loaded.weights_sha256, "policy": policy.to_dict(), "input_sha256": found.sha256,
        "sequences": found.count, "layers": layers, "per_residue": config.per_residue, "pooling": source.pooling,
        "chunk_size": config.chunk_size, "max_tokens": max_tokens, "spot_check_every": config.spot_check_every,
        "device_type": device.type, "compiled": compiled,
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    chunks = -(-found.count // config.chunk_size)
    world = distributed.current()
    rank, size = (world.rank, world.size) if world else (0, 1)

    def prepare() -> set[int]:  # rank 0: the parts directory, its manifest, the shards done
        _prepare_parts(parts, fingerprint, key)
        return _done_shards(parts, key, chunks)

    done = _together(world, "preparing the parts directory", prepare, main_only=True)
    if done:
        progress.stage(f"resuming: {len(done)} of {chunks} shard(s) already in {parts}")
    mine = [n for n in range(chunks) if n % size == rank and n not in done]

    embedder, checker = models["embedder"], models["checker"]
    if compiled:
        embedder.compile()
        progress.stage("compiling the model's blocks with torch.compile: the first batches wait for it")
    stats = {"tokens": 0, "seconds": 0.0, "spot_seconds": 0.0, "began": began, "first_batch": None}

    def work() -> None:
        total = sum(found.chunk_residues[n] for n in mine)
        _embed_chunks(target, loaded, embedder, checker, config, layers, threshold, parts, key, mine, total, progress, stats)

    _together(world, "embedding", work)
    for note in embedder.notes:
        progress.warn(note)
        warnings.append(note)
    if compiled and not embedder.compiled:
        compile_note = "not compiled (torch.compile failed; see the warning)"

    summary: dict = {}

    def finish() -> None:
        summary.update(_merge(parts, out, key, chunks, layers, config.per_residue, fingerprint, policy, source, threshold))

    _together(world, "merging the shards", finish, main_only=True)
    totals = distributed.exchange(world, "summing up", lambda: dict(stats)) if world else [stats]
    if world is not None and not world.main:
        summary = {"spot_checks": 0, "spot_min_cosine": None, "truncated": 0}
    return EmbedResult(
        out=out, sequences=found.count, policy=policy, policy_note=policy_note, layers=layers,
        per_residue=config.per_residue, spot_checks=summary["spot_checks"], spot_min_cosine=summary["spot_min_cosine"],
        threshold=None if policy.is_full_precision else threshold, tokens=sum(t["tokens"] for t in totals),
        seconds=max(t["seconds"] for t in totals), resumed_shards=len(done), shards=chunks, truncated=summary["truncated"],
        warnings=warnings, compiled=embedder.compiled, compile_note=compile_note,
        spot_seconds=max(t["spot_seconds"] for t in totals),
        first_batch_seconds=max((t["first_batch"] for t in totals if t["first_batch"] is not None), default=None),
    )


def _together(world, what: str, work: Callable[[], T], main_only: bool = False) -> T | None:
    """Run ``work`` (on rank 0 only with ``main_only``) and agree on the outcome: one rank's
    failure is raised on every rank (see distributed.exchange). Returns rank 0's result."""
    if world is None:
        return work()
    return distributed.exchange(world, what, work if (world.main or not main_only) else (lambda: None))[0]


def _prepare_parts(parts: Path, fingerprint: dict, key: str) -> None:
    """Create ``parts`` with its manifest, or check that the one there is this run's."""
    manifest = parts / MANIFEST
    if parts.is_dir():
        try:
            held = json.loads(manifest.read_text())
        except (OSError, ValueError):
            raise InputError(f"{parts}: exists without a readable {MANIFEST}, so it is not a run of fp16guard embed; remove it") from None
        if held.get("key") != key:
            theirs = held.get("fingerprint", {})
            differ = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
            raise InputError(
                f"{parts} holds a stopped run with other arguments (differing: {', '.join(differ) or 'unknown'}); "
                "rerun with that run's arguments to finish it, or remove the directory to start over"
            )
        for stale in parts.glob(".shard-*.tmp"):  # a shard being written when the run was killed
            stale.unlink(missing_ok=True)
        return
    try:
        parts.mkdir(parents=True)
        write_text_atomic(manifest, json.dumps({"key": key, "fingerprint": fingerprint}, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot create {parts}: {exc.strerror or exc}") from None


def _shard_path(parts: Path, number: int) -> Path:
    return parts / f"shard-{number:06d}.h5"


def _done_shards(parts: Path, key: str, chunks: int) -> set[int]:
    """The chunks whose shards are complete. A shard that cannot be read is redone when it is
    the last one written; anywhere else it means damage, and the run stops (InputError)."""
    present = sorted(int(m.group(1)) for p in parts.glob("shard-*.h5") if (m := SHARD.fullmatch(p.name)))
    done: set[int] = set()
    for number in present:
        attrs = read_shard_attrs(_shard_path(parts, number))
        if attrs is not None and attrs.get("key") == key and attrs.get("chunk") == number < chunks:
            done.add(number)
        elif number == present[-1]:
            continue  # redone (overwritten by its rename)
        else:
            raise InputError(
                f"{_shard_path(parts, number)}: corrupt or not of this run; remove it (it is embedded again) or the whole {parts}"
            )
    return done


def _chunks(target: Target, loaded: LoadedModel, embedder: Embedder, path: Path, chunk_size: int,
            wanted: set[int]) -> Iterator[Chunk]:
    """The chunks numbered in ``wanted``, read and tokenised in input order."""
    records, _ = stream_records(target, loaded, path)
    limit = loaded.max_length
    batch: list[Record] = []
    number = 0

    def make(number: int, start: int, batch: list[Record]) -> Chunk:
        ids = [r.id for r in batch]
        texts = [r.sequence for r in batch]
        residues = [len(t) for t in texts]
        digest = hashlib.sha256("".join(f"{i}\t{t}\n" for i, t in zip(ids, texts)).encode()).hexdigest()
        lengths = target.measure(loaded, texts)
        truncated = 0
        for i, n in enumerate(lengths):
            if limit is not None and n > limit:
                texts[i], lengths[i] = target.truncate(loaded, texts[i], limit), limit
                truncated += 1
        return Chunk(number, start, ids, texts, residues, lengths, embedder.batches(texts, lengths), truncated, digest)

    start = 0
    for record in records:
        batch.append(record)
        if len(batch) == chunk_size:
            if number in wanted:
                yield make(number, start, batch)
            number, start, batch = number + 1, start + len(batch), []
    if batch and number in wanted:
        yield make(number, start, batch)


def _embed_chunks(target, loaded, embedder: Embedder, checker: Embedder | None, config: EmbedConfig, layers, threshold,
                  parts: Path, key: str, mine: list[int], total: int, progress: Progress, stats: dict) -> None:
    """Embed this rank's chunks: a reader thread tokenises ahead, this thread runs the model
    and the spot checks, a writer thread writes the shards (bounded queues)."""
    stop = threading.Event()
    ahead: queue.Queue = queue.Queue(QUEUE_DEPTH)
    behind: queue.Queue = queue.Queue(QUEUE_DEPTH)

    def read() -> None:
        for chunk in _chunks(target, loaded, embedder, Path(config.sequences), config.chunk_size, set(mine)):
            if not _put(ahead, chunk, stop):
                return
        _put(ahead, _DONE, stop)

    def write() -> None:
        while True:
            item = behind.get()
            if item is _DONE:
                return
            number, part = item
            write_shard(_shard_path(parts, number), part, layers, config.per_residue)

    reader = _Worker("fp16guard-reader", read)
    writer = _Worker("fp16guard-writer", write)
    def hand_over(item) -> None:  # to the writer, unless it has failed or stopped
        while writer.thread.is_alive():
            try:
                behind.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        writer.check()

    progress.pass_started("embedding", total)
    try:
        while True:
            chunk = _get(ahead, reader)
            if chunk is _DONE:
                break
            start = time.perf_counter()
            part = _embed_chunk(chunk, embedder, checker, layers, config, threshold, key, progress, parts, stats)
            stats["seconds"] += time.perf_counter() - start
            stats["tokens"] += sum(b.tokens_used for b in chunk.batches)
            writer.check()
            hand_over((chunk.number, part))
        reader.check()
    finally:
        stop.set()
        # Shards embedded so far are written, whatever ended the run: they are resumable state.
        try:
            hand_over(_DONE)
        except BaseException:  # the writer's own failure is raised below, unless another is on its way
            pass
        writer.thread.join()
        progress.pass_finished()
    writer.check()


def _embed_chunk(chunk: Chunk, embedder: Embedder, checker: Embedder | None, layers: list[int], config: EmbedConfig,
                 threshold: float, key: str, progress: Progress, parts: Path, stats: dict) -> Part:
    """One chunk's outputs in input order, checked (NaN/Inf, spot checks)."""
    count = len(chunk.ids)
    pooled: dict[int, np.ndarray] = {}
    residues: dict[int, list] = {layer: [None] * count for layer in layers}
    counts = [0] * count
    kept = f"; shards written so far stay in {parts} (rerun to resume after fixing the cause)"
    for batch in chunk.batches:
        output = embedder.run(batch, layers, config.per_residue)
        if stats["first_batch"] is None:
            stats["first_batch"] = time.perf_counter() - stats["began"]
        rows = list(batch.indices)
        for layer in layers:
            values = output.pooled[layer].numpy()
            bad = ~np.isfinite(values).all(axis=1)
            if config.per_residue:
                flat = output.residues[layer].numpy()
                offsets = np.concatenate([[0], np.cumsum(output.counts)])
                for j, row in enumerate(rows):
                    residues[layer][row] = flat[offsets[j] : offsets[j + 1]]
                    bad[j] |= not np.isfinite(residues[layer][row]).all()
            if bad.any():
                which = chunk.ids[rows[int(np.argmax(bad))]]
                raise AccuracyError(
                    f"NaN/Inf in the embedding of sequence '{which}' (layer {layer}) under policy '{embedder.policy.name}'{kept}"
                )
            if layer not in pooled:
                pooled[layer] = np.empty((count, values.shape[1]), dtype=np.float32)
            pooled[layer][rows] = values
        if config.per_residue:
            for j, row in enumerate(rows):
                counts[row] = output.counts[j]
        progress.advance(sum(chunk.residues[i] for i in rows))
    spot = spot_positions(chunk.start, count, config.spot_check_every)
    spot_min = None
    if checker is not None and spot:
        began = time.perf_counter()  # the host copies below wait for the GPU: wall time is GPU time
        local = [i - chunk.start for i in spot]
        texts, lengths = [chunk.texts[i] for i in local], [chunk.lengths[i] for i in local]
        reference = np.empty((len(local), pooled[layers[0]].shape[1]), dtype=np.float32)
        for batch in checker.batches(texts, lengths):
            reference[list(batch.indices)] = checker.run(batch).pooled[layers[0]].numpy()
        cosines = cosine_rows(torch.from_numpy(reference), torch.from_numpy(pooled[layers[0]][local])).numpy()
        stats["spot_seconds"] += time.perf_counter() - began
        worst = int(np.argmin(cosines))
        spot_min = float(cosines[worst])
        if not np.isfinite(reference).all():
            raise AccuracyError(f"the FP32 spot check of sequence '{chunk.ids[local[worst]]}' is not finite{kept}")
        if spot_min < threshold:
            raise AccuracyError(
                f"spot check failed: sequence '{chunk.ids[local[worst]]}' has cosine {spot_min:.6f} to FP32 under policy "
                f"'{embedder.policy.name}', below the validated threshold {threshold}{kept}"
            )
    attrs = {
        "key": key, "chunk": chunk.number, "count": count, "start": chunk.start, "chunk_sha256": chunk.sha256,
        "spot_checks": len(spot) if checker is not None else 0, "spot_min_cosine": np.nan if spot_min is None else spot_min,
        "truncated": chunk.truncated,
    }
    flat_residues = {layer: np.concatenate(residues[layer]) for layer in layers} if config.per_residue else {}
    return Part(chunk.ids, pooled, flat_residues, counts, attrs)


def _merge(parts: Path, out: Path, key: str, chunks: int, layers, per_residue: bool, fingerprint: dict, policy: Policy,
           source: ModelSource, threshold: float) -> dict:
    """Check that every shard is there and this run's, merge them into ``out``, remove ``parts``."""
    shards = [_shard_path(parts, n) for n in range(chunks)]
    spot_checks = truncated = 0
    spot_min: float | None = None
    for number, shard in enumerate(shards):
        attrs = read_shard_attrs(shard)
        if attrs is None or attrs.get("key") != key or attrs.get("chunk") != number:
            raise OutputError(f"{shard}: missing or unreadable after embedding; rerun to redo it")
        spot_checks += int(attrs["spot_checks"])
        truncated += int(attrs["truncated"])
        if attrs["spot_checks"] and np.isfinite(attrs["spot_min_cosine"]):
            spot_min = attrs["spot_min_cosine"] if spot_min is None else min(spot_min, attrs["spot_min_cosine"])
    attrs = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "target": fingerprint["target"], "model": fingerprint["model"],
        "weights_sha256": fingerprint["weights_sha256"], "policy": policy.to_dict(), "policy_name": policy.name,
        "layers": layers, "pooling": source.pooling, "per_residue": per_residue, "sequences": fingerprint["sequences"],
        "input_sha256": fingerprint["input_sha256"], "truncated": truncated,
        "spot_checks": {"count": spot_checks, "min_cosine": spot_min, "every": fingerprint["spot_check_every"],
                        "threshold": None if policy.is_full_precision else threshold},
        "fp16guard": fp16guard_version(), "torch": torch.__version__,
    }
    merge(shards, out, layers, per_residue, attrs)
    shutil.rmtree(parts, ignore_errors=True)
    return {"spot_checks": spot_checks, "spot_min_cosine": spot_min, "truncated": truncated}


