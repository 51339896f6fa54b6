"""What a validation runs on: the policies to try, the sequences as read and truncated, the loaded
weights, the token budget and the batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fp16guard.core.config import ModelSource, ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.errors import InputError
from fp16guard.execution import distributed
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.budget import auto_max_tokens
from fp16guard.io.reference import SavedReference, library_versions
from fp16guard.io.sequences import SequenceSet, bundled_path, read_fasta, some_ids
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.agreement import load_probe, read_labels
from fp16guard.numerics.policy import LADDER, Policy, get_policy, with_class_fp32
from fp16guard.workflows.inputs import vocabulary_notes, with_ambiguity_as_n


def policies_to_try(config: ValidationConfig) -> list[Policy]:
    """The ladder, or the policies the user named."""
    if config.policies is None:
        return list(LADDER)
    return [get_policy(p) for p in config.policies]


def policies_for_model(config: ValidationConfig, policies: list[Policy], loaded: LoadedModel) -> list[Policy]:
    """``policies`` as the loaded model is tried: the ladder of a model whose class keeps modules
    in FP32 when loaded in FP16 climbs with and without them."""
    if config.policies is None and loaded.keep_in_fp32_modules:
        # Both ways of loading in FP16: .half() (fp16) and from_pretrained's (fp16+keep32).
        return with_class_fp32(policies)
    return policies


def agreement_labels(config: ValidationConfig, ids: list[str]) -> tuple[str | None, ...] | None:
    """Each sequence's --labels label (None without --labels), with the --probe file checked too:
    both are read before any pass, so that a bad file fails in seconds."""
    labels = tuple(read_labels(config.labels, ids)) if config.labels else None
    if config.probe:
        load_probe(config.probe, None)
    return labels


def token_budget(
    config: ValidationConfig, loaded: LoadedModel, device: torch.device, length: int, saved: SavedReference | None
) -> tuple[int, str]:
    """Tokens per batch and where the number came from: --max-tokens, the saved reference's own
    (so that a rerun replays its batches), or derived from free memory (``length``: the longest
    padded sequence)."""
    if config.max_tokens is not None:
        return config.max_tokens, "--max-tokens"
    if saved is not None and saved.meta.get("max_tokens"):
        return (
            int(saved.meta["max_tokens"]),
            f"the budget of the saved reference {saved.path}, so that its batches are replayed",
        )
    # With --profile the FP32 and FP16 models are on the device together.
    return auto_max_tokens(loaded.module, loaded.num_parameters, device, length, 1.5 if config.profile else 1.0)


@dataclass
class Inputs:
    """What every attempt runs on: the sequences as read, the loaded weights, and the batches."""

    records: SequenceSet
    source: str  # the FASTA path, or bundled:NAME
    loaded: LoadedModel
    layer: int
    max_length: int | None
    ids: list[str]
    texts: list[str]  # after truncation
    lengths: list[int]  # tokens per sequence after truncation, special tokens excluded
    truncated: list[int]  # positions in ids
    max_tokens: int
    budget_reason: str
    batches: list[TokenBatch]
    notes: list[str]  # warnings so far, for the report


@dataclass
class _Warnings:
    """Warnings told to the user as they arise and kept for the report's notes."""

    progress: Progress
    notes: list[str]

    def warn(self, message: str, note: str | None = None) -> None:
        """Tell the user ``message``; note it, or ``note`` in its place."""
        self.progress.warn(message)
        self.notes.append(note or message)


def prepare_inputs(
    target: Target, target_name: str, config: ValidationConfig, source: ModelSource, sequences: str | Path | None,
    device: torch.device, policies: list[Policy], saved: SavedReference | None, progress: Progress,
) -> Inputs:
    """Read the sequences, load the weights, truncate, agree on the token budget and build the
    batches; checks a saved reference against each as soon as it can."""
    seq_path = Path(sequences) if sequences else bundled_path(target.default_sequences)
    records: SequenceSet = read_fasta(seq_path, target.input_alphabet, "sequence")
    warnings = _Warnings(progress, [])
    records, note = with_ambiguity_as_n(target, records)
    if note:
        warnings.warn(note)
    if device.type == "cpu" and any(not p.is_full_precision for p in policies):
        warnings.warn(
            "FP16 on CPU runs slowly and uses CPU kernels: fine for testing the workflow, but validate on the GPU you "
            "deploy on"
        )

    if saved is not None:  # before the weights load, which takes a while
        saved.check(target=target_name, dataset_sha256=records.sha256, versions=library_versions(target_name))
    progress.stage(f"loading {target_name} weights")
    loaded = target.load(source)
    for message in loaded.notes:  # such as a checkpoint's ignored decoder
        warnings.warn(message)
    for message in vocabulary_notes(target, loaded, records):
        warnings.warn(message)
    layer, max_length = _layer_and_length(config, loaded)

    ids = [r.id for r in records.records]
    texts = [r.sequence for r in records.records]
    lengths = target.measure(loaded, texts)
    truncated = _truncate(target, loaded, texts, lengths, max_length)
    if truncated:
        message = (
            f"{len(truncated)} sequence(s) longer than {max_length} tokens were truncated: "
            f"{some_ids([ids[i] for i in truncated])}"
        )
        warnings.warn(message, message + " (listed under dataset.truncated)")
    if saved is not None:
        saved.check(
            weights_sha256=loaded.weights_sha256, layer=layer, pooling=source.pooling, max_length=max_length, ids=ids
        )
    longest = max(lengths) + target.special_tokens_per_row
    max_tokens, budget_reason = token_budget(config, loaded, device, longest, saved)
    agreed = distributed.smallest(max_tokens, "agreeing on the token budget")
    if agreed != max_tokens:  # every rank must form the same batches
        max_tokens, budget_reason = agreed, f"the smallest of the ranks' budgets ({budget_reason} on this rank)"
    batches = prepare_batches(target, loaded, texts, lengths, max_tokens)
    return Inputs(
        records=records, source=str(seq_path) if sequences else f"bundled:{seq_path.name}", loaded=loaded, layer=layer,
        max_length=max_length, ids=ids, texts=texts, lengths=lengths, truncated=truncated, max_tokens=max_tokens,
        budget_reason=budget_reason, batches=batches, notes=warnings.notes,
    )


def _layer_and_length(config: ValidationConfig, loaded: LoadedModel) -> tuple[int, int | None]:
    """The layer whose states are pooled and the longest sequence in tokens, as asked and checked
    against the model."""
    layer = loaded.num_layers if config.layer is None else config.layer
    if not 0 <= layer <= loaded.num_layers:
        raise InputError(f"--layer must be between 0 and {loaded.num_layers}, got {layer}")
    max_length = config.max_length or loaded.max_length
    if loaded.max_length is not None and not 1 <= max_length <= loaded.max_length:
        raise InputError(f"--max-length must be between 1 and {loaded.max_length} tokens for {loaded.name}")
    return layer, max_length


def _truncate(
    target: Target, loaded: LoadedModel, texts: list[str], lengths: list[int], max_length: int | None
) -> list[int]:
    """Cut the sequences longer than ``max_length`` tokens down to it, in place in ``texts`` and
    ``lengths``; return their positions."""
    truncated = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
    for i in truncated:
        texts[i] = target.truncate(loaded, texts[i], max_length)
        lengths[i] = max_length
    return truncated
