"""The pooled-cache hit-rate oracle on sequences small enough to count by hand."""

from __future__ import annotations

import pytest

from kvroute_bench.cache_bound import pooled_cache_hit_rate
from kvroute_bench.workload import BenchRequest


def _r(i: int, prompt: tuple[int, ...], adapter: str | None = None) -> BenchRequest:
    return BenchRequest(f"r{i}", float(i), prompt, 1, adapter)


A = tuple(range(8))  # two 4-token blocks
B = tuple(range(100, 108))


@pytest.mark.parametrize(
    ("requests", "capacity", "hits", "queries"),
    [
        # A, then A again: the cacheable part of an 8-token prompt is its first 7 tokens, so
        # only block 0 (4 tokens) can hit. (The last prompt token is always recomputed.)
        ([_r(0, A), _r(1, A)], None, 4, 16),
        # A + 1 extra token: now both full blocks are cacheable, and both hit on the repeat.
        ([_r(0, (*A, 9)), _r(1, (*A, 9))], None, 8, 18),
        # capacity 1 block: B evicts A's block, so the third request misses.
        ([_r(0, A), _r(1, B), _r(2, A)], 1, 0, 24),
        # capacity 2 blocks: A's block survives B.
        ([_r(0, A), _r(1, B), _r(2, A)], 2, 4, 24),
        # same tokens under another adapter never hit (the key is rooted at the adapter).
        ([_r(0, A, "x"), _r(1, A, "y")], None, 0, 16),
    ],
    ids=["repeat", "repeat-two-blocks", "evicted", "fits", "adapters-differ"],
)
def test_pooled_cache_hits(
    requests: list[BenchRequest], capacity: int | None, hits: int, queries: int
) -> None:
    bound = pooled_cache_hit_rate(requests, capacity_blocks=capacity, block_size=4)
    assert (bound.hits, bound.queries) == (hits, queries)
    assert bound.hit_rate == pytest.approx(hits / queries)
