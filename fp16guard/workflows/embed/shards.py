"""The parts directory of a run (``OUT.parts``): its manifest with the run's fingerprint, one
shard per chunk (``shard-NNNNNN.h5``, stamped with the fingerprint's key), which of them a
stopped run already finished, and the merge of them all into OUT.

Resuming after a kill depends on this: a rerun whose fingerprint has the manifest's key skips
every complete shard, so neither the fingerprint's fields nor the shard stamps may change.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fp16guard.core.versions import fp16guard_version
from fp16guard.errors import InputError, OutputError
from fp16guard.io.embedfile import FORMAT, FORMAT_VERSION, Part, merge, read_shard_attrs, write_shard
from fp16guard.io.outputs import write_text_atomic
from fp16guard.numerics.policy import Policy

MANIFEST = "manifest.json"
SHARD = re.compile(r"shard-(\d{6})\.h5")


@dataclass(frozen=True)
class Fingerprint:
    """The arguments a run's shards depend on; a rerun resumes only a run with an equal one."""

    target: str
    model: str
    weights_sha256: str | None
    policy: dict  # Policy.to_dict()
    input_sha256: str
    sequences: int
    layers: list[int]
    per_residue: bool
    pooling: str
    chunk_size: int
    max_tokens: int
    spot_check_every: int
    device_type: str
    compiled: bool
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def fields(self) -> dict:
        """The fingerprint as the manifest holds it."""
        return asdict(self)

    @property
    def key(self) -> str:
        """The sha256 of the fingerprint's sorted JSON: what the manifest and every shard carry."""
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ShardStamp:
    """What a shard's attributes say: whose run and which chunk it is, and its checks' summary."""

    key: str
    chunk: int
    count: int
    start: int
    chunk_sha256: str
    spot_checks: int
    spot_min_cosine: float | None
    truncated: int

    def attrs(self) -> dict:
        """The shard's HDF5 attributes (NaN for no spot check: HDF5 has no None)."""
        return {**asdict(self), "spot_min_cosine": np.nan if self.spot_min_cosine is None else self.spot_min_cosine}


@dataclass(frozen=True)
class Totals:
    """The spot checks and truncations of every shard, summed at the merge."""

    spot_checks: int = 0
    spot_min_cosine: float | None = None
    truncated: int = 0


@dataclass(frozen=True)
class Parts:
    """The directory where a run keeps its shards until they are merged."""

    path: Path

    @classmethod
    def beside(cls, out: Path) -> Parts:
        """The parts directory of OUT: ``OUT.parts`` beside it."""
        return cls(out.with_name(out.name + ".parts"))

    @property
    def kept(self) -> str:
        """The end of every failure's message: the shards so far are kept to resume from."""
        return f"; shards written so far stay in {self.path} (rerun to resume after fixing the cause)"

    def shard(self, number: int) -> Path:
        """Where chunk ``number``'s shard is written."""
        return self.path / f"shard-{number:06d}.h5"

    def check_usable(self) -> None:
        """InputError when something other than a directory has the parts directory's name."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a directory of shards; remove it")

    def prepare(self, fingerprint: Fingerprint) -> None:
        """Create the directory with its manifest, or check that the one there is this run's."""
        manifest = self.path / MANIFEST
        if self.path.is_dir():
            try:
                held = json.loads(manifest.read_text())
            except (OSError, ValueError):
                raise InputError(
                    f"{self.path}: exists without a readable {MANIFEST}, so it is not a run of fp16guard embed; "
                    "remove it"
                ) from None
            if held.get("key") != fingerprint.key:
                raise InputError(
                    f"{self.path} holds a stopped run with other arguments "
                    f"(differing: {_differing(fingerprint, held)}); rerun with that run's arguments to finish it, or "
                    "remove the directory to start over"
                )
            for stale in self.path.glob(".shard-*.tmp"):  # a shard being written when the run was killed
                stale.unlink(missing_ok=True)
            return
        record = {"key": fingerprint.key, "fingerprint": fingerprint.fields()}
        try:
            self.path.mkdir(parents=True)
            write_text_atomic(manifest, json.dumps(record, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {exc.strerror or exc}") from None

    def done(self, key: str, chunks: int) -> set[int]:
        """The chunks whose shards are complete. A shard that cannot be read is redone when it is
        the last one written; anywhere else it means damage, and the run stops (InputError)."""
        present = sorted(int(m.group(1)) for p in self.path.glob("shard-*.h5") if (m := SHARD.fullmatch(p.name)))
        done: set[int] = set()
        for number in present:
            if _is_shard_of(read_shard_attrs(self.shard(number)), key, number) and number < chunks:
                done.add(number)
            elif number != present[-1]:  # the last one is redone (overwritten by its rename)
                raise InputError(
                    f"{self.shard(number)}: corrupt or not of this run; remove it (it is embedded again) or the whole "
                    f"{self.path}"
                )
        return done

    def write(self, number: int, part: Part, layers: list[int], per_residue: bool) -> None:
        """Write chunk ``number``'s shard (atomically: a shard that exists is complete)."""
        write_shard(self.shard(number), part, layers, per_residue)

    def merge(self, out: Path, chunks: int, fingerprint: Fingerprint, policy: Policy, threshold: float) -> Totals:
        """Check that every shard is there and this run's, merge them into ``out``, remove the directory."""
        shards = [self.shard(n) for n in range(chunks)]
        totals = Totals()
        for number, shard in enumerate(shards):
            attrs = read_shard_attrs(shard)
            if not _is_shard_of(attrs, fingerprint.key, number):
                raise OutputError(f"{shard}: missing or unreadable after embedding; rerun to redo it")
            totals = _added(totals, attrs)
        attrs = _file_attrs(fingerprint, policy, threshold, totals)
        merge(shards, out, fingerprint.layers, fingerprint.per_residue, attrs)
        shutil.rmtree(self.path, ignore_errors=True)
        return totals


def _differing(fingerprint: Fingerprint, held: dict) -> str:
    """The fields in which a manifest's fingerprint differs from this run's, for the message."""
    ours, theirs = fingerprint.fields(), held.get("fingerprint", {})
    return ", ".join(sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))) or "unknown"


def _is_shard_of(attrs: dict | None, key: str, number: int) -> bool:
    """Whether a shard's attributes (None: unreadable) make it chunk ``number`` of the run ``key``."""
    return attrs is not None and attrs.get("key") == key and attrs.get("chunk") == number


def _added(totals: Totals, attrs: dict) -> Totals:
    """``totals`` with one more shard's counts; its minimum cosine counts when it was spot-checked."""
    spot_min = totals.spot_min_cosine
    if attrs["spot_checks"] and np.isfinite(attrs["spot_min_cosine"]):
        spot_min = attrs["spot_min_cosine"] if spot_min is None else min(spot_min, attrs["spot_min_cosine"])
    return Totals(totals.spot_checks + int(attrs["spot_checks"]), spot_min, totals.truncated + int(attrs["truncated"]))


def _file_attrs(fingerprint: Fingerprint, policy: Policy, threshold: float, totals: Totals) -> dict:
    """The merged file's attributes (fp16guard.io.embedfile)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "target": fingerprint.target, "model": fingerprint.model,
        "weights_sha256": fingerprint.weights_sha256, "policy": policy.to_dict(), "policy_name": policy.name,
        "layers": fingerprint.layers, "pooling": fingerprint.pooling, "per_residue": fingerprint.per_residue,
        "sequences": fingerprint.sequences, "input_sha256": fingerprint.input_sha256, "truncated": totals.truncated,
        "spot_checks": {
            "count": totals.spot_checks, "min_cosine": totals.spot_min_cosine, "every": fingerprint.spot_check_every,
            "threshold": None if policy.is_full_precision else threshold,
        },
        "fp16guard": fp16guard_version(), "torch": torch.__version__,
    }
