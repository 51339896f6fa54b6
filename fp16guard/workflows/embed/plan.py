"""What embed decides before it embeds anything: the policy and its threshold, the layers, the
token budget, whether to compile, which sequences are spot-checked; and the input, read once to
validate it (``scan``) and again in tokenised chunks (``read_chunks``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from fp16guard.core.progress import Progress
from fp16guard.errors import InputError
from fp16guard.execution.budget import CPU_MAX_TOKENS, MAX_TOKENS
from fp16guard.execution.embedder import Embedder, can_compile
from fp16guard.io.sequences import Record
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.policy import FP32, POLICIES, Policy, read_policy_record
from fp16guard.workflows.inputs import stream_records

DEFAULT_THRESHOLD = 0.99
MIN_SPOT_CHECKS = 3

#: Below this many tokens, compiling costs about what it saves. Measured on an H200 with
#: ESM-2 650M, 100,000 proteins (38.1M tokens; docs/benchmarks.md, "fp16guard embed"): the
#: first batch came about 12 s later (compiling, cold cache), the embedding took 142 s instead
#: of 162 s; so compiling pays from about 15M tokens.
COMPILE_MIN_TOKENS = 20_000_000


@dataclass(frozen=True)
class PolicyChoice:
    """The policy to embed under, its validation record (None when it has none), and a line for the summary."""

    policy: Policy
    record: dict | None
    note: str


def resolve_policy(spec: str | None, force: bool, progress: Progress) -> PolicyChoice:
    """The policy named by ``--policy``. Only a file written by ``validate --save-policy``
    carries a record; anything else but FP32 is refused unless ``force``."""
    if spec is None:
        return PolicyChoice(
            FP32, None, "no --policy: embedding in FP32 (validate and pass --policy FILE to embed in FP16)"
        )
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
        return PolicyChoice(policy, None, f"policy '{policy.name}' ({policy.describe()}), NOT validated (--force)")
    note = f"policy '{policy.name}' ({policy.describe()})" + (" validated" if record else "")
    return PolicyChoice(policy, record, note)


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


def threshold_of(record: dict | None) -> float:
    """The cosine the spot checks must reach: the validated run's threshold, else DEFAULT_THRESHOLD."""
    return float((record or {}).get("threshold") or DEFAULT_THRESHOLD)


def checked_layers(asked: tuple[int, ...] | None, loaded: LoadedModel) -> list[int]:
    """The layers to write (``None``: the last); InputError for one the model lacks or one named twice."""
    layers = list(asked or (loaded.num_layers,))
    for layer in layers:
        if not 0 <= layer <= loaded.num_layers:
            raise InputError(f"--layers: {layer} is not a layer of {loaded.name} (0 to {loaded.num_layers})")
    if len(set(layers)) != len(layers):
        raise InputError("--layers names a layer twice")
    return layers


def token_budget(asked: int | None, device: torch.device) -> int:
    """The tokens per batch: ``asked``, else the budget measured best on an H200 on a GPU (packed
    or padded) and 8192 on a CPU."""
    # Not from free memory (validate's auto): the budget is part of the fingerprint, so a resumed
    # run or another rank must arrive at the same batches. A batch that does not fit is halved anyway.
    return asked or (MAX_TOKENS if device.type == "cuda" else CPU_MAX_TOKENS)


class CompileChoice(NamedTuple):
    """Whether to compile, and a line for the summary (empty when there is nothing to say)."""

    compiled: bool
    note: str


def decide_compile(choice: str, target: Target, policy: Policy, device: torch.device, tokens: int) -> CompileChoice:
    """Whether to compile. ``auto`` compiles a packed policy on a GPU when the input has at least
    COMPILE_MIN_TOKENS tokens; ``on`` whenever the target and policy allow it (InputError
    otherwise); ``off`` never."""
    if choice not in ("auto", "on", "off"):
        raise InputError(f"--compile takes auto, on or off, not {choice!r}")
    possible = can_compile(target, policy)
    if choice == "off":
        return CompileChoice(False, "not compiled (--compile off)")
    if choice == "on":
        if not possible:
            raise InputError(
                f"--compile on needs a packed policy and the esm2 target; '{policy.name}' on {target.name} cannot be "
                "compiled"
            )
        return CompileChoice(True, "compiled with torch.compile (--compile on)")
    if not possible:
        return CompileChoice(False, "")  # nothing to say: compiling is not an option for this target and policy
    if device.type != "cuda":
        return CompileChoice(False, "not compiled (auto: compiles on a GPU only)")
    if tokens < COMPILE_MIN_TOKENS:
        return CompileChoice(
            False, f"not compiled (auto: {tokens:,} tokens is less than the {COMPILE_MIN_TOKENS:,} that pay for "
            "compiling)"
        )
    return CompileChoice(True, f"compiled with torch.compile (auto: {tokens:,} tokens)")


@dataclass
class Scan:
    """The first pass over the input: the record count, residues per chunk, the sha256 of its bytes."""

    count: int
    chunk_residues: list[int]
    sha256: str

    def tokens(self, target: Target) -> int:
        """The tokens of the whole input, special tokens included."""
        return sum(self.chunk_residues) + target.special_tokens_per_row * self.count

    def chunks(self, chunk_size: int) -> int:
        """How many chunks of ``chunk_size`` records the input makes."""
        return -(-self.count // chunk_size)


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


def read_chunks(target: Target, loaded: LoadedModel, embedder: Embedder, path: Path, chunk_size: int,
                wanted: set[int]) -> Iterator[Chunk]:
    """The chunks numbered in ``wanted``, read and tokenised in input order."""
    records, _ = stream_records(target, loaded, path)
    batch: list[Record] = []
    number = start = 0
    for record in records:
        batch.append(record)
        if len(batch) == chunk_size:
            if number in wanted:
                yield _chunk(target, loaded, embedder, number, start, batch)
            number, start, batch = number + 1, start + len(batch), []
    if batch and number in wanted:
        yield _chunk(target, loaded, embedder, number, start, batch)


def _chunk(target: Target, loaded: LoadedModel, embedder: Embedder, number: int, start: int,
           records: list[Record]) -> Chunk:
    """Chunk ``number`` of ``records``, hashed as read, cut to the model's limit, in batches."""
    ids = [r.id for r in records]
    texts = [r.sequence for r in records]
    residues = [len(t) for t in texts]
    digest = hashlib.sha256("".join(f"{i}\t{t}\n" for i, t in zip(ids, texts)).encode()).hexdigest()
    lengths = target.measure(loaded, texts)
    truncated = _truncate(target, loaded, texts, lengths)
    return Chunk(number, start, ids, texts, residues, lengths, embedder.batches(texts, lengths), truncated, digest)


def _truncate(target: Target, loaded: LoadedModel, texts: list[str], lengths: list[int]) -> int:
    """Cut the texts longer than the model's limit, in place (``lengths`` too); how many were cut."""
    limit = loaded.max_length
    truncated = 0
    for i, n in enumerate(lengths):
        if limit is not None and n > limit:
            texts[i], lengths[i] = target.truncate(loaded, texts[i], limit), limit
            truncated += 1
    return truncated
