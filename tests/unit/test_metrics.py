"""Pure tensor metrics: cosine_rows, count_nonfinite, masked_mean, percentile, TokenStats."""

from __future__ import annotations

import math

import pytest
import torch

from fp16guard.numerics.metrics import TokenStats, cosine_rows, count_nonfinite, masked_mean, percentile

NAN, INF = math.nan, math.inf


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


# --------------------------------------------------------------------------- cosine_rows


def test_cosine_known_answers():
    ref = t([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 1.0, 0.0]])
    cand = t([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [30.0, 40.0, 0.0], [1.0, 0.0, 0.0]])
    cos = cosine_rows(ref, cand)
    assert cos.dtype == torch.float64
    assert cos.shape == (5,)
    assert cos[0].item() == pytest.approx(1.0, abs=1e-12)  # identical
    assert cos[1].item() == pytest.approx(-1.0, abs=1e-12)  # opposite
    assert cos[2].item() == 0.0  # orthogonal
    assert cos[3].item() == pytest.approx(1.0, abs=1e-12)  # scaled
    assert cos[4].item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_cosine_stays_within_minus_one_and_one():
    torch.manual_seed(0)
    a = torch.randn(200, 33)
    for b in (a, 7.5 * a, -a, a * 1e-20, a * 1e20):
        cos = cosine_rows(a, b)
        assert torch.all(cos <= 1.0) and torch.all(cos >= -1.0)


def test_cosine_zero_rows():
    ref = t([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    cand = t([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    cos = cosine_rows(ref, cand)
    assert cos.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("side", ["reference", "candidate"])
def test_cosine_nonfinite_row_is_nan_only_for_that_row(bad, side):
    ref = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    cand = ref.clone()
    target = ref if side == "reference" else cand
    target[1, 0] = bad
    cos = cosine_rows(ref, cand)
    assert math.isnan(cos[1].item())
    assert cos[0].item() == pytest.approx(1.0, abs=1e-12)
    assert cos[2].item() == pytest.approx(1.0, abs=1e-12)


def test_cosine_float16_input_computed_in_float64():
    # Values whose squares overflow float16 (max 65504) still give a finite cosine.
    ref = t([[300.0, 400.0]], torch.float16)
    cand = t([[600.0, 800.0]], torch.float16)
    cos = cosine_rows(ref, cand)
    assert cos.item() == pytest.approx(1.0, abs=1e-12)


def test_cosine_batched_leading_dims():
    ref = torch.ones(2, 3, 4)
    cand = -torch.ones(2, 3, 4)
    cos = cosine_rows(ref, cand)
    assert cos.shape == (2, 3)
    assert torch.allclose(cos, torch.full((2, 3), -1.0, dtype=torch.float64))


# --------------------------------------------------------------------------- count_nonfinite


def test_count_nonfinite():
    x = t([[1.0, NAN, INF], [-INF, NAN, NAN], [0.0, 2.0, 3.0]])
    assert count_nonfinite(x) == (3, 2)
    assert count_nonfinite(torch.zeros(4, 5)) == (0, 0)
    assert count_nonfinite(x.half()) == (3, 2)
    nan, inf = count_nonfinite(x)
    assert isinstance(nan, int) and isinstance(inf, int)


# --------------------------------------------------------------------------- masked_mean


def test_masked_mean_excludes_padding():
    hidden = t(
        [
            [[1.0, 10.0], [3.0, 30.0], [1000.0, -1000.0]],  # last position is padding
            [[2.0, 4.0], [-5.0, 5.0], [77.0, 1e30]],  # only the first position is real
        ]
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = masked_mean(hidden, mask)
    assert out.shape == (2, 2)
    assert out.dtype == torch.float32
    assert out.tolist() == [[2.0, 20.0], [2.0, 4.0]]


def test_masked_mean_ignores_nonfinite_values_at_masked_positions():
    hidden = t([[[1.0, 10.0], [3.0, 30.0], [NAN, INF]], [[INF, -INF], [2.0, 4.0], [NAN, 0.0]]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    out = masked_mean(hidden, mask)
    assert out.tolist() == [[2.0, 20.0], [2.0, 4.0]]


def test_masked_mean_accumulates_in_float32_for_float16_input():
    # 4096 values of 60 sum to 245760 > 65504: a float16 running sum would overflow to inf.
    hidden = torch.full((1, 4096, 3), 60.0, dtype=torch.float16)
    hidden[0, :, 1] = 0.5
    mask = torch.ones(1, 4096, dtype=torch.bool)
    out = masked_mean(hidden, mask)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out[0].tolist() == pytest.approx([60.0, 0.5, 60.0], rel=1e-6)
    # Sanity: the float16 sum really would overflow.
    assert torch.isinf(hidden.sum(1, dtype=torch.float16)).any()


def test_masked_mean_precision_with_many_small_float16_values():
    # Float16 accumulation of 1 + 2048 * 1e-3 stalls; float32 does not.
    hidden = torch.full((1, 2049, 1), 1e-3, dtype=torch.float16)
    hidden[0, 0, 0] = 2048.0
    mask = torch.ones(1, 2049, dtype=torch.bool)
    expected = (2048.0 + 2048 * float(torch.tensor(1e-3, dtype=torch.float16))) / 2049
    assert masked_mean(hidden, mask).item() == pytest.approx(expected, rel=1e-5)


def test_masked_mean_fully_masked_row_is_zero_not_nan():
    hidden = torch.ones(1, 3, 2)
    mask = torch.zeros(1, 3, dtype=torch.bool)
    out = masked_mean(hidden, mask)
    assert out.tolist() == [[0.0, 0.0]]


# --------------------------------------------------------------------------- percentile


def test_percentile_known_answers():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 25) == 2.0
    assert percentile(values, 10) == pytest.approx(1.4)  # linear interpolation
    assert percentile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 50) == 2.5  # unsorted input
    assert percentile(torch.tensor([7.0]), 1) == 7.0
    assert isinstance(percentile(values, 50), float)


def test_percentile_empty_is_nan():
    assert math.isnan(percentile(torch.tensor([]), 1.0))
    assert math.isnan(percentile(torch.empty(0, dtype=torch.float64), 50.0))


def test_percentile_first_percentile_of_101_values():
    values = torch.arange(101, dtype=torch.float64).flip(0)
    assert percentile(values, 1.0) == pytest.approx(1.0)


# --------------------------------------------------------------------------- TokenStats


def _small_example():
    # B=2, T=3, D=2; positions [0,2] and [1,1], [1,2] are padding.
    reference = t(
        [
            [[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]],
            [[3.0, 4.0], [7.0, 7.0], [7.0, 7.0]],
        ]
    )
    candidate = t(
        [
            [[1.0, 1.0], [0.0, 2.0], [-99.0, 500.0]],
            [[3.0, 4.5], [NAN, NAN], [INF, 0.0]],
        ]
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return reference, candidate, mask


def test_token_stats_known_small_example():
    reference, candidate, mask = _small_example()
    stats = TokenStats.of_batch(reference, candidate, mask)
    assert stats.tokens == 3
    assert stats.sequences == 2
    assert stats.nonfinite_tokens == 0
    # Token cosines: [1,0]·[1,1] -> 1/sqrt2, identical -> 1, [3,4]·[3,4.5] -> 27/(5*sqrt(29.25)).
    cos_c = 27.0 / (5.0 * math.sqrt(29.25))
    assert stats.min_cosine == pytest.approx(min(1 / math.sqrt(2), cos_c), abs=1e-12)
    assert stats.min_cosine == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # Errors: [0,1], [0,0], [0,0.5].
    assert stats.max_abs_error == pytest.approx(1.0)
    assert stats.squared_error == pytest.approx(1.25)
    assert stats.squared_reference == pytest.approx(1.0 + 4.0 + 25.0)
    assert stats.relative_l2_error == pytest.approx(math.sqrt(1.25 / 30.0))


def test_token_stats_nonfinite_tokens_counted_and_excluded():
    reference, candidate, _ = _small_example()
    mask = torch.tensor([[True, True, False], [True, True, True]])  # now includes NaN and Inf tokens
    stats = TokenStats.of_batch(reference, candidate, mask)
    assert stats.tokens == 5
    assert stats.nonfinite_tokens == 2
    assert math.isfinite(stats.min_cosine)
    assert stats.min_cosine == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert stats.max_abs_error == pytest.approx(1.0)
    # Reference of the excluded tokens is not in the denominator either.
    assert stats.squared_reference == pytest.approx(30.0)
    assert stats.squared_error == pytest.approx(1.25)


def test_token_stats_all_nonfinite():
    reference = torch.ones(1, 2, 3)
    candidate = torch.full((1, 2, 3), NAN)
    stats = TokenStats.of_batch(reference, candidate, torch.ones(1, 2, dtype=torch.bool))
    assert stats.nonfinite_tokens == 2
    assert stats.tokens == 2
    assert stats.min_cosine == math.inf
    assert math.isnan(stats.max_abs_error)
    assert math.isnan(stats.relative_l2_error)


def test_token_stats_float16_candidate():
    reference = t([[[300.0, 400.0]]])
    candidate = reference.half()
    stats = TokenStats.of_batch(reference, candidate, torch.ones(1, 1, dtype=torch.bool))
    assert stats.min_cosine == pytest.approx(1.0, abs=1e-12)
    assert stats.max_abs_error == 0.0
    assert stats.relative_l2_error == 0.0


def test_token_stats_merge_equals_concatenation():
    gen = torch.Generator().manual_seed(1)
    ref_a = torch.randn(3, 5, 4, generator=gen)
    ref_b = torch.randn(2, 5, 4, generator=gen)
    cand_a = ref_a + 0.1 * torch.randn(3, 5, 4, generator=gen)
    cand_b = ref_b + 0.3 * torch.randn(2, 5, 4, generator=gen)
    cand_b[0, 1, 2] = NAN
    cand_a[2, 0, 0] = INF
    mask_a = torch.rand(3, 5, generator=gen) > 0.3
    mask_b = torch.rand(2, 5, generator=gen) > 0.3
    mask_a[2, 0] = mask_b[0, 1] = True
    merged = TokenStats.of_batch(ref_a, cand_a, mask_a) + TokenStats.of_batch(ref_b, cand_b, mask_b)
    whole = TokenStats.of_batch(
        torch.cat([ref_a, ref_b]), torch.cat([cand_a, cand_b]), torch.cat([mask_a, mask_b])
    )
    assert merged.tokens == whole.tokens == int(mask_a.sum() + mask_b.sum())
    assert merged.sequences == whole.sequences == 5
    assert merged.nonfinite_tokens == whole.nonfinite_tokens == 2
    assert merged.min_cosine == whole.min_cosine
    assert merged.max_abs_error == whole.max_abs_error
    assert merged.squared_error == pytest.approx(whole.squared_error, rel=1e-12)
    assert merged.squared_reference == pytest.approx(whole.squared_reference, rel=1e-12)
    assert merged.relative_l2_error == pytest.approx(whole.relative_l2_error, rel=1e-12)


def test_token_stats_empty_is_identity_for_merge():
    reference, candidate, mask = _small_example()
    stats = TokenStats.of_batch(reference, candidate, mask)
    assert TokenStats() + stats == stats
    assert stats + TokenStats() == stats


def test_token_stats_merge_with_all_nonfinite_batch_keeps_finite_values():
    reference, candidate, mask = _small_example()
    good = TokenStats.of_batch(reference, candidate, mask)
    bad = TokenStats.of_batch(torch.ones(1, 1, 2), torch.full((1, 1, 2), NAN), torch.ones(1, 1, dtype=torch.bool))
    merged = bad + good
    assert merged.max_abs_error == good.max_abs_error
    assert merged.min_cosine == good.min_cosine
    assert merged.nonfinite_tokens == 1
    assert merged.tokens == good.tokens + 1


def test_token_stats_to_dict_summaries_are_nan_with_nonfinite_tokens():
    reference, candidate, _ = _small_example()
    mask = torch.tensor([[True, True, False], [True, True, True]])  # includes NaN and Inf tokens
    data = TokenStats.of_batch(reference, candidate, mask).to_dict()
    assert data["nonfinite_tokens"] == 2
    assert math.isnan(data["min_cosine"]) and math.isnan(data["max_abs_error"])
    assert math.isnan(data["relative_l2_error"])
    clean = TokenStats.of_batch(*_small_example()).to_dict()
    assert clean["min_cosine"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_segment_mean_sums_as_masked_mean_does_bit_for_bit():
    """Packed pooling lays tokens out as rows and sums along them (no scatter-add, whose
    atomics make CUDA results vary run to run): the same bits as padded pooling."""
    import torch

    from fp16guard.numerics.metrics import masked_mean, segment_mean

    generator = torch.Generator().manual_seed(3)
    lengths = [7, 1, 300, 42, 5]
    segments = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    hidden = torch.randn(sum(lengths), 16, generator=generator, dtype=torch.float64).half()
    mask = torch.rand(sum(lengths), generator=generator) > 0.2
    hidden[3, 2] = float("inf")  # in sequence 0 only
    rows = torch.zeros(len(lengths), max(lengths), 16, dtype=torch.float16)
    keep = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    start = 0
    for row, n in enumerate(lengths):
        rows[row, :n], keep[row, :n] = hidden[start : start + n], mask[start : start + n]
        start += n
    packed, padded = segment_mean(hidden, mask, segments, len(lengths)), masked_mean(rows, keep)
    assert torch.equal(packed[1:], padded[1:])
    # Given each token's column and the longest sequence (as a pack knows them), the same bits.
    columns = torch.cat([torch.arange(n) for n in lengths])
    told = segment_mean(hidden, mask, segments, len(lengths), max(lengths), columns)
    assert torch.equal(told[1:], packed[1:]) and (torch.isinf(told[0]) == torch.isinf(packed[0])).all()
    assert torch.isfinite(packed[1:]).all() and (torch.isinf(packed[0]) == torch.isinf(padded[0])).all()
