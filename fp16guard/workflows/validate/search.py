"""The smallest FP32 islands that make a failing model pass, found by bisection.

Two stages, each test one forward pass over the reference set compared with the FP32
reference:

1. Delta debugging (Zeller's ddmin) over arbitrary subsets of blocks, not just prefixes: start
   from every block in FP32 and keep removing chunks, halving the chunk size when no chunk can
   go, until no single block can be removed without failing.
2. For each block left, try its parts alone, cheapest first (``PART_KINDS``: layer norms,
   attention, MLP) in place of the whole block, and keep the first that passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fp16guard.numerics.policy import FP16, PART_KINDS, Policy


@dataclass
class SearchResult:
    """The minimal passing policy (None if even every block in FP32 fails) and its cost."""

    policy: Policy | None
    forward_passes: int
    seconds: float
    trials: list[tuple[Policy, bool]] = field(default_factory=list)


def search_fp32_islands(
    evaluate: Callable[[Policy], bool], num_blocks: int, base: Policy = FP16, kinds: tuple[str, ...] = PART_KINDS
) -> SearchResult:
    """Find a 1-minimal set of FP32 blocks on top of ``base`` (assumed to fail on its own), then
    narrow each block to the cheapest of its ``kinds`` of part that still passes."""
    start = time.perf_counter()
    results: dict[tuple, bool] = {((), ()): False}
    trials: list[tuple[Policy, bool]] = []

    def policy_for(blocks: tuple[int, ...], parts: tuple[tuple[str, int], ...] = ()) -> Policy:
        return replace(base, name=f"{base.name}+islands32", fp32_blocks=blocks, fp32_parts=parts)

    def passes(blocks: tuple[int, ...], parts: tuple[tuple[str, int], ...] = ()) -> bool:
        key = (blocks, parts)
        if key not in results:
            policy = policy_for(blocks, parts)
            results[key] = evaluate(policy)
            trials.append((policy, results[key]))
        return results[key]

    items = tuple(range(1, num_blocks + 1))
    if not passes(items):
        return SearchResult(None, len(trials), time.perf_counter() - start, trials)
    granularity = 2
    while len(items) >= 2:
        size = -(-len(items) // granularity)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        for chunk in chunks:
            complement = tuple(b for b in items if b not in chunk)
            if passes(complement):
                items, granularity = complement, max(granularity - 1, 2)
                break
        else:
            if granularity >= len(items):
                break
            granularity = min(len(items), granularity * 2)

    blocks, parts = items, ()
    for block in items:
        rest = tuple(b for b in blocks if b != block)
        for kind in kinds:
            if passes(rest, parts + ((kind, block),)):
                blocks, parts = rest, parts + ((kind, block),)
                break
    return SearchResult(policy_for(blocks, parts), len(trials), time.perf_counter() - start, trials)
