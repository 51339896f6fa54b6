"""The workflow: FP32 reference, the fallback ladder of attempts, and the verdict as a Report."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from fp16guard.core.config import ModelSource, ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.core.versions import fp16guard_version
from fp16guard.errors import Fp16GuardError, InputError, UnsupportedPolicyError
from fp16guard.execution import distributed
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.budget import auto_max_tokens
from fp16guard.execution.composition import check_composition
from fp16guard.execution.devices import environment, resolve_placement
from fp16guard.execution.runner import RunResult, Timing
from fp16guard.io.reference import (
    SavedReference,
    library_versions,
    load_reference,
    reference_metadata,
    save_reference,
)
from fp16guard.io.sequences import (
    SequenceSet,
    bundled_path,
    read_fasta,
    some_ids,
)
from fp16guard.models import get_target
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.agreement import (
    BUNDLED_NEIGHBOURS,
    AgreementInputs,
    load_probe,
    read_labels,
)
from fp16guard.numerics.compare import Comparison, check_reference, compare
from fp16guard.numerics.policy import (
    FP16,
    FP32,
    LADDER,
    Policy,
    fast_variant,
    get_policy,
    with_class_fp32,
)
from fp16guard.numerics.precision import AppliedPolicy
from fp16guard.report.document import Attempt, Report, finite_or_none
from fp16guard.workflows.inputs import vocabulary_notes, with_ambiguity_as_n
from fp16guard.workflows.search import search_fp32_islands


def _attempt(
    result: RunResult, reference: RunResult | None, comparison: Comparison | None, role: str = "attempt",
    comparable: bool = True,
) -> Attempt:
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


def _search(
    attempts: list[Attempt], notes: list[str], passes: Callable[[Policy], bool], judge: Callable[[Policy], Attempt], blocks: int
) -> Attempt | None:
    """Bisect for the fewest FP32 blocks on top of full FP16, then narrow each to its cheapest
    part that passes (``passes`` is the quick, untimed test); run what it found as a full
    attempt (``judge``)."""
    fp16 = next((a for a in attempts if a.role == "attempt" and a.name == FP16.name), None)
    if fp16 is None or fp16.passed:
        notes.append("search skipped: " + ("full FP16 passed" if fp16 else "full FP16 was not among the attempts"))
        return None
    found = search_fp32_islands(passes, blocks)
    if found.policy is None:
        notes.append(
            f"search: even every block in FP32 (inputs and outputs in FP16) fails, after {found.forward_passes} "
            f"forward passes in {found.seconds:.1f} s: the failure is in what connects the blocks (such as the "
            "residual stream), so a whole-model policy is needed"
        )
        return None
    attempt = judge(found.policy)
    fallback = next((a for a in attempts if a.role == "attempt" and a.passed), attempts[0])
    speed = attempt.timing["tokens_per_second"] or 0.0
    ratios = [f"{speed / a.timing['tokens_per_second']:.2f}x {a.name}" for a in (fp16, fallback) if a.timing.get("tokens_per_second")]
    attempt.notes.append(
        f"found by bisection in {found.forward_passes} forward passes ({found.seconds:.1f} s); speed {', '.join(ratios)}"
    )
    return attempt


#: The fast variant is recommended over the policy that passed only when at least this much
#: faster, and faster by more than the spread of the two steady timings, so that timing noise
#: does not swap policies (and a committed --save-policy file does not churn).
FAST_MARGIN = 1.05
#: CPU timings do not predict GPU speed: on a CPU the fast variant is validated and reported,
#: never recommended.
RECOMMEND_ON_CPU = False


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


def _try_fast(attempts: list[Attempt], notes: list[str], passing: Policy | None, judge: Callable[..., Attempt],
              target: Target, device: torch.device) -> Attempt | None:
    """Run the fast variant of the policy that passed (the first candidate this model and
    device can run); return its attempt when it passes too and is resolvably faster in steady
    state on a GPU (the recommended policy), else None."""
    if passing is None:
        return None
    attempt = None
    for variant in _fast_candidates(target, passing):
        try:
            attempt = judge(variant, role="fast")
            break
        except UnsupportedPolicyError as exc:
            notes.append(f"fast variant {variant.name} not tried: {exc}")
    if attempt is None:
        return None
    base = next(a for a in attempts if a.role != "reference" and a.name == passing.name)
    attempts.append(attempt)
    return attempt if _recommendable(attempt, base, device) else None


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


def _recommend_searched(attempts: list[Attempt], notes: list[str], passing: Policy, searched: Attempt,
                        recommended: Attempt | None, judge: Callable[..., Attempt], target: Target,
                        device: torch.device) -> Attempt | None:
    """When the ladder passed and --search found a policy with fewer FP32 islands that passes
    too: that policy, or its fast variant, is recommended instead of ``recommended`` (the
    ladder's own fast variant, or None) when it is resolvably faster than the ladder's passing
    policy and than ``recommended``."""
    found = Policy.from_dict(searched.policy)
    candidate = _try_fast(attempts, notes, found, judge, target, device) or searched
    base = next(a for a in attempts if a.role == "attempt" and a.name == passing.name)
    # Against the ladder's fast variant first, so that the last note (the summary's) is the
    # speed against the ladder's passing policy.
    if recommended is not None and not _recommendable(candidate, recommended, device):
        return recommended
    return candidate if _recommendable(candidate, base, device) else recommended


def token_budget(
    config: ValidationConfig, loaded: LoadedModel, device: torch.device, length: int, saved: SavedReference | None
) -> tuple[int, str]:
    """Tokens per batch and where the number came from: --max-tokens, the saved reference's own
    (so that a rerun replays its batches), or derived from free memory (``length``: the longest
    padded sequence)."""
    if config.max_tokens is not None:
        return config.max_tokens, "--max-tokens"
    if saved is not None and saved.meta.get("max_tokens"):
        return int(saved.meta["max_tokens"]), f"the budget of the saved reference {saved.path}, so that its batches are replayed"
    # With --profile the FP32 and FP16 models are on the device together.
    return auto_max_tokens(loaded.module, loaded.num_parameters, device, length, 1.5 if config.profile else 1.0)


def policies_to_try(config: ValidationConfig) -> list[Policy]:
    """The ladder, or the policies the user named."""
    if config.policies is None:
        return list(LADDER)
    return [get_policy(p) for p in config.policies]


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


def prepare_inputs(
    target: Target, target_name: str, config: ValidationConfig, source: ModelSource, sequences: str | Path | None,
    device: torch.device, policies: list[Policy], saved: SavedReference | None, progress: Progress,
) -> Inputs:
    """Read the sequences, load the weights, truncate, agree on the token budget and build the
    batches; checks a saved reference against each as soon as it can."""
    seq_path = Path(sequences) if sequences else bundled_path(target.default_sequences)
    records: SequenceSet = read_fasta(seq_path, target.input_alphabet, "sequence")
    notes: list[str] = []
    records, note = with_ambiguity_as_n(target, records)
    if note:
        progress.warn(note)
        notes.append(note)
    if device.type == "cpu" and any(not p.is_full_precision for p in policies):
        message = "FP16 on CPU runs slowly and uses CPU kernels: fine for testing the workflow, but validate on the GPU you deploy on"
        progress.warn(message)
        notes.append(message)

    if saved is not None:  # before the weights load, which takes a while
        saved.check(target=target_name, dataset_sha256=records.sha256, versions=library_versions(target_name))
    progress.stage(f"loading {target_name} weights")
    loaded = target.load(source)
    for message in loaded.notes:  # such as a checkpoint's ignored decoder
        progress.warn(message)
        notes.append(message)
    for message in vocabulary_notes(target, loaded, records):
        progress.warn(message)
        notes.append(message)
    layer = loaded.num_layers if config.layer is None else config.layer
    if not 0 <= layer <= loaded.num_layers:
        raise InputError(f"--layer must be between 0 and {loaded.num_layers}, got {layer}")
    max_length = config.max_length or loaded.max_length
    if loaded.max_length is not None and not 1 <= max_length <= loaded.max_length:
        raise InputError(f"--max-length must be between 1 and {loaded.max_length} tokens for {loaded.name}")

    ids = [r.id for r in records.records]
    texts = [r.sequence for r in records.records]
    lengths = target.measure(loaded, texts)
    truncated = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
    for i in truncated:
        texts[i] = target.truncate(loaded, texts[i], max_length)
        lengths[i] = max_length
    if truncated:
        message = f"{len(truncated)} sequence(s) longer than {max_length} tokens were truncated: {some_ids([ids[i] for i in truncated])}"
        progress.warn(message)
        notes.append(message + " (listed under dataset.truncated)")
    if saved is not None:
        saved.check(weights_sha256=loaded.weights_sha256, layer=layer, pooling=source.pooling, max_length=max_length, ids=ids)
    max_tokens, budget_reason = token_budget(config, loaded, device, max(lengths) + target.special_tokens_per_row, saved)
    agreed = distributed.smallest(max_tokens, "agreeing on the token budget")
    if agreed != max_tokens:  # every rank must form the same batches
        max_tokens, budget_reason = agreed, f"the smallest of the ranks' budgets ({budget_reason} on this rank)"
    batches = prepare_batches(target, loaded, texts, lengths, max_tokens)
    return Inputs(
        records=records, source=str(seq_path) if sequences else f"bundled:{seq_path.name}", loaded=loaded, layer=layer,
        max_length=max_length, ids=ids, texts=texts, lengths=lengths, truncated=truncated, max_tokens=max_tokens,
        budget_reason=budget_reason, batches=batches, notes=notes,
    )


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
    device, spread = resolve_placement(config.device)
    ref_device, ref_spread = resolve_placement(config.reference_device) if config.reference_device else (device, spread)
    comparable = (ref_device, ref_spread) == (device, spread)
    if config.reference and config.save_reference:
        raise InputError("use either --reference or --save-reference, not both")
    saved = load_reference(config.reference) if config.reference else None

    inputs = prepare_inputs(target, target_name, config, source, sequences, device, policies, saved, progress)
    records, loaded, layer, max_length = inputs.records, inputs.loaded, inputs.layer, inputs.max_length
    if config.policies is None and loaded.keep_in_fp32_modules:
        # Both ways of loading in FP16: .half() (fp16) and from_pretrained's (fp16+keep32).
        policies = with_class_fp32(policies)
    ids, texts, batches, max_tokens = inputs.ids, inputs.texts, inputs.batches, inputs.max_tokens
    notes = inputs.notes
    # The user's probe and labels are read before any pass, so a bad file fails in seconds.
    labels = tuple(read_labels(config.labels, ids)) if config.labels else None
    if config.probe:
        load_probe(config.probe, None)

    def run(policy: Policy, reference: RunResult | None = None, keep: int = 0, on=(device, spread)) -> RunResult:
        progress.stage(f"{policy.name}: building the model ({policy.describe()})")
        try:
            result = distributed.run_policy(
                target, loaded, policy, batches, len(texts), on[0], layer, progress, reference, keep, spread=on[1],
                repeat=True if config.careful_timing else None,
            )
        except torch.OutOfMemoryError:
            raise Fp16GuardError(
                f"out of GPU memory under {policy.name}, with batches split down to single sequences; "
                f"lower --max-length or --max-tokens (now {max_tokens})"
            ) from None
        if result.oom_splits:
            message = f"{policy.name}: {result.oom_splits} batch(es) ran out of GPU memory and were split in half; no sequence was lost (a lower --max-tokens avoids the retries)"
            progress.warn(message)
            notes.append(message)
        return result

    env = distributed.environment(environment(device))
    if saved is None:
        reference = run(FP32, keep=config.token_reference_budget_bytes, on=(ref_device, ref_spread))
        if not comparable:
            notes.append(
                f"the FP32 reference ran on {reference.placement}, the attempts on {'GPUs (spread)' if spread else device}: "
                "speed-up and memory ratio against FP32 are not reported"
            )
        covered = reference.kept_sequences
        if covered < len(texts):
            notes.append(
                f"per-token metrics cover {covered} of {len(texts)} sequences (the FP32 token states "
                "kept for them are capped in memory); pooled metrics cover all"
            )
    else:
        reference = saved_reference_result(saved, len(batches))
        notes.append(
            f"FP32 reference loaded from {saved.path}, not computed: per-token metrics are skipped (a saved "
            "reference holds pooled embeddings only); pooled metrics and the NaN/Inf scan of every hidden state still run"
        )
    # The reference is checked before any attempt: a NaN there is an error, not a pass.
    check_reference(reference.pooled, ids)
    world = distributed.current()
    if config.save_reference and (world is None or world.main):  # every rank holds the same reference
        save_reference(
            config.save_reference, reference.pooled, ids,
            reference_metadata(
                timing=asdict(reference.timing), peak_memory_bytes=reference.peak_memory_bytes, target=target_name, model=loaded.name, weights_sha256=loaded.weights_sha256,
                dataset=records.name, dataset_sha256=records.sha256, layer=layer, pooling=source.pooling,
                max_length=max_length, max_tokens=max_tokens, environment=env,
            ),
        )
    attempts = [_attempt(reference, None, None)]
    if saved is not None:
        same_device = describe_saved_reference(saved, attempts[0], env, notes)
    agreement = AgreementInputs(
        probe=load_probe(config.probe, reference.pooled.shape[1]) if config.probe else None,
        labels=labels,
        fp64=_fp64_floor(target, loaded, inputs, reference, config, device, progress, notes) if config.fp64_floor else None,
    )
    bundled = BUNDLED_NEIGHBOURS.get(inputs.source.removeprefix("bundled:")) if inputs.source.startswith("bundled:") else None
    if bundled:
        notes.append(f"Neighbour metrics: {bundled} (data/README.md)")
    if labels is not None and None in labels:
        notes.append(f"--labels: {sum(label is None for label in labels)} of {len(ids)} sequences have no label; "
                     "nearest-centroid accuracy covers the labelled ones")
    passing: Policy | None = None

    cosines: dict[str, tuple[float, ...]] = {}

    def judge(policy: Policy, role: str = "attempt") -> Attempt:
        """A full, timed attempt compared with the reference."""
        result = run(policy, reference)
        comparison = compare(
            reference.pooled, result.pooled, ids, config.thresholds, result.token_stats, result.token_nonfinite, agreement
        )
        cosines[policy.name] = comparison.cosines
        return _attempt(result, reference, comparison, role, comparable)

    def passes(policy: Policy) -> bool:
        """An untimed pass, for the search: does ``policy`` meet the threshold?"""
        progress.stage(f"search: {policy.describe()}")
        result = distributed.run_policy(target, loaded, policy, batches, len(ids), device, layer, measure=False, spread=spread)
        return bool(compare(reference.pooled, result.pooled, ids, config.thresholds, token_nonfinite=result.token_nonfinite,
                            agreement=agreement))

    for index, policy in enumerate(policies):
        attempts.append(judge(policy))
        if config.profile:
            progress.stage(f"{policy.name}: profiling every layer against FP32")
            # Per-block hooks see padded rows: a packed policy is profiled on its padded twin.
            profiled = replace(policy, layout="padded")
            attempts[-1].layers = finite_or_none(distributed.profile_policy(target, loaded, profiled, batches, device, layer))
        if attempts[-1].passed:
            passing = passing or policy
        # fp16 and fp16+keep32 are the two FP16 models users get: both run before stopping.
        paired = index + 1 < len(policies) and policy == FP16 and policies[index + 1].keep_in_fp32_modules
        if passing and config.stop_at_first_pass and not paired:
            break

    searched = None
    if config.search:
        searched = _search(attempts, notes, passes, judge, len(target.blocks(loaded.module)))
        if searched is not None:
            attempts.append(searched)
            if searched.passed and passing is None:
                passing = Policy.from_dict(searched.policy)

    # Only after the ladder or the search: --policy/--no-fallback test just what was named.
    recommended = _try_fast(attempts, notes, passing, judge, target, device) if config.policies is None else None
    if config.policies is None and searched is not None and searched.passed and passing is not None \
            and searched.name != passing.name:
        recommended = _recommend_searched(attempts, notes, passing, searched, recommended, judge, target, device)

    # Packed attempts, and the policy that will be recommended, must give every sequence the
    # embedding it gets alone: a layout defect fails the attempt, whatever its cosines.
    for attempt in attempts[1:]:
        policy = Policy.from_dict(attempt.policy)
        if attempt.passed and (policy.layout == "packed" or attempt is recommended) and attempt.role != "comparison":
            progress.stage(f"{policy.name}: checking that batch composition does not change embeddings")
            check = check_composition(target, loaded, policy, texts, inputs.lengths, ids, device, layer, cosines.get(policy.name))
            attempt.composition = check
            if not check["passed"]:
                attempt.passed = False
                attempt.reason = f"batch composition changes embeddings: {check['defects'][0]}"
                notes.append(f"{policy.name}: {len(check['defects'])} batch-composition defect(s): " + "; ".join(check["defects"][:3]))
                if recommended is attempt:
                    recommended = None
                if passing is not None and passing.name == policy.name:
                    passing = next((Policy.from_dict(a.policy) for a in attempts[1:] if a.role == "attempt" and a.passed), None)

    for policy in extras:
        attempts.append(judge(policy, role="comparison"))

    reference.token_states.clear()
    if saved is not None and not same_device:
        for attempt in attempts[1:]:
            attempt.speedup_vs_fp32 = attempt.memory_ratio_vs_fp32 = None
    if passing:
        summary = f"PASS: {loaded.name} meets the threshold under policy '{passing.name}' ({passing.describe()})."
        if recommended is not None:
            summary += f" Recommended: '{recommended.name}' ({recommended.description}), which also passes, {recommended.notes[-1]}."
    else:
        tried = ", ".join(p.name for p in policies)
        # --try policies are information only: one that passed is mentioned, never the verdict.
        informative = [a.name for a in attempts if a.role == "comparison" and a.passed]
        if config.policies is None:  # the ladder ran, and every rung failed
            summary = f"FAIL: no policy met the threshold ({tried} tried)"
            summary += "." if informative else "; keep this model in FP32."
        elif [p.name for p in policies] == [FP16.name]:  # --no-fallback, or --policy fp16
            summary = "FAIL: full FP16 did not meet the threshold; fallbacks were not tried (--no-fallback or --policy)."
        else:
            summary = (
                f"FAIL: {'policy' if len(policies) == 1 else 'policies'} {tried} did not meet the threshold; the "
                "fallback ladder was not tried (run without --policy to try it)."
            )
        if informative:
            summary += (
                f" --try {', '.join(informative)} passed, for information only (validate with --policy "
                f"{informative[0]} to gate on it)."
            )
    return Report(
        tool={"name": "fp16guard", "version": fp16guard_version()},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        environment=env,
        model={
            "target": target_name,
            "name": loaded.name,
            "source": loaded.source,
            "parameters": loaded.num_parameters,
            "weights_sha256": loaded.weights_sha256,
            "layer": layer,
            "num_layers": loaded.num_layers,
        },
        dataset={
            "name": records.name,
            "source": inputs.source,
            "sha256": records.sha256,
            "sequences": len(records),
            "lengths": records.length_stats(),
            "max_length": max_length,
            "truncated": [ids[i] for i in inputs.truncated],
            "max_tokens": max_tokens,
            "max_tokens_reason": inputs.budget_reason,
            "batches": len(batches),
        },
        thresholds={
            "min_cosine": config.thresholds.min_cosine, "allow_nonfinite": False,
            "min_knn_overlap": config.thresholds.min_knn_overlap,
            "min_rank_correlation": config.thresholds.min_rank_correlation,
        },
        attempts=attempts,
        passed=passing is not None,
        passing_policy=passing.name if passing else None,
        recommended_policy=recommended.name if recommended else (passing.name if passing else None),
        summary=summary,
        notes=notes,
    )


def _fp64_floor(target: Target, loaded: LoadedModel, inputs: Inputs, reference: RunResult, config: ValidationConfig,
                device: torch.device, progress: Progress, notes: list[str]):
    """The FP64 pass over a sample (fp16guard.execution.floor), or None with a note when this model cannot
    run in FP64."""
    from fp16guard.execution.floor import fp64_floor, sample_rows

    rows = sample_rows(inputs.lengths, config.fp64_floor)
    progress.stage(f"FP64 floor: embedding {len(rows)} sequences in FP64 to measure FP32's own error")
    try:
        floor = fp64_floor(target, loaded, inputs.texts, inputs.lengths, rows, reference.pooled, device, inputs.layer,
                           inputs.max_tokens)
    except RuntimeError as exc:  # a model whose code cannot run in FP64 (a fixed-dtype kernel)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"FP64 floor not measured: {loaded.name} does not run in FP64 here ({first[:200]})"
        progress.warn(message)
        notes.append(message)
        return None
    notes.append(
        f"FP64 floor: {len(rows)} sequences embedded in FP64 on {floor.device} in {floor.seconds:.1f} s; FP32's own "
        f"relative error against FP64 is {floor.fp32_error:.2e} (min cosine {floor.fp32_min_cosine:.10f}); each "
        "attempt's error is given as a multiple of it"
    )
    return floor




def describe_saved_reference(saved: SavedReference, attempt: Attempt, environment: dict, notes: list[str]) -> bool:
    """Mark the report's reference ``attempt`` as loaded from ``saved``, and add to ``notes``
    how its timing compares; True when it was computed on the same kind of device."""
    meta = saved.meta
    attempt.source = str(saved.path)
    attempt.reason = f"FP32 reference loaded from {saved.path}"
    where = f"{meta.get('device_name')} ({meta.get('device')})"
    attempt.notes.append(f"computed {meta.get('created')} on {where}; timing and peak memory are that run's")
    same = meta.get("device_name") == environment.get("device_name") and str(meta.get("device", "")).split(":")[0] == str(
        environment.get("device", "")
    ).split(":")[0]
    if same:
        notes.append(f"speed-ups and memory ratios compare with the FP32 timing and peak memory saved in {saved.path}")
    else:
        notes.append(
            f"the saved FP32 reference was computed on {where}, this run on {environment.get('device_name')} "
            f"({environment.get('device')}): its embeddings stand (FP32 differs between devices by rounding only), "
            "but speed-ups and memory ratios against it are not reported"
        )
    return same


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
