"""The validate workflow's run-side seams: placements, the typed policy kept beside each attempt,
and how a batch-composition defect moves the verdict (fp16guard.workflows.validate)."""

from types import SimpleNamespace

import torch

from fp16guard.core.config import ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.numerics.agreement import AgreementInputs
from fp16guard.numerics.policy import FP16_RES32, FP32, fast_variant
from fp16guard.report.document import Attempt
from fp16guard.workflows.validate import ladder
from fp16guard.workflows.validate.ladder import Outcome, check_compositions, run_comparisons
from fp16guard.workflows.validate.run import Placement, Runner, Tried, ValidationRun, placements

PACKED = fast_variant(FP16_RES32, packed=True)


def attempt(policy, role="attempt", passed=True) -> Attempt:
    return Attempt(policy=policy.to_dict(), description=policy.describe(), role=role, fp32_modules=[], notes=[],
                   timing={}, peak_memory_bytes=None, speedup_vs_fp32=None, memory_ratio_vs_fp32=None, passed=passed,
                   reason="")


def small_run(*tried: Tried, config: ValidationConfig = ValidationConfig(device="cpu")) -> ValidationRun:
    inputs = SimpleNamespace(loaded=None, texts=["MK"], lengths=[2], ids=["a"], layer=1, notes=[])
    cpu = Placement(torch.device("cpu"), False)
    runner = Runner(target=None, config=config, inputs=inputs, placement=cpu, reference_placement=cpu,
                    progress=Progress())
    return ValidationRun(runner, reference=None, agreement=AgreementInputs(),
                         tried=[Tried(attempt(FP32, role="reference", passed=None), FP32), *tried])


def composition(passed: bool):
    def check(target, loaded, policy, *args):
        return {"passed": passed, "defects": [] if passed else ["a: alone vs packed cosine 0.5", "b: worse"]}
    return check


def test_placements_default_the_reference_to_the_attempts_own():
    attempts, reference = placements(ValidationConfig(device="cpu"))
    assert attempts == reference == Placement(torch.device("cpu"), False)
    assert placements(ValidationConfig(device="cpu", reference_device="cpu"))[1] == attempts


def test_a_composition_defect_fails_the_passing_attempt_and_the_next_passing_policy_takes_over(monkeypatch):
    monkeypatch.setattr(ladder, "check_composition", composition(False))
    packed, res32 = Tried(attempt(PACKED), PACKED), Tried(attempt(FP16_RES32), FP16_RES32)
    run = small_run(packed, res32)
    outcome = Outcome(PACKED)
    check_compositions(run, outcome)
    assert packed.attempt.passed is False and packed.attempt.composition["passed"] is False
    assert packed.attempt.reason == "batch composition changes embeddings: a: alone vs packed cosine 0.5"
    defects = "a: alone vs packed cosine 0.5; b: worse"
    assert run.runner.notes == [f"{PACKED.name}: 2 batch-composition defect(s): {defects}"]
    # The policy that takes over is the very Policy that ran, not one rebuilt from the report's dict.
    assert outcome.passing is FP16_RES32 and outcome.recommended is None
    assert res32.attempt.composition is None  # padded and not recommended: not checked


def test_a_composition_defect_of_the_recommended_attempt_withdraws_the_recommendation(monkeypatch):
    monkeypatch.setattr(ladder, "check_composition", composition(False))
    res32, fast = Tried(attempt(FP16_RES32), FP16_RES32), Tried(attempt(PACKED, role="fast"), PACKED)
    outcome = Outcome(FP16_RES32, recommended=fast)
    check_compositions(small_run(res32, fast), outcome)
    assert outcome.passing is FP16_RES32 and outcome.recommended is None and not fast.attempt.passed


def test_a_sound_composition_keeps_the_outcome_and_comparisons_are_not_checked(monkeypatch):
    monkeypatch.setattr(ladder, "check_composition", composition(True))
    fast, also = Tried(attempt(PACKED, role="fast"), PACKED), Tried(attempt(PACKED, role="comparison"), PACKED)
    outcome = Outcome(FP16_RES32, recommended=fast)
    check_compositions(small_run(fast, also), outcome)
    assert outcome.recommended is fast and fast.attempt.passed and fast.attempt.composition["passed"]
    assert also.attempt.composition is None


def test_comparisons_are_judged_in_order_and_added_with_their_policies(monkeypatch):
    run = small_run()
    judged = []

    def judge(policy, role="attempt"):
        judged.append((policy.name, role))
        return Tried(attempt(policy, role=role), policy)

    monkeypatch.setattr(run, "judge", judge)
    run_comparisons(run, [FP16_RES32, PACKED])
    assert judged == [(FP16_RES32.name, "comparison"), (PACKED.name, "comparison")]
    assert [t.policy for t in run.tried[1:]] == [FP16_RES32, PACKED]
    assert [a.name for a in run.attempts] == [FP32.name, FP16_RES32.name, PACKED.name]
