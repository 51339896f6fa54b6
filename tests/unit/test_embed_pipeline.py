"""The embed workflow's pipeline with a stand-in model: a chunk's outputs gathered in input order,
the NaN/Inf and FP32 spot checks, the worker threads and a failing writer."""

import math
import threading
from types import SimpleNamespace

import pytest
import torch

from fp16guard.core.progress import Progress
from fp16guard.errors import AccuracyError, OutputError
from fp16guard.execution.embedder import BatchOutput
from fp16guard.workflows.embed.pipeline import Pipeline, Stats, Worker, embed_chunk, embed_chunks
from fp16guard.workflows.embed.plan import Chunk

KEPT = "; shards written so far stay in OUT.parts (rerun to resume after fixing the cause)"


class StandIn:
    """Batches of two rows; a sequence's pooled row and its residues come from its text (and the layer)."""

    def __init__(self, name: str = "fp16", nan_in: str | None = None, skew: float = 0.0):
        self.policy = SimpleNamespace(name=name)
        self.nan_in, self.skew = nan_in, skew

    def batches(self, texts, lengths):
        return [SimpleNamespace(indices=tuple(range(i, min(i + 2, len(texts)))), texts=texts[i : i + 2],
                                tokens_used=sum(lengths[i : i + 2])) for i in range(0, len(texts), 2)]

    def row(self, text: str, layer: int) -> list[float]:
        last = math.nan if text == self.nan_in else 2.0
        return [len(text) + layer, ord(text[0]), 1.0 + 100 * self.skew * len(text), last]

    def run(self, batch, layers=(6,), per_residue=False) -> BatchOutput:
        layers = layers or (6,)
        pooled = {layer: torch.tensor([self.row(t, layer) for t in batch.texts]) for layer in layers}
        residues = {layer: torch.tensor([self.row(t, layer) for t in batch.texts for _ in t]) for layer in layers}
        if not per_residue:
            return BatchOutput(pooled, {}, [])
        return BatchOutput(pooled, residues, [len(t) for t in batch.texts])

    def stream(self, batches, layers=(6,), per_residue=False):
        for batch in batches:
            yield batch, self.run(batch, layers, per_residue)


def chunk(embedder: StandIn, texts: list[str], start: int = 0, number: int = 0) -> Chunk:
    lengths = [len(t) + 2 for t in texts]
    ids = [f"s{start + i}" for i in range(len(texts))]
    return Chunk(number, start, ids, texts, [len(t) for t in texts], lengths, embedder.batches(texts, lengths), 0,
                 "00")


def pipeline(embedder: StandIn, checker: StandIn | None = None, per_residue: bool = False,
             layers: tuple[int, ...] = (6, 3)) -> Pipeline:
    return Pipeline(embedder, checker, list(layers), per_residue, 2, 0.99, "key", KEPT)


TEXTS = ["MKV", "ACDE", "GG", "WYLLP", "Q"]


def test_a_chunk_is_gathered_in_input_order_with_its_residues_and_stamp():
    model = StandIn()
    stats = Stats(began=0.0)
    part = embed_chunk(pipeline(model, StandIn("fp32"), per_residue=True), chunk(model, TEXTS, start=4), Progress(),
                       stats)
    assert part.ids == ["s4", "s5", "s6", "s7", "s8"]
    for layer in (6, 3):
        assert part.pooled[layer].tolist() == [model.row(t, layer) for t in TEXTS]
        assert part.residues[layer].shape == (sum(map(len, TEXTS)), 4)
    assert part.counts == [len(t) for t in TEXTS]
    # spot-checked: every 2nd position of the input (4, 6, 8); positions 0-2 are not in this chunk
    assert part.attrs["spot_checks"] == 3 and part.attrs["spot_min_cosine"] == pytest.approx(1.0)
    assert (part.attrs["key"], part.attrs["start"], part.attrs["count"]) == ("key", 4, 5)
    assert stats.first_batch is not None and stats.spot_seconds > 0


def test_without_a_checker_nothing_is_spot_checked():
    model = StandIn("fp32")
    part = embed_chunk(pipeline(model, None, layers=(6,)), chunk(model, TEXTS), Progress(), Stats(began=0.0))
    assert part.attrs["spot_checks"] == 0 and math.isnan(part.attrs["spot_min_cosine"]) and part.residues == {}


def test_a_nan_names_its_sequence_and_layer():
    model = StandIn(nan_in="WYLLP")
    message = r"NaN/Inf in the embedding of sequence 's3' \(layer 6\) under policy 'fp16'; shards written so far"
    with pytest.raises(AccuracyError, match=message):
        embed_chunk(pipeline(model, StandIn("fp32")), chunk(model, TEXTS), Progress(), Stats(began=0.0))


def test_a_spot_check_below_the_threshold_fails_with_the_worst_sequence():
    model = StandIn(skew=1.0)
    with pytest.raises(AccuracyError, match=r"spot check failed: sequence 's\d' has cosine 0\.\d{6} to FP32") as failed:
        embed_chunk(pipeline(model, StandIn("fp32")), chunk(model, TEXTS), Progress(), Stats(began=0.0))
    assert str(failed.value).endswith(f"below the validated threshold 0.99{KEPT}")


def test_a_worker_hands_back_its_value_or_its_error():
    assert Worker("value", lambda: 42).result() == 42

    def fails():
        raise OutputError("disk full")

    with pytest.raises(OutputError, match="disk full"):
        Worker("error", fails).result()


def test_every_chunk_is_written_in_order_and_a_failing_writer_ends_the_run():
    model = StandIn()
    chunks = [chunk(model, TEXTS[:2], 0, 0), chunk(model, TEXTS[2:4], 2, 1), chunk(model, TEXTS[4:], 4, 2)]
    written = []
    stats = Stats(began=0.0)
    embed_chunks(pipeline(model), iter(chunks), lambda n, part: written.append((n, part.ids)), 15, Progress(), stats)
    assert written == [(0, ["s0", "s1"]), (1, ["s2", "s3"]), (2, ["s4"])]
    assert stats.tokens == sum(len(t) + 2 for t in TEXTS)

    def full(number, part):
        raise OutputError(f"cannot write shard {number}: disk full")

    with pytest.raises(OutputError, match="cannot write shard 0: disk full"):
        embed_chunks(pipeline(model), iter(chunks), full, 15, Progress(), Stats(began=0.0))
    assert not [t for t in threading.enumerate() if t.name == "fp16guard-writer"]


def test_a_failing_reader_ends_the_run_with_its_error():
    model = StandIn()

    def chunks():
        yield chunk(model, TEXTS[:2])
        raise OutputError("the input went away")

    written = []
    with pytest.raises(OutputError, match="the input went away"):
        embed_chunks(pipeline(model), chunks(), lambda n, part: written.append(n), 15, Progress(), Stats(began=0.0))
    assert written == [0]  # what was embedded before the failure is still written
