"""The embed workflow's parts directory: the fingerprint and its key (resuming after a kill
compares them with the manifest, so they must not change), the shard stamps, which shards a
stopped run finished, and the merge."""

import hashlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from fp16guard.errors import InputError, OutputError
from fp16guard.io.embedfile import Part, read_embeddings, read_shard_attrs
from fp16guard.numerics.policy import FP32
from fp16guard.workflows.embed.shards import Fingerprint, Parts, ShardStamp, Totals

#: The fingerprint as earlier releases wrote it into the manifest (a dict literal).
FIELDS = {
    "format": "fp16guard-embeddings", "format_version": 1, "target": "esm2", "model": "esm2_t6_8M_UR50D",
    "weights_sha256": "ab" * 32, "policy": {"name": "fp16", "dtype": "float16"}, "input_sha256": "cd" * 32,
    "sequences": 5, "layers": [6, 3], "per_residue": True, "pooling": "mean", "chunk_size": 2,
    "max_tokens": 1000, "spot_check_every": 1000, "device_type": "cpu", "compiled": False,
}
#: sha256 of FIELDS' sorted JSON, as computed before the fingerprint was a dataclass.
KEY = "8f0e43f24c51cf843d6f8cdb18ccc180a0691a181ea8d1ddb5f9af606b4344c5"


def fingerprint(**changes) -> Fingerprint:
    fields = {k: v for k, v in FIELDS.items() if k not in ("format", "format_version")}
    return replace(Fingerprint(**fields), **changes)


def test_the_fingerprint_and_its_key_are_those_of_earlier_runs():
    assert fingerprint().fields() == FIELDS
    assert hashlib.sha256(json.dumps(FIELDS, sort_keys=True).encode()).hexdigest() == KEY
    assert fingerprint().key == KEY
    assert fingerprint(compiled=True).key != KEY


def test_a_shard_stamp_has_the_attributes_a_resumed_run_reads():
    stamp = ShardStamp(key=KEY, chunk=3, count=2, start=6, chunk_sha256="ef" * 32, spot_checks=0, spot_min_cosine=None,
                       truncated=1)
    attrs = stamp.attrs()
    assert set(attrs) == {"key", "chunk", "count", "start", "chunk_sha256", "spot_checks", "spot_min_cosine",
                          "truncated"}
    assert math.isnan(attrs["spot_min_cosine"]) and attrs["chunk"] == 3
    assert replace(stamp, spot_checks=2, spot_min_cosine=0.5).attrs()["spot_min_cosine"] == 0.5


def test_the_parts_directory_lies_beside_the_output(tmp_path):
    parts = Parts.beside(tmp_path / "emb.h5")
    assert parts.path == tmp_path / "emb.h5.parts"
    assert parts.shard(12) == tmp_path / "emb.h5.parts" / "shard-000012.h5"
    assert str(parts.path) in parts.kept
    parts.path.write_text("not a directory")
    with pytest.raises(InputError, match="not a directory of shards"):
        parts.check_usable()


def test_a_manifest_is_written_once_and_a_run_with_other_arguments_refused(tmp_path):
    parts = Parts.beside(tmp_path / "emb.h5")
    parts.prepare(fingerprint())
    manifest = json.loads((parts.path / "manifest.json").read_text())
    assert manifest == {"key": KEY, "fingerprint": FIELDS}
    (parts.path / ".shard-000001.tmp").write_bytes(b"half")
    parts.prepare(fingerprint())  # the same run: resumed, its half-written shard removed
    assert not list(parts.path.glob(".shard-*"))
    with pytest.raises(InputError, match=r"other arguments \(differing: chunk_size, max_tokens\)"):
        parts.prepare(fingerprint(chunk_size=3, max_tokens=2000))
    (parts.path / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="without a readable manifest.json"):
        parts.prepare(fingerprint())


def part(count: int, start: int, chunk: int, spot_min: float | None, key: str = KEY) -> Part:
    stamp = ShardStamp(key, chunk, count, start, "00", 0 if spot_min is None else count, spot_min, 0)
    pooled = {6: np.full((count, 4), chunk, dtype=np.float32)}
    return Part([f"s{start + i}" for i in range(count)], pooled, attrs=stamp.attrs())


def test_done_shards_redo_a_broken_last_one_and_refuse_a_broken_earlier_one(tmp_path):
    parts = Parts.beside(tmp_path / "emb.h5")
    parts.prepare(fingerprint(layers=[6], per_residue=False))
    for number in range(3):
        parts.write(number, part(2, 2 * number, number, None), [6], False)
    assert parts.done(KEY, 3) == {0, 1, 2}
    assert parts.done(KEY, 2) == {0, 1}  # a last shard past the input's end is redone, not kept
    with pytest.raises(InputError, match="corrupt or not of this run"):
        parts.done("another run's key", 3)
    parts.shard(2).write_bytes(b"cut short")
    assert parts.done(KEY, 3) == {0, 1}
    parts.shard(0).write_bytes(b"damaged")
    with pytest.raises(InputError, match="shard-000000.h5: corrupt or not of this run"):
        parts.done(KEY, 3)


def test_merge_sums_the_shards_checks_and_removes_the_directory(tmp_path):
    out = tmp_path / "emb.h5"
    parts = Parts.beside(out)
    run = fingerprint(layers=[6], per_residue=False, sequences=4, policy=FP32.to_dict())
    parts.prepare(run)
    parts.write(0, part(2, 0, 0, 0.999, run.key), [6], False)
    with pytest.raises(OutputError, match="shard-000001.h5: missing or unreadable"):
        parts.merge(out, 2, run, FP32, 0.99)
    parts.write(1, part(2, 2, 1, 0.995, run.key), [6], False)
    assert read_shard_attrs(parts.shard(1))["spot_min_cosine"] == pytest.approx(0.995)
    assert parts.merge(out, 2, run, FP32, 0.99) == Totals(spot_checks=4, spot_min_cosine=pytest.approx(0.995))
    assert not parts.path.exists()
    merged = read_embeddings(out)
    assert merged.ids == ["s0", "s1", "s2", "s3"] and merged.embeddings[:, 0].tolist() == [0, 0, 1, 1]
    assert merged.metadata["spot_checks"]["count"] == 4 and merged.metadata["spot_checks"]["threshold"] is None
