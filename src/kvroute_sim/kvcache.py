"""The KV block pool with a prefix cache: counts and hashes, never per-block objects.

vLLM keeps a fixed number of KV blocks. A block is *referenced* (held by running requests),
*cached* (full, hashed, findable by later requests) or *free*. Cached blocks nobody references
count as free but stay findable until evicted, least recently freed first. This pool tracks:

- ``_refs``: hash -> reference count for every cached block (resident in GPU memory);
- ``_evictable``: an LRU of cached hashes with no references (insertion order = free order);
- ``_uncached``: blocks held by requests that carry no hash (partial, or duplicate content).

Free capacity = ``num_blocks - len(_refs) - _uncached + len(_evictable)``. Allocation takes
never-hashed free space first and evicts LRU cached blocks only when that is exhausted. (vLLM
takes strictly from the head of one free queue; preferring clean space keeps cached prefixes a
little longer. The difference only shows when the cache is nearly full of reusable blocks.)

KV events (``BlockStored``/``BlockRemoved``/``AllBlocksCleared``, vLLM's shapes) are appended to
``events`` when ``record_events`` is set; the engine drains them once per step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Blocks became cached (vLLM ``BlockStored``): hashes in chain order after ``parent``."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Cached blocks were evicted (vLLM ``BlockRemoved``)."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset (vLLM ``AllBlocksCleared``)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class BlockPool:
    """Fixed-capacity KV blocks with hash-addressed prefix caching and LRU eviction."""

    __slots__ = ("_evictable", "_refs", "_uncached", "events", "num_blocks", "record_events")

    def __init__(self, num_blocks: int, record_events: bool = False) -> None:
        self.num_blocks = num_blocks
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._uncached = 0
        self.record_events = record_events
        self.events: list[KVEvent] = []

    # --- capacity ---------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks an allocation could get now (clean space plus evictable cached blocks)."""
        return self.num_blocks - len(self._refs) - self._uncached + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by requests (what ``kv_cache_usage_perc`` counts)."""
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Hashed blocks resident (referenced or evictable)."""
        return len(self._refs)

    def usage(self) -> float:
        """``1 - free/total`` as vLLM reports it; cached-but-unreferenced blocks count as free."""
        return self.num_used / self.num_blocks

    # --- prefix lookup ----------------------------------------------------------------------

    def match(self, hashes: list[int], max_blocks: int) -> tuple[int, int]:
        """Longest cached prefix of ``hashes`` (at most ``max_blocks``).

        Returns ``(hit_blocks, evictable_among_them)``: the second is how many of the hits would
        leave the free pool when referenced, which an allocation must account for.
        """
        refs = self._refs
        evictable = self._evictable
        n = 0
        ev = 0
        for h in hashes:
            if n >= max_blocks or h not in refs:
                break
            if h in evictable:
                ev += 1
            n += 1
        return n, ev

    def acquire(self, hashes: list[int]) -> None:
        """Reference cached blocks (prefix hits): they leave the evictable LRU."""
        refs = self._refs
        evictable = self._evictable
        for h in hashes:
            c = refs[h]
            if c == 0:
                del evictable[h]
            refs[h] = c + 1

    # --- allocation -------------------------------------------------------------------------

    def allocate(self, n: int) -> bool:
        """Take ``n`` uncached blocks, evicting LRU cached blocks if clean space runs out."""
        if n <= 0:
            return True
        if n > self.num_free:
            return False
        clean = self.num_blocks - len(self._refs) - self._uncached
        if n > clean:
            self._evict(n - clean)
        self._uncached += n
        return True

    def _evict(self, k: int) -> None:
        refs = self._refs
        evictable = self._evictable
        removed: list[int] = []
        for _ in range(k):
            h, _none = evictable.popitem(last=False)
            del refs[h]
            removed.append(h)
        if self.record_events:
            self.events.append(BlockRemoved(tuple(removed)))

    def promote(self, h: int) -> bool:
        """Turn one of a request's uncached blocks into the cached block ``h``.

        Returns False (and keeps the block uncached) when ``h`` is already cached: vLLM keeps
        such a duplicate out of the hash table too.
        """
        if h in self._refs:
            return False
        self._refs[h] = 1
        self._uncached -= 1
        return True

    def release(self, cached: list[int], uncached: int) -> None:
        """Drop a request's references: its cached blocks become evictable (tail first)."""
        self._uncached -= uncached
        refs = self._refs
        evictable = self._evictable
        for h in reversed(cached):
            c = refs[h] - 1
            refs[h] = c
            if c == 0:
                evictable[h] = None

    def reset_prefix_cache(self) -> bool:
        """Forget every evictable cached block (vLLM ``/reset_prefix_cache``).

        Only possible when nothing is referenced, as in vLLM; returns whether it happened.
        """
        if self._uncached or any(self._refs.values()):
            return False
        self._refs.clear()
        self._evictable.clear()
        if self.record_events:
            self.events.append(AllBlocksCleared())
        return True
