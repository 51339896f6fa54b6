"""The validate workflow: the FP32 reference, the fallback ladder of attempts, and the verdict as
a Report.

Its parts: ``inputs`` (the policies to try, the sequences, the weights, the batches), ``run`` (a
run's state and one policy's pass), ``reference`` (a saved FP32 reference), ``ladder`` (the
attempts and the recommendation), ``search`` (FP32 islands by bisection) and ``verdict``."""

from __future__ import annotations

from pathlib import Path

from fp16guard.core.config import ModelSource, ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.execution import distributed
from fp16guard.execution.devices import environment
from fp16guard.models import get_target
from fp16guard.numerics.compare import check_reference
from fp16guard.numerics.policy import get_policy
from fp16guard.report.document import Report
from fp16guard.workflows.validate.inputs import (
    agreement_labels,
    policies_for_model,
    policies_to_try,
    prepare_inputs,
    token_budget,
)
from fp16guard.workflows.validate.ladder import (
    agreement_inputs,
    check_compositions,
    fp32_reference,
    ladder_outcome,
    run_comparisons,
)
from fp16guard.workflows.validate.reference import (
    describe_saved_reference,
    loaded_reference,
    save_run_reference,
    saved_reference,
    saved_reference_result,
    without_ratios,
)
from fp16guard.workflows.validate.run import Runner, Tried, ValidationRun, attempt_of, placements
from fp16guard.workflows.validate.verdict import report, summary

__all__ = ["saved_reference_result", "token_budget", "validate"]


def validate(
    target_name: str,
    config: ValidationConfig,
    source: ModelSource,
    sequences: str | Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run the FP32 reference and the policies to try; return the Report (never raises for an
    accuracy failure: ``report.passed`` says it). Raises Fp16GuardError for bad input,
    missing weights, or a broken FP32 reference. ``config.reference`` loads the FP32 reference
    from a file instead of computing it (InputError if it was saved for another run);
    ``config.save_reference`` writes it after computing it."""
    progress = progress or Progress()
    target = get_target(target_name)
    policies = policies_to_try(config)
    extras = [get_policy(p) for p in config.also_try]
    placement, reference_placement = placements(config)
    saved = saved_reference(config)
    inputs = prepare_inputs(target, target_name, config, source, sequences, placement.device, policies, saved, progress)
    policies = policies_for_model(config, policies, inputs.loaded)
    labels = agreement_labels(config, inputs.ids)
    runner = Runner(target, config, inputs, placement, reference_placement, progress)
    env = distributed.environment(environment(placement.device))

    reference = fp32_reference(runner) if saved is None else loaded_reference(runner, saved)
    # The reference is checked before any attempt: a NaN there is an error, not a pass.
    check_reference(reference.pooled, inputs.ids)
    save_run_reference(config, reference, inputs, target_name, source.pooling, env)
    first = Tried(attempt_of(reference), reference.applied.policy)
    same_device = describe_saved_reference(saved, first.attempt, env, inputs.notes) if saved is not None else True
    run = ValidationRun(runner, reference, agreement_inputs(runner, reference, labels), [first])

    outcome = ladder_outcome(run, policies)
    check_compositions(run, outcome)
    run_comparisons(run, extras)
    reference.token_states.clear()  # the FP32 token states are needed no more
    if not same_device:
        without_ratios(run.attempts[1:])
    return report(run, target_name, env, outcome, summary(run, outcome, policies))
