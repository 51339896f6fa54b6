"""A saved FP32 reference in a run: loading one (--reference) in place of the FP32 pass, saying
what it leaves out, and saving the run's own (--save-reference)."""

from __future__ import annotations

from dataclasses import asdict, fields

from fp16guard.core.config import ValidationConfig
from fp16guard.errors import InputError
from fp16guard.execution import distributed
from fp16guard.execution.runner import RunResult, Timing
from fp16guard.io.reference import SavedReference, load_reference, reference_metadata, save_reference
from fp16guard.numerics.policy import FP32
from fp16guard.numerics.precision import AppliedPolicy
from fp16guard.report.document import Attempt
from fp16guard.workflows.validate.inputs import Inputs
from fp16guard.workflows.validate.run import Runner


def saved_reference(config: ValidationConfig) -> SavedReference | None:
    """The reference named by --reference, or None to compute it."""
    if config.reference and config.save_reference:
        raise InputError("use either --reference or --save-reference, not both")
    return load_reference(config.reference) if config.reference else None


def saved_reference_result(saved: SavedReference, batches: int) -> RunResult:
    """A saved reference as the runner's result: no token states, the saved timing and memory."""
    known = {f.name for f in fields(Timing)}
    timing = Timing(**{k: v for k, v in saved.meta["timing"].items() if k in known})
    return RunResult(
        applied=AppliedPolicy(FP32),
        pooled=saved.embeddings,
        timing=timing,
        peak_memory_bytes=saved.meta.get("peak_memory_bytes"),
        token_states=[None] * batches,
    )


def loaded_reference(runner: Runner, saved: SavedReference) -> RunResult:
    """``saved`` as the run's FP32 reference, with a note of what a saved reference leaves out."""
    runner.notes.append(
        f"FP32 reference loaded from {saved.path}, not computed: per-token metrics are skipped (a saved "
        "reference holds pooled embeddings only); pooled metrics and the NaN/Inf scan of every hidden state still run"
    )
    return saved_reference_result(saved, len(runner.inputs.batches))


def save_run_reference(
    config: ValidationConfig, reference: RunResult, inputs: Inputs, target_name: str, pooling: str, environment: dict
) -> None:
    """With --save-reference, write the FP32 ``reference`` and what it was computed from (on the
    main rank only: every rank holds the same reference)."""
    world = distributed.current()
    if not config.save_reference or (world is not None and not world.main):
        return
    loaded, records = inputs.loaded, inputs.records
    save_reference(
        config.save_reference, reference.pooled, inputs.ids,
        reference_metadata(
            timing=asdict(reference.timing), peak_memory_bytes=reference.peak_memory_bytes, target=target_name,
            model=loaded.name, weights_sha256=loaded.weights_sha256, dataset=records.name,
            dataset_sha256=records.sha256, layer=inputs.layer, pooling=pooling, max_length=inputs.max_length,
            max_tokens=inputs.max_tokens, environment=environment,
        ),
    )


def describe_saved_reference(saved: SavedReference, attempt: Attempt, environment: dict, notes: list[str]) -> bool:
    """Mark the report's reference ``attempt`` as loaded from ``saved``, and add to ``notes``
    how its timing compares; True when it was computed on the same kind of device."""
    meta = saved.meta
    attempt.source = str(saved.path)
    attempt.reason = f"FP32 reference loaded from {saved.path}"
    where = f"{meta.get('device_name')} ({meta.get('device')})"
    attempt.notes.append(f"computed {meta.get('created')} on {where}; timing and peak memory are that run's")
    same_kind = str(meta.get("device", "")).split(":")[0] == str(environment.get("device", "")).split(":")[0]
    same = meta.get("device_name") == environment.get("device_name") and same_kind
    if same:
        notes.append(f"speed-ups and memory ratios compare with the FP32 timing and peak memory saved in {saved.path}")
    else:
        notes.append(
            f"the saved FP32 reference was computed on {where}, this run on {environment.get('device_name')} "
            f"({environment.get('device')}): its embeddings stand (FP32 differs between devices by rounding only), "
            "but speed-ups and memory ratios against it are not reported"
        )
    return same


def without_ratios(attempts: list[Attempt]) -> None:
    """Clear the speed-ups and memory ratios of ``attempts``: against a reference saved on another
    kind of device they compare nothing."""
    for attempt in attempts:
        attempt.speedup_vs_fp32 = attempt.memory_ratio_vs_fp32 = None
