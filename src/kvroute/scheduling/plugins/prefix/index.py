"""The approximate prefix index: block hash -> servers, bounded by a per-server LRU.

Upstream (``approximateprefix/indexer.go``) keeps ``hashToPods map[hash]set[pod]`` plus one
``golang-lru`` per pod; adding a hash for a pod refreshes it in that pod's LRU and evicting it
from the LRU removes the pod from ``hashToPods``. This is the same structure in Python: a dict of
per-server ``OrderedDict`` LRUs (``move_to_end`` / ``popitem(last=False)``) and a dict of
holders (a name, or a set once two servers hold a block; ``holders.py``).

Memory is bounded by ``sum(capacity(server))`` entries. The capacity of a server is set when it is
first seen (auto-tuned from ``vllm:cache_config_info{num_gpu_blocks}`` when known) and can be
lowered later, which evicts down immediately. ``benchmarks.md`` records the measured bytes per
cached block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from kvroute.scheduling.plugins.prefix.holders import Holders, add_holder, drop_holder, holder_names


class PrefixIndex:
    """Which servers were sent which prefix blocks (recently, within their LRU capacity)."""

    __slots__ = ("_capacity", "_default_capacity", "_hash_to_servers", "_lru")

    def __init__(self, default_capacity: int) -> None:
        if default_capacity <= 0:
            raise ValueError("default_capacity must be positive")
        self._default_capacity = default_capacity
        self._hash_to_servers: dict[int, Holders] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}

    # -- reads ---------------------------------------------------------------------------------

    def match_longest_prefix(self, hashes: Sequence[int]) -> dict[str, int]:
        """Upstream ``matchLongestPrefix``: walk in order, stop at the first block no server has,
        and count per server the blocks it holds along the way.

        Consecutive blocks with the same holders (a prefix cached by the same servers, the
        common case) are counted as one run: one C-level set comparison per block instead of a
        dict update per server per block. Counts and their key order are those of the
        block-by-block walk (a server is first counted in the first block that lists it).
        """
        counts: dict[str, int] = {}
        lookup = self._hash_to_servers.get
        run: Holders | None = None
        length = 0
        for h in hashes:
            servers = lookup(h)
            if servers is None:
                break
            if servers == run:
                length += 1
                continue
            if run is not None:
                _count_run(counts, run, length)
            run, length = servers, 1
        if run is None:
            return counts
        if not counts and not isinstance(run, str):  # one run (the common case): one C call
            return dict.fromkeys(run, length)
        _count_run(counts, run, length)
        return counts

    def servers(self) -> frozenset[str]:
        return frozenset(self._lru)

    def size(self, server: str) -> int:
        lru = self._lru.get(server)
        return 0 if lru is None else len(lru)

    def capacity(self, server: str) -> int:
        return self._capacity.get(server, self._default_capacity)

    def __len__(self) -> int:
        """Number of distinct block hashes held by at least one server."""
        return len(self._hash_to_servers)

    # -- writes --------------------------------------------------------------------------------

    def set_capacity(self, server: str, capacity: int) -> None:
        """Set a server's LRU size (auto-tune); evicts its oldest blocks if it shrank."""
        if capacity <= 0:
            return
        self._capacity[server] = capacity
        lru = self._lru.get(server)
        if lru is not None:
            self._evict_to(server, lru, capacity)

    def add(self, server: str, hashes: Iterable[int]) -> None:
        """Record that ``server`` now holds ``hashes`` (refreshing them in its LRU)."""
        lru = self._lru.get(server)
        if lru is None:
            lru = self._lru[server] = OrderedDict()
        index = self._hash_to_servers
        refresh = lru.move_to_end
        held_by = index.get
        for h in hashes:
            if h in lru:
                refresh(h)
                continue
            lru[h] = None
            if held_by(h) is None:  # add_holder's first case inlined: a block nobody holds
                index[h] = server
            else:
                add_holder(index, h, server)
        self._evict_to(server, lru, self.capacity(server))

    def remove_server(self, server: str) -> None:
        """Forget everything about ``server`` (it left the pool)."""
        lru = self._lru.pop(server, None)
        self._capacity.pop(server, None)
        if lru is None:
            return
        for h in lru:
            self._drop(h, server)

    def retain_servers(self, live: Iterable[str]) -> list[str]:
        """Remove every server not in ``live``; returns the names removed."""
        keep = set(live)
        gone = [s for s in self._lru if s not in keep]
        for server in gone:
            self.remove_server(server)
        return gone

    def _evict_to(self, server: str, lru: OrderedDict[int, None], capacity: int) -> None:
        while len(lru) > capacity:
            h, _ = lru.popitem(last=False)
            self._drop(h, server)

    def _drop(self, h: int, server: str) -> None:
        drop_holder(self._hash_to_servers, h, server)

    def holders(self, h: int) -> frozenset[str]:
        return frozenset(holder_names(self._hash_to_servers.get(h)))


def _count_run(counts: dict[str, int], holders: Holders, blocks: int) -> None:
    """Add ``blocks`` to the count of every server in ``holders``."""
    if isinstance(holders, str):
        counts[holders] = counts.get(holders, 0) + blocks
        return
    for server in holders:
        counts[server] = counts.get(server, 0) + blocks
