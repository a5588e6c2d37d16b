"""The approximate prefix index: longest-prefix matching, LRU eviction and pruning."""

from __future__ import annotations

import random

import pytest

from kvroute.scheduling.plugins.prefix.holders import holder_names
from kvroute.scheduling.plugins.prefix.index import PrefixIndex


def test_match_counts_until_first_block_nobody_has() -> None:
    index = PrefixIndex(100)
    index.add("a", [1, 2, 3])
    index.add("b", [1, 2])
    # block 4 is unknown: the walk stops there even though "a" holds nothing after it anyway
    assert index.match_longest_prefix([1, 2, 3, 4, 5]) == {"a": 3, "b": 2}
    assert index.match_longest_prefix([9, 1, 2]) == {}


def test_match_is_upstream_counting_not_contiguity() -> None:
    # upstream counts every block a pod holds along the walk (a pod missing block 2 but holding
    # block 3 still gets 2 counts while another pod keeps the walk alive)
    index = PrefixIndex(100)
    index.add("a", [1, 3])
    index.add("b", [1, 2, 3])
    assert index.match_longest_prefix([1, 2, 3]) == {"a": 2, "b": 3}


def test_lru_evicts_oldest_and_refresh_protects() -> None:
    index = PrefixIndex(3)
    index.add("a", [1, 2, 3])
    index.add("a", [1])  # refresh 1: now 2 is the oldest
    index.add("a", [4])
    assert index.size("a") == 3
    assert index.match_longest_prefix([2]) == {}
    assert index.match_longest_prefix([1]) == {"a": 1}
    assert len(index) == 3


def test_eviction_on_one_server_keeps_other_holders() -> None:
    index = PrefixIndex(1)
    index.add("a", [1])
    index.add("b", [1])
    index.add("a", [2])  # evicts 1 from a only
    assert index.match_longest_prefix([1]) == {"b": 1}


def test_shrinking_capacity_evicts_immediately() -> None:
    index = PrefixIndex(10)
    index.add("a", range(10))
    index.set_capacity("a", 4)
    assert index.size("a") == 4
    assert index.capacity("a") == 4
    assert index.match_longest_prefix([6, 7, 8, 9]) == {"a": 4}
    assert index.match_longest_prefix([5]) == {}


def test_remove_and_retain_prune_servers() -> None:
    index = PrefixIndex(10)
    index.add("a", [1, 2])
    index.add("b", [1])
    index.add("c", [3])
    assert index.retain_servers(["a"]) == ["b", "c"]
    assert index.servers() == frozenset({"a"})
    assert index.match_longest_prefix([1]) == {"a": 1}
    assert index.match_longest_prefix([3]) == {}
    index.remove_server("a")
    assert len(index) == 0


@pytest.mark.parametrize("capacity", [0, -1], ids=["zero", "negative"])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError):
        PrefixIndex(capacity)


def test_holders_grow_to_a_set_and_shrink_back() -> None:
    index = PrefixIndex(10)
    index.add("a", [1])
    index.add("b", [1])
    index.add("c", [1])
    assert index.holders(1) == frozenset({"a", "b", "c"})
    index.remove_server("b")
    index.remove_server("c")
    assert index.holders(1) == frozenset({"a"})
    assert index.match_longest_prefix([1]) == {"a": 1}
    index.remove_server("a")
    assert index.holders(1) == frozenset()


def _walk(index: PrefixIndex, hashes: list[int]) -> list[tuple[str, int]]:
    """The block-by-block reference walk: counts in first-seen order."""
    counts: dict[str, int] = {}
    for h in hashes:
        holders = index.holders(h)
        if not holders:
            break
        for server in holder_names(index._hash_to_servers[h]):
            counts[server] = counts.get(server, 0) + 1
    return list(counts.items())


def test_match_counts_runs_as_the_block_walk_does() -> None:
    """Random servers holding random runs of a chain: the run-counting match gives the counts,
    and their key order, of the plain block-by-block walk."""
    rng = random.Random(4)
    for _ in range(200):
        index = PrefixIndex(64)
        chain = list(range(1, rng.randint(2, 40)))
        for s in range(rng.randint(1, 6)):
            start = rng.randrange(len(chain))
            index.add(f"s{s}", chain[start : start + rng.randint(1, len(chain))])
        query = chain[rng.randrange(3) :]
        assert list(index.match_longest_prefix(query).items()) == _walk(index, query)
