"""ddmin over sets of blocks, with a stand-in evaluation that knows the culprits."""

import pytest

from fp16guard.search import search_fp32_blocks


@pytest.mark.parametrize(
    "blocks, culprits",
    [(33, {17}), (33, {1, 33}), (12, {3, 4, 9}), (6, {2, 5}), (1, {1}), (48, set(range(1, 49, 7)))],
)
def test_search_returns_exactly_the_blocks_that_must_stay_fp32(blocks, culprits):
    calls = []

    def evaluate(policy):
        calls.append(policy.fp32_blocks)
        return culprits <= set(policy.fp32_blocks)

    result = search_fp32_blocks(evaluate, blocks)
    assert set(result.policy.fp32_blocks) == culprits
    assert result.forward_passes == len(calls) == len(set(calls))  # no set evaluated twice
    if len(culprits) == 1:
        assert result.forward_passes <= 2 * blocks.bit_length() + 2  # logarithmic, not linear


def test_search_reports_when_no_set_of_blocks_passes():
    result = search_fp32_blocks(lambda policy: False, 8)
    assert result.policy is None and result.forward_passes == 1
