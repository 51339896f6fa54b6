"""compare(): verdict, reasons, worst sequences and summary numbers of pooled embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from fp16guard.core.config import Thresholds
from fp16guard.errors import Fp16GuardError, InputError, NonFiniteReferenceError
from fp16guard.numerics.compare import WORST_SHOWN, Comparison, compare
from fp16guard.numerics.metrics import TokenStats

NAN, INF = math.nan, math.inf


def embeddings(n: int = 6, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def ids_for(n: int) -> list[str]:
    return [f"seq{i}" for i in range(n)]


def rotated(v: torch.Tensor, cosine: float) -> torch.Tensor:
    """A vector of the same norm as ``v`` at exactly ``cosine`` to it (in float64)."""
    v = v.double()
    u = torch.zeros_like(v)
    # Any direction orthogonal to v.
    u[0], u[1] = -v[1], v[0]
    u = u / u.norm() * v.norm()
    return cosine * v + math.sqrt(1 - cosine**2) * u


# --------------------------------------------------------------------------- passing


def test_identical_embeddings_pass():
    ref = embeddings()
    result = compare(ref, ref.clone(), ids_for(6), Thresholds())
    assert isinstance(result, Comparison)
    assert result
    assert result.passed is True
    assert result.min_cosine == pytest.approx(1.0, abs=1e-12)
    assert result.mean_cosine == pytest.approx(1.0, abs=1e-12)
    assert result.below_threshold == 0
    assert result.nan_count == result.inf_count == 0
    assert result.max_abs_error == 0.0
    assert result.relative_l2_error == 0.0
    assert result.sequences == 6
    assert len(result.cosines) == 6
    assert result.threshold == 0.99
    assert result.margin == pytest.approx(0.01, abs=1e-12)
    assert "all 6 sequences" in result.reason


def test_identical_float16_candidate_of_float16_values_passes():
    ref = embeddings().half().float()
    result = compare(ref, ref.half(), ids_for(6), Thresholds(min_cosine=0.999999))
    assert result
    assert result.max_abs_error == 0.0


def test_identical_embeddings_pass_at_threshold_one():
    ref = torch.tensor([[0.1, 0.3, 0.7], [0.1, 0.1, 0.1]], dtype=torch.float64)
    assert compare(ref, ref.clone(), ["a", "b"], Thresholds(min_cosine=1.0))


# --------------------------------------------------------------------------- failing on cosine


def test_perturbed_row_below_threshold_fails():
    ref = embeddings(n=5).double()
    cand = ref.clone()
    cand[3] = rotated(ref[3], 0.95)
    cand[1] = rotated(ref[1], 0.995)  # close, but above the threshold
    ids = ["a", "b", "c", "d", "e"]
    result = compare(ref, cand, ids, Thresholds(min_cosine=0.99))
    assert not result
    assert result.passed is False
    assert result.below_threshold == 1
    assert result.worst[0][0] == "d"
    assert result.worst[0][1] == pytest.approx(0.95, abs=1e-9)
    assert result.worst[1][0] == "b"
    assert result.min_cosine == pytest.approx(0.95, abs=1e-9)
    assert result.margin == pytest.approx(0.95 - 0.99, abs=1e-9)
    assert result.margin < 0
    assert result.cosines[3] == pytest.approx(0.95, abs=1e-9)
    assert "1 of 5" in result.reason
    assert "d" in result.reason


def test_several_rows_below_threshold_counted():
    ref = embeddings(n=8).double()
    cand = ref.clone()
    for i, c in [(0, 0.5), (2, 0.9), (7, 0.98)]:
        cand[i] = rotated(ref[i], c)
    result = compare(ref, cand, ids_for(8), Thresholds(min_cosine=0.99))
    assert not result
    assert result.below_threshold == 3
    assert [w[0] for w in result.worst[:3]] == ["seq0", "seq2", "seq7"]
    assert len(result.worst) == WORST_SHOWN


def test_worst_list_is_capped_and_sorted():
    n = WORST_SHOWN + 4
    ref = embeddings(n=n).double()
    cosines = [0.999 - 0.01 * i for i in range(n)]
    cand = torch.stack([rotated(ref[i], c) for i, c in enumerate(cosines)])
    result = compare(ref, cand, ids_for(n), Thresholds(min_cosine=0.0))
    assert result
    assert len(result.worst) == WORST_SHOWN
    assert [w[0] for w in result.worst] == [f"seq{i}" for i in range(n - 1, n - 1 - WORST_SHOWN, -1)]
    values = [w[1] for w in result.worst]
    assert values == sorted(values)


def test_opposite_embeddings_fail_even_at_low_threshold():
    ref = embeddings()
    result = compare(ref, -ref, ids_for(6), Thresholds(min_cosine=-0.5))
    assert not result
    assert result.min_cosine == pytest.approx(-1.0, abs=1e-12)
    assert result.below_threshold == 6


# --------------------------------------------------------------------------- non-finite candidate


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nonfinite_candidate_row_fails_and_is_worst(bad):
    ref = embeddings(n=4).double()
    cand = ref.clone()
    cand[0] = rotated(ref[0], 0.5)  # finite but far worse on cosine than identity
    cand[2, 5] = bad
    result = compare(ref, cand, ["a", "b", "c", "d"], Thresholds())
    assert not result
    assert "NaN" in result.reason
    assert "1 of 4" in result.reason
    assert result.worst[0][0] == "c"
    assert math.isnan(result.worst[0][1])
    assert result.worst[1][0] == "a"
    assert math.isnan(result.cosines[2])
    # Summaries do not skip the non-finite row: they are NaN, with the count beside them.
    assert result.nonfinite_sequences == 1
    for summary in (result.min_cosine, result.mean_cosine, result.p1_cosine, result.max_abs_error,
                    result.relative_l2_error):
        assert math.isnan(summary)
    assert not result.margin >= 0
    assert (result.nan_count, result.inf_count) == ((1, 0) if math.isnan(bad) else (0, 1))
    # The NaN row counts as below the threshold.
    assert result.below_threshold == 2


def test_nan_in_one_sequence_of_three_makes_min_cosine_nan_and_is_worst():
    """Issue 12: a failing run with NaN in one sequence of three showed `min cos 1.000000`."""
    ref = embeddings(n=3)
    cand = ref.clone()
    cand[1, 4] = NAN
    result = compare(ref, cand, ["ok1", "bad", "ok2"], Thresholds())
    assert not result
    assert math.isnan(result.min_cosine) and math.isnan(result.mean_cosine)
    assert result.nonfinite_sequences == 1
    assert result.worst[0][0] == "bad" and math.isnan(result.worst[0][1])
    assert [i for i, _ in result.worst[1:]] == ["ok1", "ok2"]  # the finite rows follow, equal ones in input order
    data = result.to_dict()
    assert data["nonfinite_sequences"] == 1
    assert [c["id"] for c in data["cosines"]] == ["ok1", "bad", "ok2"]
    assert math.isnan(data["cosines"][1]["cosine"]) and data["cosines"][0]["cosine"] == 1.0


def test_several_nonfinite_rows_come_first_in_input_order():
    ref = embeddings(n=5)
    cand = ref.clone()
    cand[0] = rotated(ref[0], 0.2).float()
    cand[3, 0], cand[1, 0] = INF, NAN
    result = compare(ref, cand, ids_for(5), Thresholds())
    assert result.nonfinite_sequences == 2
    assert [i for i, _ in result.worst[:3]] == ["seq1", "seq3", "seq0"]


def test_hidden_state_nan_alone_also_makes_the_summaries_nan():
    ref = embeddings(n=3)
    result = compare(ref, ref.clone(), ids_for(3), Thresholds(), token_nonfinite=(2, 0))
    assert not result and result.nonfinite_sequences == 0
    assert math.isnan(result.min_cosine) and math.isnan(result.mean_cosine)


@pytest.mark.parametrize("cosine, threshold", [(0.99999985, 0.9999999), (0.99999994, 0.99999995)])
def test_reason_never_rounds_a_failing_cosine_up_to_the_threshold(cosine, threshold):
    """Issue 12: six decimals printed `worst seq2: 1.000000` for a sequence below 0.9999999."""
    ref = embeddings(n=3).double()
    cand = ref.clone()
    cand[2] = rotated(ref[2], cosine)
    result = compare(ref, cand, ids_for(3), Thresholds(min_cosine=threshold))
    assert not result
    shown = result.reason.split("seq2: ")[1].rstrip(")")
    assert shown.startswith("1-") and 1 - float(shown[2:]) < threshold, result.reason


def test_nan_candidate_fails_even_with_threshold_minus_one():
    ref = embeddings(n=3)
    cand = ref.clone()
    cand[1, 0] = NAN
    result = compare(ref, cand, ids_for(3), Thresholds(min_cosine=-1.0))
    assert not result
    assert "NaN" in result.reason


def test_all_rows_nan():
    ref = embeddings(n=3)
    cand = torch.full_like(ref, NAN)
    result = compare(ref, cand, ids_for(3), Thresholds())
    assert not result
    assert math.isnan(result.min_cosine)
    assert math.isnan(result.mean_cosine)
    assert math.isnan(result.p1_cosine)
    assert math.isnan(result.max_abs_error)
    assert math.isnan(result.relative_l2_error)
    assert result.nan_count == ref.numel()
    assert "3 of 3" in result.reason


def test_token_nonfinite_counts_override_pooled_counts():
    ref = embeddings(n=3)
    result = compare(ref, ref.clone(), ids_for(3), Thresholds(), token_nonfinite=(4, 2))
    # Hidden-state NaN/Inf fail the attempt even when the pooled rows are finite.
    assert not result
    assert (result.nan_count, result.inf_count) == (4, 2)
    assert "4 NaN" in result.reason and "2 Inf" in result.reason


def test_tokens_are_passed_through():
    ref = embeddings(n=2)
    stats = TokenStats(tokens=10, sequences=2, min_cosine=0.9, max_abs_error=0.1)
    result = compare(ref, ref.clone(), ids_for(2), Thresholds(), tokens=stats)
    assert result.tokens is stats
    assert compare(ref, ref.clone(), ids_for(2), Thresholds()).tokens is None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nonfinite_reference_raises(bad):
    ref = embeddings(n=4)
    ref[1, 3] = bad
    with pytest.raises(NonFiniteReferenceError) as info:
        compare(ref, embeddings(n=4), ["a", "b", "c", "d"], Thresholds())
    assert info.value.exit_code == 3
    assert isinstance(info.value, Fp16GuardError)
    assert "b" in str(info.value)
    assert "1 sequence" in str(info.value)


@pytest.mark.parametrize(
    "ref_shape, cand_shape, n_ids",
    [((3, 4), (3, 5), 3), ((3, 4), (2, 4), 3), ((3, 4), (3, 4), 2), ((3, 4), (3, 4), 4)],
)
def test_shape_mismatch_raises_value_error(ref_shape, cand_shape, n_ids):
    with pytest.raises(ValueError):
        compare(torch.ones(ref_shape), torch.ones(cand_shape), ids_for(n_ids), Thresholds())


# --------------------------------------------------------------------------- summary numbers


def test_p1_and_mean_cosine_known_example():
    cosines = [1.0, 0.9, 0.8, 0.7, 0.6]
    ref = embeddings(n=5).double()
    cand = torch.stack([rotated(ref[i], c) for i, c in enumerate(cosines)])
    result = compare(ref, cand, ids_for(5), Thresholds(min_cosine=0.5))
    assert result
    assert result.mean_cosine == pytest.approx(0.8, abs=1e-9)
    # 1st percentile, linear interpolation over sorted [0.6, 0.7, 0.8, 0.9, 1.0]:
    # position 0.01 * 4 = 0.04 -> 0.6 + 0.04 * 0.1.
    assert result.p1_cosine == pytest.approx(0.604, abs=1e-9)
    assert result.min_cosine == pytest.approx(0.6, abs=1e-9)
    assert result.margin == pytest.approx(0.1, abs=1e-9)
    assert list(result.cosines) == pytest.approx(cosines, abs=1e-9)


def test_error_metrics_known_example():
    ref = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    cand = torch.tensor([[3.0, 4.5], [0.0, 1.0]])
    result = compare(ref, cand, ["a", "b"], Thresholds(min_cosine=0.0))
    assert result.max_abs_error == pytest.approx(0.5)
    assert result.relative_l2_error == pytest.approx(0.5 / math.sqrt(26.0))


# --------------------------------------------------------------------------- thresholds


def test_threshold_near_one():
    ref = embeddings(n=3).double()
    close = ref.clone()
    close[2] = rotated(ref[2], 0.9999985)
    closer = ref.clone()
    closer[2] = rotated(ref[2], 0.9999995)
    strict = Thresholds(min_cosine=0.999999)
    assert not compare(ref, close, ids_for(3), strict)
    assert compare(ref, close, ids_for(3), Thresholds(min_cosine=0.99999))
    passed = compare(ref, closer, ids_for(3), strict)
    assert passed
    assert passed.margin > 0
    failed = compare(ref, close, ids_for(3), strict)
    assert failed.below_threshold == 1
    assert failed.worst[0][0] == "seq2"
    assert failed.margin == pytest.approx(-5e-7, abs=1e-10)
    assert passed.margin == pytest.approx(5e-7, abs=1e-10)


@pytest.mark.parametrize("value", [1.5, -1.0001, 2.0, -3.0, math.inf])
def test_threshold_out_of_range_raises(value):
    with pytest.raises(InputError) as info:
        Thresholds(min_cosine=value)
    assert info.value.exit_code == 2


def test_threshold_nan_raises():
    with pytest.raises(InputError):
        Thresholds(min_cosine=math.nan)


@pytest.mark.parametrize("value", [-1.0, 0.0, 0.99, 1.0])
def test_threshold_in_range_accepted(value):
    assert Thresholds(min_cosine=value).min_cosine == value
