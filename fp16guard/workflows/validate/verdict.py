"""The verdict of a run: its summary sentence and the Report that carries it."""

from __future__ import annotations

import datetime as _dt

from fp16guard.core.config import ValidationConfig
from fp16guard.core.versions import fp16guard_version
from fp16guard.numerics.policy import FP16, Policy
from fp16guard.report.document import Report
from fp16guard.workflows.validate.inputs import Inputs
from fp16guard.workflows.validate.ladder import Outcome
from fp16guard.workflows.validate.run import ValidationRun


def summary(run: ValidationRun, outcome: Outcome, policies: list[Policy]) -> str:
    """One sentence: the policy that passed and the one recommended, or why none passed."""
    passing, recommended = outcome.passing, outcome.recommended
    if not passing:
        return _failure(run, policies)
    text = f"PASS: {run.runner.loaded.name} meets the threshold under policy '{passing.name}' ({passing.describe()})."
    if recommended is not None:
        attempt = recommended.attempt
        text += f" Recommended: '{attempt.name}' ({attempt.description}), which also passes, {attempt.notes[-1]}."
    return text


def _failure(run: ValidationRun, policies: list[Policy]) -> str:
    """Why no policy passed, by what was tried; a --try policy that passed is mentioned."""
    tried = ", ".join(p.name for p in policies)
    # --try policies are information only: one that passed is mentioned, never the verdict.
    informative = [a.name for a in run.attempts if a.role == "comparison" and a.passed]
    if run.runner.config.policies is None:  # the ladder ran, and every rung failed
        text = f"FAIL: no policy met the threshold ({tried} tried)"
        text += "." if informative else "; keep this model in FP32."
    elif [p.name for p in policies] == [FP16.name]:  # --no-fallback, or --policy fp16
        text = "FAIL: full FP16 did not meet the threshold; fallbacks were not tried (--no-fallback or --policy)."
    else:
        text = (
            f"FAIL: {'policy' if len(policies) == 1 else 'policies'} {tried} did not meet the threshold; the "
            "fallback ladder was not tried (run without --policy to try it)."
        )
    if informative:
        text += (
            f" --try {', '.join(informative)} passed, for information only (validate with --policy "
            f"{informative[0]} to gate on it)."
        )
    return text


def report(run: ValidationRun, target_name: str, environment: dict, outcome: Outcome, text: str) -> Report:
    """The Report of ``run``: what ran on what, every attempt, the verdict ``outcome`` and its
    summary ``text``."""
    inputs, config = run.runner.inputs, run.runner.config
    passing, recommended = outcome.passing, outcome.recommended
    return Report(
        tool={"name": "fp16guard", "version": fp16guard_version()},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        environment=environment,
        model=_model(inputs, target_name),
        dataset=_dataset(inputs),
        thresholds=_thresholds(config),
        attempts=run.attempts,
        passed=passing is not None,
        passing_policy=passing.name if passing else None,
        recommended_policy=recommended.attempt.name if recommended else (passing.name if passing else None),
        summary=text,
        notes=inputs.notes,
    )


def _model(inputs: Inputs, target_name: str) -> dict:
    """The report's model: which weights, and the layer pooled."""
    loaded = inputs.loaded
    return {
        "target": target_name,
        "name": loaded.name,
        "source": loaded.source,
        "parameters": loaded.num_parameters,
        "weights_sha256": loaded.weights_sha256,
        "layer": inputs.layer,
        "num_layers": loaded.num_layers,
    }


def _dataset(inputs: Inputs) -> dict:
    """The report's dataset: the sequences, their truncation and their batches."""
    records = inputs.records
    return {
        "name": records.name,
        "source": inputs.source,
        "sha256": records.sha256,
        "sequences": len(records),
        "lengths": records.length_stats(),
        "max_length": inputs.max_length,
        "truncated": [inputs.ids[i] for i in inputs.truncated],
        "max_tokens": inputs.max_tokens,
        "max_tokens_reason": inputs.budget_reason,
        "batches": len(inputs.batches),
    }


def _thresholds(config: ValidationConfig) -> dict:
    """The report's thresholds: what an attempt had to meet."""
    thresholds = config.thresholds
    return {
        "min_cosine": thresholds.min_cosine, "allow_nonfinite": False,
        "min_knn_overlap": thresholds.min_knn_overlap,
        "min_rank_correlation": thresholds.min_rank_correlation,
    }
