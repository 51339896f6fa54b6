"""The attempts of a run: the FP32 reference, the ladder's rungs, the search for FP32 islands, the
fast variants and the recommendation, the batch-composition checks and the --try comparisons."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fp16guard.errors import UnsupportedPolicyError
from fp16guard.execution import distributed
from fp16guard.execution.composition import check_composition
from fp16guard.execution.runner import RunResult
from fp16guard.models.base import Target
from fp16guard.numerics.agreement import BUNDLED_NEIGHBOURS, AgreementInputs, Fp64Floor, load_probe
from fp16guard.numerics.policy import FP16, FP32, Policy, fast_variant
from fp16guard.report.document import Attempt, finite_or_none
from fp16guard.workflows.validate.run import Runner, Tried, ValidationRun
from fp16guard.workflows.validate.search import search_fp32_islands

#: The fast variant is recommended over the policy that passed only when at least this much
#: faster, and faster by more than the spread of the two steady timings, so that timing noise
#: does not swap policies (and a committed --save-policy file does not churn).
FAST_MARGIN = 1.05
#: CPU timings do not predict GPU speed: on a CPU the fast variant is validated and reported,
#: never recommended.
RECOMMEND_ON_CPU = False


@dataclass
class Outcome:
    """What the attempts decided: the policy that passed (None: none did), and the attempt
    recommended over it (None: the passing policy itself)."""

    passing: Policy | None
    recommended: Tried | None = None


def fp32_reference(runner: Runner) -> RunResult:
    """The FP32 pass every attempt is compared with, keeping token states up to the budget, with
    notes of what it means for the comparisons."""
    reference = runner.run_policy(
        FP32, keep=runner.config.token_reference_budget_bytes, placement=runner.reference_placement
    )
    if not runner.comparable:
        placement = runner.placement
        runner.notes.append(
            f"the FP32 reference ran on {reference.placement}, the attempts on "
            f"{'GPUs (spread)' if placement.spread else placement.device}: "
            "speed-up and memory ratio against FP32 are not reported"
        )
    covered, count = reference.kept_sequences, len(runner.inputs.texts)
    if covered < count:
        runner.notes.append(
            f"per-token metrics cover {covered} of {count} sequences (the FP32 token states "
            "kept for them are capped in memory); pooled metrics cover all"
        )
    return reference


def agreement_inputs(runner: Runner, reference: RunResult, labels: tuple[str | None, ...] | None) -> AgreementInputs:
    """What the agreement metrics need beyond the embeddings: the user's probe and labels, and
    the FP64 floor with --fp64-floor; with notes on the neighbour metrics and missing labels."""
    config, source = runner.config, runner.inputs.source
    agreement = AgreementInputs(
        probe=load_probe(config.probe, reference.pooled.shape[1]) if config.probe else None,
        labels=labels,
        fp64=_fp64_floor(runner, reference) if config.fp64_floor else None,
    )
    bundled = BUNDLED_NEIGHBOURS.get(source.removeprefix("bundled:")) if source.startswith("bundled:") else None
    if bundled:
        runner.notes.append(f"Neighbour metrics: {bundled} (data/README.md)")
    if labels is not None and None in labels:
        runner.notes.append(
            f"--labels: {sum(label is None for label in labels)} of {len(runner.inputs.ids)} sequences have no label; "
            "nearest-centroid accuracy covers the labelled ones"
        )
    return agreement


def _fp64_floor(runner: Runner, reference: RunResult) -> Fp64Floor | None:
    """The FP64 pass over a sample (fp16guard.execution.floor), or None with a note when this
    model cannot run in FP64."""
    from fp16guard.execution.floor import fp64_floor, sample_rows

    inputs = runner.inputs
    rows = sample_rows(inputs.lengths, runner.config.fp64_floor)
    runner.progress.stage(f"FP64 floor: embedding {len(rows)} sequences in FP64 to measure FP32's own error")
    try:
        floor = fp64_floor(runner.target, inputs.loaded, inputs.texts, inputs.lengths, rows, reference.pooled,
                           runner.placement.device, inputs.layer, inputs.max_tokens)
    except RuntimeError as exc:  # a model whose code cannot run in FP64 (a fixed-dtype kernel)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        runner.warn(f"FP64 floor not measured: {inputs.loaded.name} does not run in FP64 here ({first[:200]})")
        return None
    runner.notes.append(
        f"FP64 floor: {len(rows)} sequences embedded in FP64 on {floor.device} in {floor.seconds:.1f} s; FP32's own "
        f"relative error against FP64 is {floor.fp32_error:.2e} (min cosine {floor.fp32_min_cosine:.10f}); each "
        "attempt's error is given as a multiple of it"
    )
    return floor


def ladder_outcome(run: ValidationRun, policies: list[Policy]) -> Outcome:
    """Climb ``policies``, search for FP32 islands with --search, then try the fast variants;
    the outcome before the batch-composition checks."""
    passing = _climb(run, policies)
    searched = _search_islands(run) if run.runner.config.search else None
    if passing is None and searched is not None and searched.attempt.passed:
        passing = searched.policy
    return Outcome(passing, _recommended(run, passing, searched))


def _climb(run: ValidationRun, policies: list[Policy]) -> Policy | None:
    """Judge ``policies`` in turn (each profiled with --profile) until one passes, unless told to
    go on; return the first that passed."""
    config = run.runner.config
    passing = None
    for index, policy in enumerate(policies):
        tried = run.judge(policy)
        run.tried.append(tried)
        if config.profile:
            _profile(run.runner, tried)
        if tried.attempt.passed:
            passing = passing or policy
        # fp16 and fp16+keep32 are the two FP16 models users get: both run before stopping.
        paired = index + 1 < len(policies) and policy == FP16 and policies[index + 1].keep_in_fp32_modules
        if passing and config.stop_at_first_pass and not paired:
            break
    return passing


def _profile(runner: Runner, tried: Tried) -> None:
    """Add to ``tried``'s attempt the agreement of every layer with FP32 (--profile)."""
    inputs = runner.inputs
    runner.progress.stage(f"{tried.policy.name}: profiling every layer against FP32")
    # Per-block hooks see padded rows: a packed policy is profiled on its padded twin.
    profiled = replace(tried.policy, layout="padded")
    tried.attempt.layers = finite_or_none(distributed.profile_policy(
        runner.target, inputs.loaded, profiled, inputs.batches, runner.placement.device, inputs.layer
    ))


def _search_islands(run: ValidationRun) -> Tried | None:
    """When full FP16 failed: bisect for the fewest FP32 blocks on top of it, then narrow each to
    its cheapest part that passes (``run.passes``, the quick untimed test); run what it found as
    a full attempt, add it to the run and return it."""
    attempts, notes = run.attempts, run.runner.notes
    fp16 = next((a for a in attempts if a.role == "attempt" and a.name == FP16.name), None)
    if fp16 is None or fp16.passed:
        notes.append("search skipped: " + ("full FP16 passed" if fp16 else "full FP16 was not among the attempts"))
        return None
    runner = run.runner
    found = search_fp32_islands(run.passes, len(runner.target.blocks(runner.loaded.module)))
    if found.policy is None:
        notes.append(
            f"search: even every block in FP32 (inputs and outputs in FP16) fails, after {found.forward_passes} "
            f"forward passes in {found.seconds:.1f} s: the failure is in what connects the blocks (such as the "
            "residual stream), so a whole-model policy is needed"
        )
        return None
    searched = run.judge(found.policy)
    fallback = next((a for a in attempts if a.role == "attempt" and a.passed), attempts[0])
    speed = searched.attempt.timing["tokens_per_second"] or 0.0
    ratios = [
        f"{speed / a.timing['tokens_per_second']:.2f}x {a.name}"
        for a in (fp16, fallback) if a.timing.get("tokens_per_second")
    ]
    searched.attempt.notes.append(
        f"found by bisection in {found.forward_passes} forward passes ({found.seconds:.1f} s); "
        f"speed {', '.join(ratios)}"
    )
    run.tried.append(searched)
    return searched


def _recommended(run: ValidationRun, passing: Policy | None, searched: Tried | None) -> Tried | None:
    """The attempt to recommend over ``passing``: a fast variant of it or of the ``searched``
    policy, or None. Only after the ladder or the search: --policy/--no-fallback test just what
    was named."""
    if run.runner.config.policies is not None:
        return None
    recommended = _try_fast(run, passing)
    if passing is None or searched is None or not searched.attempt.passed or searched.policy.name == passing.name:
        return recommended
    return _recommend_searched(run, passing, searched, recommended)


def _fast_candidates(target: Target, passing: Policy) -> list[Policy]:
    """The faster variants of ``passing`` to try, best first: packed where the target and torch
    run the packed layout, then fused attention on padded batches."""
    if passing.is_full_precision or passing.layout == "packed":
        return []
    from fp16guard.models.varlen import varlen_kernel

    candidates = []
    if target.supports_packing and varlen_kernel() is not None:
        candidates.append(fast_variant(passing, packed=True))
    if not passing.fast_attention:
        candidates.append(fast_variant(passing))
    return candidates


def _try_fast(run: ValidationRun, passing: Policy | None) -> Tried | None:
    """Run the fast variant of the policy that passed (the first candidate this model and
    device can run) and add it to the run; return it when it passes too and is resolvably
    faster in steady state on a GPU (the recommended policy), else None."""
    if passing is None:
        return None
    fast = None
    for variant in _fast_candidates(run.runner.target, passing):
        try:
            fast = run.judge(variant, role="fast")
            break
        except UnsupportedPolicyError as exc:
            run.runner.notes.append(f"fast variant {variant.name} not tried: {exc}")
    if fast is None:
        return None
    base = next(t for t in run.tried if t.attempt.role != "reference" and t.policy.name == passing.name)
    run.tried.append(fast)
    return fast if _recommendable(fast.attempt, base.attempt, run.runner.placement.device) else None


def _recommendable(attempt: Attempt, base: Attempt, device: torch.device) -> bool:
    """Whether ``attempt`` may be recommended over ``base``: it passed and is resolvably faster
    in steady state on a GPU. Says why in the attempt's notes, either way."""
    fast, slow = attempt.timing.get("tokens_per_second"), base.timing.get("tokens_per_second")
    ratio = fast / slow if fast and slow else None
    noise = (attempt.timing.get("spread") or 0.0) + (base.timing.get("spread") or 0.0)
    needed = max(FAST_MARGIN, 1.0 + noise)
    speed = "speed not measured" if ratio is None else f"{ratio:.2f}x the speed of '{base.name}'"
    if not attempt.passed:
        why = "it failed the threshold"
    elif device.type != "cuda" and not RECOMMEND_ON_CPU:
        why = f"{speed} on this CPU, but CPU timings do not predict GPU speed; validate on the GPU you deploy on"
    elif ratio is None or ratio < needed:
        why = f"{speed}, not resolvably faster (needs {needed:.2f}x: margin {FAST_MARGIN:.2f}x or the timings' spread)"
    else:
        attempt.notes.append(f"{speed} (steady state)")
        return True
    attempt.notes.append(f"not recommended: {why}")
    return False


def _recommend_searched(
    run: ValidationRun, passing: Policy, searched: Tried, recommended: Tried | None
) -> Tried | None:
    """When the ladder passed and --search found a policy with fewer FP32 islands that passes
    too: that policy, or its fast variant, is recommended instead of ``recommended`` (the
    ladder's own fast variant, or None) when it is resolvably faster than the ladder's passing
    policy and than ``recommended``."""
    device = run.runner.placement.device
    candidate = _try_fast(run, searched.policy) or searched
    base = next(t for t in run.tried if t.attempt.role == "attempt" and t.policy.name == passing.name)
    # Against the ladder's fast variant first, so that the last note (the summary's) is the
    # speed against the ladder's passing policy.
    if recommended is not None and not _recommendable(candidate.attempt, recommended.attempt, device):
        return recommended
    return candidate if _recommendable(candidate.attempt, base.attempt, device) else recommended


def check_compositions(run: ValidationRun, outcome: Outcome) -> None:
    """Packed attempts, and the one to be recommended, must give every sequence the embedding it
    gets alone: a layout defect fails the attempt, whatever its cosines, and ``outcome`` follows."""
    for tried in run.tried[1:]:
        attempt = tried.attempt
        if attempt.passed and (tried.policy.layout == "packed" or tried is outcome.recommended) \
                and attempt.role != "comparison":
            _check_composition(run, tried, outcome)


def _check_composition(run: ValidationRun, tried: Tried, outcome: Outcome) -> None:
    """Check ``tried``'s batch composition; on a defect fail it, and find ``outcome`` another
    passing policy (or none) and no recommendation where it was that one."""
    runner, inputs, policy, attempt = run.runner, run.runner.inputs, tried.policy, tried.attempt
    runner.progress.stage(f"{policy.name}: checking that batch composition does not change embeddings")
    check = check_composition(runner.target, inputs.loaded, policy, inputs.texts, inputs.lengths, inputs.ids,
                              runner.placement.device, inputs.layer, run.cosines.get(policy.name))
    attempt.composition = check
    if check["passed"]:
        return
    attempt.passed = False
    attempt.reason = f"batch composition changes embeddings: {check['defects'][0]}"
    runner.notes.append(
        f"{policy.name}: {len(check['defects'])} batch-composition defect(s): " + "; ".join(check["defects"][:3])
    )
    if outcome.recommended is tried:
        outcome.recommended = None
    if outcome.passing is not None and outcome.passing.name == policy.name:
        outcome.passing = next(
            (t.policy for t in run.tried[1:] if t.attempt.role == "attempt" and t.attempt.passed), None
        )


def run_comparisons(run: ValidationRun, policies: list[Policy]) -> None:
    """Judge the --try ``policies`` beside the ladder, for information only, and add them to the run."""
    for policy in policies:
        run.tried.append(run.judge(policy, role="comparison"))
