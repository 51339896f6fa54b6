"""The smallest set of transformer blocks to keep in FP32, found by bisection.

Delta debugging (Zeller's ddmin) over arbitrary subsets of blocks, not just prefixes: start
from every block in FP32, and keep removing chunks, halving the chunk size when no chunk can
go, until no single block can be removed without failing. Each test is one forward pass over
the reference set, compared with the FP32 reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .policy import FP16, Policy


@dataclass
class SearchResult:
    """The minimal passing policy (None if even every block in FP32 fails) and its cost."""

    policy: Policy | None
    forward_passes: int
    seconds: float
    trials: list[tuple[tuple[int, ...], bool]] = field(default_factory=list)


def search_fp32_blocks(evaluate: Callable[[Policy], bool], num_blocks: int, base: Policy = FP16) -> SearchResult:
    """Find a 1-minimal set of FP32 blocks on top of ``base`` (assumed to fail on its own)."""
    start = time.perf_counter()
    results: dict[tuple[int, ...], bool] = {(): False}
    trials: list[tuple[tuple[int, ...], bool]] = []

    def policy_for(blocks: tuple[int, ...]) -> Policy:
        return replace(base, name=f"{base.name}+blocks32", fp32_blocks=blocks)

    def passes(blocks: tuple[int, ...]) -> bool:
        if blocks not in results:
            results[blocks] = evaluate(policy_for(blocks))
            trials.append((blocks, results[blocks]))
        return results[blocks]

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
    return SearchResult(policy_for(items), len(trials), time.perf_counter() - start, trials)
