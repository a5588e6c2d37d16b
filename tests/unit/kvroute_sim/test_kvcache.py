"""The block pool: capacity accounting, LRU eviction of unreferenced cached blocks, events."""

from __future__ import annotations

from kvroute_sim.kvcache import AllBlocksCleared, BlockPool, BlockRemoved


def _cache(pool: BlockPool, hashes: list[int]) -> None:
    """Allocate one block per hash and promote each (as a finished prefill would)."""
    assert pool.allocate(len(hashes))
    for h in hashes:
        assert pool.promote(h)


def test_allocation_fails_beyond_capacity_without_side_effects() -> None:
    pool = BlockPool(4)
    assert pool.allocate(3)
    assert not pool.allocate(2)
    assert pool.num_free == 1
    assert pool.usage() == 0.75


def test_released_cached_blocks_count_as_free_but_stay_findable() -> None:
    pool = BlockPool(4)
    _cache(pool, [1, 2])
    pool.release([1, 2], 0)
    assert pool.num_free == 4
    assert pool.usage() == 0.0
    assert pool.match([1, 2, 3], 10) == (2, 2)


def test_eviction_takes_clean_space_first_then_least_recently_freed() -> None:
    pool = BlockPool(4, record_events=True)
    _cache(pool, [1, 2])
    pool.release([1, 2], 0)  # freed tail first: 2 then 1 -> LRU order 2, 1
    _cache(pool, [3])
    pool.release([3], 0)
    assert pool.allocate(2)  # the one clean block, then evict the LRU cached block (2)
    assert pool.events == [BlockRemoved((2,))]
    assert pool.match([1], 1) == (1, 1)
    assert pool.match([2], 1) == (0, 0)


def test_acquire_pins_hits_out_of_the_evictable_set() -> None:
    pool = BlockPool(2)
    _cache(pool, [1, 2])
    pool.release([1, 2], 0)
    pool.acquire([1])
    assert pool.num_free == 1
    assert pool.allocate(1)  # evicts 2, never the pinned 1
    assert pool.match([1], 1) == (1, 0)


def test_duplicate_content_stays_uncached() -> None:
    pool = BlockPool(4)
    _cache(pool, [1])
    assert pool.allocate(1)
    assert not pool.promote(1)
    assert pool.num_cached == 1
    assert pool.num_used == 2


def test_reset_only_when_nothing_is_referenced() -> None:
    pool = BlockPool(4, record_events=True)
    _cache(pool, [1])
    assert not pool.reset_prefix_cache()
    pool.release([1], 0)
    assert pool.reset_prefix_cache()
    assert pool.num_cached == 0
    assert pool.events[-1] == AllBlocksCleared()
