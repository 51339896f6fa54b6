"""ddmin over sets of blocks, with a stand-in evaluation that knows the culprits."""

import pytest

from fp16guard.workflows.validate.search import search_fp32_islands


@pytest.mark.parametrize(
    "blocks, culprits",
    [(33, {17}), (33, {1, 33}), (12, {3, 4, 9}), (6, {2, 5}), (1, {1}), (48, set(range(1, 49, 7)))],
)
def test_search_returns_exactly_the_blocks_that_must_stay_fp32(blocks, culprits):
    calls = []

    def evaluate(policy):
        calls.append(policy.fp32_blocks)
        return culprits <= set(policy.fp32_blocks)

    result = search_fp32_islands(evaluate, blocks, kinds=())
    assert set(result.policy.fp32_blocks) == culprits
    assert result.forward_passes == len(calls) == len(set(calls))  # no set evaluated twice
    if len(culprits) == 1:
        assert result.forward_passes <= 2 * blocks.bit_length() + 2  # logarithmic, not linear


def test_search_reports_when_no_set_of_blocks_passes():
    result = search_fp32_islands(lambda policy: False, 8)
    assert result.policy is None and result.forward_passes == 1


def test_search_narrows_each_block_to_the_cheapest_part_that_passes():
    # Block 3 needs its MLP, block 7 its layer norms, block 5 everything.
    needs = {3: {"mlp"}, 7: {"layer_norm", "attention", "mlp"}, 5: set()}

    def evaluate(policy):
        parts = set(policy.fp32_parts)
        return all(b in policy.fp32_blocks or any((k, b) in parts for k in kinds) if kinds else b in policy.fp32_blocks
                   for b, kinds in needs.items())

    result = search_fp32_islands(evaluate, 8)
    assert result.policy.fp32_blocks == (5,)
    assert result.policy.parts_by_kind() == {"layer_norm": [7], "mlp": [3]}
    tried = [p for p, _ in result.trials]
    assert len(tried) == len({(p.fp32_blocks, p.fp32_parts) for p in tried}) == result.forward_passes
    # Block 5 tried all three kinds and kept the whole block; block 3 stopped at the MLP.
    assert sum(1 for p in tried if 5 not in p.fp32_blocks and any(b == 5 for _, b in p.fp32_parts)) == 3
