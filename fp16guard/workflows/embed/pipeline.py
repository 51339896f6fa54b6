"""Embedding a run's chunks: a reader thread tokenises ahead, the calling thread runs the model
with its NaN/Inf checks and the FP32 spot checks, a writer thread writes the shards. The queues
between them are bounded, so memory stays flat whatever the input's size."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch

from fp16guard.core.progress import Progress
from fp16guard.errors import AccuracyError
from fp16guard.execution.embedder import BatchOutput, Embedder
from fp16guard.io.embedfile import Part
from fp16guard.numerics.metrics import cosine_rows
from fp16guard.workflows.embed.plan import Chunk, spot_positions
from fp16guard.workflows.embed.shards import ShardStamp

T = TypeVar("T")
#: Bounded queues between the reader, the model and the writer: memory stays flat.
QUEUE_DEPTH = 2
_DONE = object()


class Worker(Generic[T]):
    """A thread that runs ``body``; its exception is re-raised by ``check``, its value returned by ``result``."""

    def __init__(self, name: str, body: Callable[[], T]):
        self.error: BaseException | None = None
        self.value: T | None = None

        def run() -> None:
            try:
                self.value = body()
            except BaseException as exc:  # handed to the main thread
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def check(self) -> None:
        """Raise the body's exception, if it raised one."""
        if self.error is not None:
            raise self.error

    def result(self) -> T | None:
        """The body's value once it has returned; its exception if it raised one."""
        self.thread.join()
        self.check()
        return self.value


@dataclass
class Stats:
    """What one process measured while embedding (``began``: when the run started, perf_counter)."""

    began: float
    tokens: int = 0  # embedded by this run (resumed shards excluded)
    seconds: float = 0.0
    spot_seconds: float = 0.0  # of ``seconds``, spent on the FP32 spot checks
    first_batch: float | None = None  # from ``began`` to the first batch's output


@dataclass(frozen=True)
class Pipeline:
    """What every chunk is embedded and checked with."""

    embedder: Embedder
    checker: Embedder | None  # the model in FP32, for the spot checks; None when the policy is FP32
    layers: list[int]
    per_residue: bool
    spot_check_every: int
    threshold: float
    key: str  # the run's fingerprint key, stamped on every shard
    kept: str  # the end of every failure's message (where the shards so far stay)


def embed_chunks(pipeline: Pipeline, chunks: Iterable[Chunk], write: Callable[[int, Part], None], total: int,
                 progress: Progress, stats: Stats) -> None:
    """Embed ``chunks`` (read in a thread of their own) and hand each one's Part to ``write``
    (in a writer thread); ``total`` residues are announced to ``progress``."""
    stop = threading.Event()
    ahead: queue.Queue = queue.Queue(QUEUE_DEPTH)
    behind: queue.Queue = queue.Queue(QUEUE_DEPTH)
    reader = Worker("fp16guard-reader", lambda: _read(chunks, ahead, stop))
    writer = Worker("fp16guard-writer", lambda: _write(behind, write))
    progress.pass_started("embedding", total)
    try:
        while (chunk := _get(ahead, reader)) is not _DONE:
            began = time.perf_counter()
            part = embed_chunk(pipeline, chunk, progress, stats)
            stats.seconds += time.perf_counter() - began
            stats.tokens += sum(b.tokens_used for b in chunk.batches)
            writer.check()
            _hand_over(behind, (chunk.number, part), writer)
        reader.check()
    finally:
        stop.set()
        # Shards embedded so far are written, whatever ended the run: they are resumable state.
        try:
            _hand_over(behind, _DONE, writer)
        except BaseException:  # the writer's own failure is raised below, unless another is on its way
            pass
        writer.thread.join()
        progress.pass_finished()
    writer.check()


def _read(chunks: Iterable[Chunk], ahead: queue.Queue, stop: threading.Event) -> None:
    """The reader thread: every chunk onto ``ahead``, then _DONE (unless stopped)."""
    for chunk in chunks:
        if not _put(ahead, chunk, stop):
            return
    _put(ahead, _DONE, stop)


def _write(behind: queue.Queue, write: Callable[[int, Part], None]) -> None:
    """The writer thread: every (number, part) from ``behind`` written, until _DONE."""
    while (item := behind.get()) is not _DONE:
        write(*item)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set (then False): a full queue never blocks forever."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, worker: Worker):
    """The next item, re-raising the producer's failure instead of waiting for it."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            worker.check()
            if not worker.thread.is_alive():
                worker.check()
                return _DONE


def _hand_over(behind: queue.Queue, item, writer: Worker) -> None:
    """Put ``item`` for the writer, unless it has failed (its error is raised) or stopped."""
    while writer.thread.is_alive():
        try:
            behind.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
    writer.check()


@dataclass
class _Outputs:
    """A chunk's outputs gathered batch by batch, in input order."""

    pooled: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [n, D], allocated by the first batch
    residues: dict[int, list] = field(default_factory=dict)  # layer -> n per-sequence arrays (--per-residue)
    counts: list[int] = field(default_factory=list)  # residues per sequence (--per-residue)


def embed_chunk(pipeline: Pipeline, chunk: Chunk, progress: Progress, stats: Stats) -> Part:
    """One chunk's outputs in input order, checked (NaN/Inf, spot checks); AccuracyError when a check fails."""
    outputs = _embedded(pipeline, chunk, progress, stats)
    spot = spot_positions(chunk.start, len(chunk.ids), pipeline.spot_check_every)
    checked = pipeline.checker is not None and bool(spot)
    spot_min = _spot_min_cosine(pipeline, chunk, [i - chunk.start for i in spot], outputs, stats) if checked else None
    stamp = ShardStamp(
        key=pipeline.key, chunk=chunk.number, count=len(chunk.ids), start=chunk.start, chunk_sha256=chunk.sha256,
        spot_checks=len(spot) if pipeline.checker is not None else 0, spot_min_cosine=spot_min,
        truncated=chunk.truncated,
    )
    residues = {}
    if pipeline.per_residue:
        residues = {layer: np.concatenate(outputs.residues[layer]) for layer in pipeline.layers}
    return Part(chunk.ids, outputs.pooled, residues, outputs.counts, stamp.attrs())


def _embedded(pipeline: Pipeline, chunk: Chunk, progress: Progress, stats: Stats) -> _Outputs:
    """Every batch of ``chunk`` run under the policy, each layer checked for NaN/Inf as it comes."""
    count = len(chunk.ids)
    outputs = _Outputs(residues={layer: [None] * count for layer in pipeline.layers}, counts=[0] * count)
    for batch, output in pipeline.embedder.stream(chunk.batches, pipeline.layers, pipeline.per_residue):
        if stats.first_batch is None:
            stats.first_batch = time.perf_counter() - stats.began
        rows = list(batch.indices)
        for layer in pipeline.layers:
            _keep_layer(pipeline, chunk, outputs, output, rows, layer)
        if pipeline.per_residue:
            for j, row in enumerate(rows):
                outputs.counts[row] = output.counts[j]
        progress.advance(sum(chunk.residues[i] for i in rows))
    return outputs


def _keep_layer(pipeline: Pipeline, chunk: Chunk, outputs: _Outputs, output: BatchOutput, rows: list[int],
                layer: int) -> None:
    """Store one layer of a batch's output at its rows; AccuracyError naming the first sequence with a NaN/Inf."""
    values = output.pooled[layer].numpy()
    bad = ~np.isfinite(values).all(axis=1)
    if pipeline.per_residue:
        flat = output.residues[layer].numpy()
        offsets = np.concatenate([[0], np.cumsum(output.counts)])
        for j, row in enumerate(rows):
            outputs.residues[layer][row] = flat[offsets[j] : offsets[j + 1]]
            bad[j] |= not np.isfinite(outputs.residues[layer][row]).all()
    if bad.any():
        which = chunk.ids[rows[int(np.argmax(bad))]]
        raise AccuracyError(
            f"NaN/Inf in the embedding of sequence '{which}' (layer {layer}) under policy "
            f"'{pipeline.embedder.policy.name}'{pipeline.kept}"
        )
    if layer not in outputs.pooled:
        outputs.pooled[layer] = np.empty((len(chunk.ids), values.shape[1]), dtype=np.float32)
    outputs.pooled[layer][rows] = values


def _spot_min_cosine(pipeline: Pipeline, chunk: Chunk, local: list[int], outputs: _Outputs, stats: Stats) -> float:
    """The lowest cosine between the first layer's pooled rows at ``local`` (positions in the
    chunk) and the same sequences embedded in FP32; AccuracyError below the threshold."""
    first = pipeline.layers[0]
    began = time.perf_counter()  # the host copies below wait for the GPU: wall time is GPU time
    texts, lengths = [chunk.texts[i] for i in local], [chunk.lengths[i] for i in local]
    reference = np.empty((len(local), outputs.pooled[first].shape[1]), dtype=np.float32)
    for batch in pipeline.checker.batches(texts, lengths):
        reference[list(batch.indices)] = pipeline.checker.run(batch).pooled[first].numpy()
    cosines = cosine_rows(torch.from_numpy(reference), torch.from_numpy(outputs.pooled[first][local])).numpy()
    stats.spot_seconds += time.perf_counter() - began
    worst = int(np.argmin(cosines))
    spot_min = float(cosines[worst])
    if not np.isfinite(reference).all():
        raise AccuracyError(f"the FP32 spot check of sequence '{chunk.ids[local[worst]]}' is not finite{pipeline.kept}")
    if spot_min < pipeline.threshold:
        raise AccuracyError(
            f"spot check failed: sequence '{chunk.ids[local[worst]]}' has cosine {spot_min:.6f} to FP32 under policy "
            f"'{pipeline.embedder.policy.name}', below the validated threshold {pipeline.threshold}{pipeline.kept}"
        )
    return spot_min
