"""The KV-event index: stored, removed, cleared, orphans, media, lost streams and restarts.

Engine hashes in these events are arbitrary opaque values (ints and bytes) on purpose: the index
must key blocks by kvroute's own chain of the token ids, whatever the engine's hash function.
"""

from __future__ import annotations

from kvroute.datalayer.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatch
from kvroute.scheduling.plugins.prefix.hashing import token_block_hashes, token_root_hash
from kvroute.scheduling.plugins.prefix.precise_index import PreciseIndex, ServerSync

TOKENS = list(range(100, 112))  # three blocks of 4
OURS = token_block_hashes(TOKENS, block_size=4, root=token_root_hash(""))


def batch(*events: BlockStored | BlockRemoved | AllBlocksCleared) -> KvEventBatch:
    return KvEventBatch(0.0, tuple(events))


def stored(hashes: list[object], parent: object, tokens: list[int], **kw: object) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tuple(tokens), 4, **kw)  # type: ignore[arg-type]


def held(index: PreciseIndex, server: str, now: float = 0.0) -> int:
    return index.matched_blocks(OURS, [server], now)[server]


def test_stored_blocks_are_found_by_our_own_hash() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([b"e1", b"e2", b"e3"], None, TOKENS)))
    assert held(index, "a") == 3
    assert index.holders(OURS[0]) == frozenset({"a"})
    assert index.block_size("a") == 4
    assert index.size("a") == 3


def test_chain_continues_from_known_parent_across_events() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4])))
    index.apply("a", batch(stored([2, 3], 1, TOKENS[4:])))
    assert held(index, "a") == 3


def test_orphan_with_unknown_parent_is_not_guessed() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([2, 3], 999, TOKENS[4:])))
    assert held(index, "a") == 0
    assert index.stats.orphans == 2
    assert len(index) == 0


def test_removed_blocks_stop_matching_and_break_the_prefix() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1, 2, 3], None, TOKENS)))
    index.apply("a", batch(BlockRemoved((2,))))
    assert held(index, "a") == 1  # block 3 is still there but unusable after the hole
    index.apply("a", batch(BlockRemoved((1, 3, 404))))  # unknown hashes are ignored
    assert held(index, "a") == 0
    assert len(index) == 0


def test_block_in_two_media_survives_one_removal() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4], medium="GPU")))
    index.apply("a", batch(stored([1], None, TOKENS[:4], medium="CPU")))
    index.apply("a", batch(BlockRemoved((1,), medium="GPU")))
    assert index.matched_blocks(OURS[:1], ["a"], 0.0) == {"a": 1}
    index.apply("a", batch(BlockRemoved((1,), medium="CPU")))
    assert index.matched_blocks(OURS[:1], ["a"], 0.0) == {"a": 0}


def test_two_servers_hold_independently() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1, 2, 3], None, TOKENS)))
    index.apply("b", batch(stored([7, 8], None, TOKENS[:8])))  # different engine hashes
    assert index.matched_blocks(OURS, ["a", "b", "c"], 0.0) == {"a": 3, "b": 2, "c": 0}
    index.apply("a", batch(AllBlocksCleared()))
    assert index.matched_blocks(OURS, ["a", "b"], 0.0) == {"a": 0, "b": 2}
    assert index.stats.cleared == 1


def test_resync_drops_entries_and_marks_unknown_until_fresh_events() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1, 2, 3], None, TOKENS)))
    index.resync("a", "sequence gap")
    assert index.sync_state("a") is ServerSync.UNKNOWN
    assert held(index, "a") == 0
    index.apply("a", batch(stored([1], None, TOKENS[:4])))
    assert index.sync_state("a") is ServerSync.SYNCED
    assert held(index, "a") == 1


def test_removed_server_is_gone() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1, 2, 3], None, TOKENS)))
    index.apply("b", batch(stored([1], None, TOKENS[:4])))
    assert index.retain_servers(["b"]) == ["a"]
    assert index.sync_state("a") is None
    assert index.matched_blocks(OURS, ["a", "b"], 0.0) == {"a": 0, "b": 1}


def test_lora_blocks_have_their_own_root() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4], lora_name="sql")))
    assert held(index, "a") == 0
    lora_chain = token_block_hashes(TOKENS, block_size=4, root=token_root_hash("sql"))
    assert index.matched_blocks(lora_chain, ["a"], 0.0) == {"a": 1}


def test_other_kv_groups_are_skipped() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4], group_idx=1)))
    assert held(index, "a") == 0
    assert index.stats.skipped_groups == 1


def test_speculative_entries_expire() -> None:
    index = PreciseIndex()
    index.add_speculative("a", OURS[:2], now=10.0, ttl=2.0)
    assert held(index, "a", now=11.0) == 2
    assert held(index, "a", now=12.5) == 0
    # events take over: a real block plus the speculative tail
    index.apply("a", batch(stored([1], None, TOKENS[:4])))
    index.add_speculative("a", OURS, now=20.0, ttl=2.0)
    assert held(index, "a", now=21.0) == 3


def test_cap_bounds_memory_per_server() -> None:
    index = PreciseIndex(max_blocks_per_server=2)
    index.apply("a", batch(stored([1, 2, 3], None, TOKENS)))
    assert index.size("a") == 2
    assert index.stats.dropped_over_cap == 1


def test_duplicate_store_does_not_double_count() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4])))
    index.apply("a", batch(stored([1], None, TOKENS[:4])))
    index.apply("a", batch(BlockRemoved((1,))))
    assert held(index, "a") == 0
    assert len(index) == 0


def test_removal_from_a_medium_the_block_was_never_in_is_ignored() -> None:
    index = PreciseIndex()
    index.apply("a", batch(stored([1], None, TOKENS[:4], medium="GPU")))
    index.apply("a", batch(BlockRemoved((1,), medium="CPU")))
    assert index.matched_blocks(OURS[:1], ["a"], 0.0) == {"a": 1}


def test_three_media_removed_one_by_one() -> None:
    index = PreciseIndex()
    for medium in ("GPU", "CPU", "DISK"):
        index.apply("a", batch(stored([1], None, TOKENS[:4], medium=medium)))
    for medium, still in (("CPU", 1), ("GPU", 1), ("DISK", 0)):
        index.apply("a", batch(BlockRemoved((1,), medium=medium)))
        assert index.matched_blocks(OURS[:1], ["a"], 0.0) == {"a": still}
