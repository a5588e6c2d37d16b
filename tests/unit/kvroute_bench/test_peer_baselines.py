"""The sglang-like and llm-d-like baselines' decision logic, on hand-built pools."""

from __future__ import annotations

from kvroute.datastore.endpoint import Endpoint, EndpointLoad
from kvroute_bench.cache_aware import RadixTree, SglangCacheAwareRouter
from kvroute_bench.pool import PoolView
from kvroute_bench.token_aware import LlmdTokenAwareRouter, prefix_blocks
from kvroute_bench.workload import BenchRequest


def _pool(inflight: list[int]) -> PoolView:
    return PoolView(
        [
            Endpoint(f"r{i}", "10.0.0.1", 8000 + i, load=EndpointLoad(inflight=n))
            for i, n in enumerate(inflight)
        ]
    )


def _req(rid: str, prompt: tuple[int, ...], adapter: str | None = None) -> BenchRequest:
    return BenchRequest(rid, 0.0, prompt, 8, adapter)


# ---------------------------------------------------------------- radix tree


def test_radix_tree_matches_the_longest_prefix_and_names_its_tenants() -> None:
    tree = RadixTree()
    tree.insert("hello world", 0, 1.0)
    tree.insert("hello there", 1, 2.0)
    assert tree.match("hello world!") == (11, {0: 1.0})
    n, tenants = tree.match("hello wax")
    assert n == 7
    assert tenants == {0: 1.0}
    n, tenants = tree.match("hello zzz")
    assert n == 6
    assert tenants == {0: 1.0, 1: 2.0}
    assert tree.match("xyz") == (0, {0: 1.0, 1: 2.0})
    assert tree.size == {0: 11, 1: 11}


def test_radix_tree_reinsert_counts_new_characters_only() -> None:
    tree = RadixTree()
    tree.insert("abcdef", 0, 1.0)
    tree.insert("abcdef", 0, 2.0)
    tree.insert("abcxyz", 0, 3.0)
    assert tree.size[0] == 9  # "abc" + "def" + "xyz"
    assert tree.match("abcdef")[1] == {0: 2.0}


def test_radix_tree_evicts_least_recently_used_leaves_first() -> None:
    tree = RadixTree()
    tree.insert("aaaa1111", 0, 1.0)
    tree.insert("aaaa2222", 0, 2.0)
    tree.insert("aaaa2222", 1, 3.0)
    tree.evict(0, 8)
    assert tree.size[0] == 8
    assert tree.match("aaaa1111") == (4, {0: 2.0, 1: 3.0})  # the older leaf went first
    assert tree.match("aaaa2222")[0] == 8
    tree.evict(0, 0)
    assert tree.size[0] == 0
    assert tree.match("aaaa2222") == (8, {1: 3.0})  # tenant 1 keeps its copy
    tree.evict(1, 0)
    assert tree.root.children == {}


# ---------------------------------------------------------------- sglang cache_aware


def test_sglang_balance_switch_needs_both_thresholds() -> None:
    r = SglangCacheAwareRouter(0)
    assert not r.imbalanced([64, 0])  # abs diff 64 is not > 64
    assert r.imbalanced([65, 0])
    assert not r.imbalanced([200, 140])  # diff 60
    assert not r.imbalanced([300, 201])  # diff 99 but 300 <= 1.5 * 201
    assert r.imbalanced([302, 201])


def test_sglang_routes_by_cache_then_smallest_tree_then_shortest_queue() -> None:
    r = SglangCacheAwareRouter(0)
    shared = tuple(range(100))
    first = r.pick(_req("a", (*shared, 1000)), _pool([0, 0, 0]), 0.0)
    assert first == 0  # empty trees: the smallest is the first
    # A different prompt: no match above 0.3, so the smallest tree (replica 1)
    assert r.pick(_req("b", tuple(range(5000, 5100))), _pool([1, 0, 0]), 0.1) == 1
    # Same long prefix: match rate > 0.3 -> the replica holding it, despite its load
    assert r.pick(_req("c", (*shared, 2000)), _pool([5, 0, 0]), 0.2) == 0
    assert r.branches == {"imbalanced": 0, "cache_hit": 1, "smallest_tree": 2}
    # Imbalanced pool: the least-loaded replica wins over the cache, and it learns the text
    assert r.pick(_req("d", (*shared, 3000)), _pool([100, 20, 10]), 0.3) == 2
    assert r.branches["imbalanced"] == 1
    tree = r.trees[""]
    assert 2 in tree.match(_req("e", shared).text())[1]


def test_sglang_keeps_one_tree_per_model() -> None:
    r = SglangCacheAwareRouter(0)
    prompt = tuple(range(50))
    assert r.pick(_req("a", prompt, "lora-a"), _pool([0, 0]), 0.0) == 0
    assert r.pick(_req("b", prompt, "lora-b"), _pool([0, 0]), 0.0) == 0  # its own empty tree
    assert set(r.trees) == {"lora-a", "lora-b"}


def test_sglang_evicts_on_its_interval() -> None:
    r = SglangCacheAwareRouter(0, eviction_interval=10.0, max_tree_size=0)
    r.pick(_req("a", tuple(range(50))), _pool([0, 0]), 1.0)
    assert r.trees[""].size[0] > 0
    r.pick(_req("b", tuple(range(900, 950))), _pool([0, 0]), 5.0)
    assert r.trees[""].size[0] > 0  # not yet
    c = _req("c", tuple(range(700, 750)))
    assert r.pick(c, _pool([0, 0]), 10.0) == 0  # both emptied at t=10: a tie, the first
    assert r.trees[""].size == {0: len(c.text()), 1: 0}  # only "c" is left


# ---------------------------------------------------------------- llm-d token-aware


def test_prefix_blocks_keep_the_trailing_partial_block_and_chain() -> None:
    a = prefix_blocks(tuple(range(130)), "m", 64, 100)
    b = prefix_blocks((*tuple(range(128)), 7, 8), "m", 64, 100)
    assert len(a) == 3
    assert len(b) == 3
    assert a[:2] == b[:2]
    assert a[2] != b[2]
    assert prefix_blocks(tuple(range(130)), "other", 64, 100)[0] != a[0]  # model in h0
    assert len(prefix_blocks(tuple(range(1000)), "m", 64, 4)) == 4


def test_llmd_affinity_filter_sticks_then_token_load_spreads() -> None:
    r = LlmdTokenAwareRouter(0)
    prompt = tuple(range(640))  # 10 blocks
    pool = _pool([0, 0, 0])
    first = r.pick(_req("a", prompt), pool, 0.0)
    assert r.inflight_tokens[first] == 640  # all uncached
    # The same prompt: score 1.0 >= 0.8 on `first` only -> sticky, despite its load
    assert r.pick(_req("b", prompt), pool, 0.0) == first
    assert r.inflight_tokens[first] == 640  # fully cached: charged nothing
    # A cold prompt: every score < 0.8 -> all endpoints, the least in-flight tokens wins
    cold = r.pick(_req("c", tuple(range(9000, 9640))), pool, 0.0)
    assert cold != first
    # First token releases the prompt tokens; completion releases the rest
    r.on_first_token(_req("a", prompt), first, 1.0)
    assert r.inflight_tokens[first] == 0
    r.on_complete(_req("a", prompt), first, 2.0)
    r.on_complete(_req("b", prompt), first, 2.0)
    assert r.inflight_tokens[first] == 0


def test_llmd_ttft_gate_breaks_stickiness_past_the_penalty() -> None:
    r = LlmdTokenAwareRouter(0, max_ttft_penalty_ms=1000.0)
    r._grow(2)
    # sticky endpoint 0: 20000 tokens / 15928 tok/s = 1256 ms; endpoint 1 idle
    r.inflight_tokens[:] = [20000, 0]
    assert r.candidates([0.9, 0.1]) == [0, 1]
    r.inflight_tokens[:] = [15000, 0]  # 942 ms < 1000 ms penalty: stays sticky
    assert r.candidates([0.9, 0.1]) == [0]
    assert r.candidates([0.5, 0.1]) == [0, 1]  # nobody over the 0.80 threshold
    r0 = LlmdTokenAwareRouter(0, max_ttft_penalty_ms=0.0)  # 0 = always stick
    r0._grow(2)
    r0.inflight_tokens[:] = [10**7, 0]
    assert r0.candidates([0.9, 0.1]) == [0]


def test_llmd_estimated_output_tokens_when_enabled() -> None:
    r = LlmdTokenAwareRouter(0, add_estimated_output_tokens=True)
    req = BenchRequest("a", 0.0, tuple(range(100)), 50)
    i = r.pick(req, _pool([0, 0]), 0.0)
    assert r.inflight_tokens[i] == 100 + 50  # min(round(100 * 1.5), output_len 50)
    r.on_first_token(req, i, 0.5)
    assert r.inflight_tokens[i] == 50
    r.on_complete(req, i, 1.0)
    assert r.inflight_tokens[i] == 0
