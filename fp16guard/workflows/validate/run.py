"""A validation run's state: where its passes run, its inputs, its FP32 reference and the attempts
so far, each beside the policy it ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from fp16guard.core.config import ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.errors import Fp16GuardError
from fp16guard.execution import distributed
from fp16guard.execution.devices import resolve_placement
from fp16guard.execution.runner import RunResult
from fp16guard.models.base import LoadedModel, Target
from fp16guard.numerics.agreement import AgreementInputs
from fp16guard.numerics.compare import Comparison, compare
from fp16guard.numerics.policy import Policy
from fp16guard.report.document import Attempt, finite_or_none
from fp16guard.workflows.validate.inputs import Inputs


@dataclass(frozen=True)
class Placement:
    """Where passes run: a device, and whether a model's blocks are spread over every GPU."""

    device: torch.device
    spread: bool


def placements(config: ValidationConfig) -> tuple[Placement, Placement]:
    """Where the attempts run (--device) and where the FP32 reference runs (--reference-device,
    else the same)."""
    attempts = Placement(*resolve_placement(config.device))
    if not config.reference_device:
        return attempts, attempts
    return attempts, Placement(*resolve_placement(config.reference_device))


@dataclass
class Tried:
    """An attempt as the report keeps it, beside the policy it ran (the report keeps only the
    policy's dict)."""

    attempt: Attempt
    policy: Policy


def attempt_of(
    result: RunResult, reference: RunResult | None = None, comparison: Comparison | None = None,
    role: str = "attempt", comparable: bool = True,
) -> Attempt:
    """The report's attempt for ``result``: the FP32 reference itself without a ``comparison``,
    else a policy judged against ``reference`` (speed and memory against it when ``comparable``:
    run on the same placement)."""
    policy = result.applied.policy
    timing = {
        **asdict(result.timing),
        "tokens_per_second": result.timing.tokens_per_second,
        "first_pass_tokens_per_second": result.timing.first_pass_tokens_per_second,
    }
    speedup = memory_ratio = None
    if reference is not None and comparable:
        speedup = reference.timing.seconds / result.timing.seconds if result.timing.seconds else None
        if result.peak_memory_bytes and reference.peak_memory_bytes:
            memory_ratio = result.peak_memory_bytes / reference.peak_memory_bytes
    return Attempt(
        policy=policy.to_dict(),
        description=policy.describe(),
        role="reference" if comparison is None else role,
        fp32_modules=list(result.applied.fp32_modules),
        notes=list(result.applied.notes),
        timing=finite_or_none(timing),
        peak_memory_bytes=result.peak_memory_bytes,
        speedup_vs_fp32=speedup,
        memory_ratio_vs_fp32=memory_ratio,
        passed=None if comparison is None else comparison.passed,
        reason="FP32 reference" if comparison is None else comparison.reason,
        metrics=None if comparison is None else finite_or_none(comparison.to_dict()),
        placement=result.placement,
        ranks=finite_or_none(result.ranks) if result.ranks else None,
    )


@dataclass
class Runner:
    """What every pass of a run shares: the target, its inputs, the settings, where passes run
    and where progress goes. Runs one policy over the batches."""

    target: Target
    config: ValidationConfig
    inputs: Inputs
    placement: Placement
    reference_placement: Placement
    progress: Progress

    @property
    def loaded(self) -> LoadedModel:
        """The weights as loaded."""
        return self.inputs.loaded

    @property
    def notes(self) -> list[str]:
        """The report's notes, so far."""
        return self.inputs.notes

    @property
    def comparable(self) -> bool:
        """Whether the FP32 reference ran where the attempts run, so that speed and memory compare."""
        return self.reference_placement == self.placement

    def warn(self, message: str) -> None:
        """Tell the user ``message`` now and note it in the report."""
        self.progress.warn(message)
        self.notes.append(message)

    def run_policy(
        self, policy: Policy, reference: RunResult | None = None, keep: int = 0, placement: Placement | None = None
    ) -> RunResult:
        """A timed pass of ``policy`` over every batch (on ``placement``, else the attempts'),
        keeping up to ``keep`` bytes of token states; an out-of-memory error is the user's to fix."""
        where = placement or self.placement
        inputs = self.inputs
        self.progress.stage(f"{policy.name}: building the model ({policy.describe()})")
        try:
            result = distributed.run_policy(
                self.target, inputs.loaded, policy, inputs.batches, len(inputs.texts), where.device, inputs.layer,
                self.progress, reference, keep, spread=where.spread,
                repeat=True if self.config.careful_timing else None,
            )
        except torch.OutOfMemoryError:
            raise Fp16GuardError(
                f"out of GPU memory under {policy.name}, with batches split down to single sequences; "
                f"lower --max-length or --max-tokens (now {inputs.max_tokens})"
            ) from None
        if result.oom_splits:
            self.warn(
                f"{policy.name}: {result.oom_splits} batch(es) ran out of GPU memory and were split in half; no "
                "sequence was lost (a lower --max-tokens avoids the retries)"
            )
        return result


@dataclass
class ValidationRun:
    """A run once its FP32 reference stands: the attempts so far (the reference's first), each
    judged against it, and each judged policy's per-sequence cosines."""

    runner: Runner
    reference: RunResult
    agreement: AgreementInputs
    tried: list[Tried]
    cosines: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def attempts(self) -> list[Attempt]:
        """The report's attempts, in the order they ran."""
        return [tried.attempt for tried in self.tried]

    def judge(self, policy: Policy, role: str = "attempt") -> Tried:
        """A full, timed attempt of ``policy`` compared with the reference (not yet added to the run)."""
        runner, reference = self.runner, self.reference
        result = runner.run_policy(policy, reference)
        comparison = compare(
            reference.pooled, result.pooled, runner.inputs.ids, runner.config.thresholds, result.token_stats,
            result.token_nonfinite, self.agreement,
        )
        self.cosines[policy.name] = comparison.cosines
        return Tried(attempt_of(result, reference, comparison, role, runner.comparable), policy)

    def passes(self, policy: Policy) -> bool:
        """An untimed pass, for the search: does ``policy`` meet the threshold?"""
        runner, inputs = self.runner, self.runner.inputs
        runner.progress.stage(f"search: {policy.describe()}")
        result = distributed.run_policy(
            runner.target, inputs.loaded, policy, inputs.batches, len(inputs.ids), runner.placement.device,
            inputs.layer, measure=False, spread=runner.placement.spread,
        )
        return bool(compare(
            self.reference.pooled, result.pooled, inputs.ids, runner.config.thresholds,
            token_nonfinite=result.token_nonfinite, agreement=self.agreement,
        ))
