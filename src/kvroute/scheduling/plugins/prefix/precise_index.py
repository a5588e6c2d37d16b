"""The precise prefix index: which server holds which KV block, from the engines' own events.

Blocks are indexed by kvroute's **own** chained token-block hash (see ``hashing.py``), computed
from the ``token_ids`` each ``BlockStored`` event carries, never by the engine's hash: vLLM's
block hash depends on ``PYTHONHASHSEED``/its hash algorithm and version, kvroute's does not, and
a request hashes to the same values from its token ids alone. For each server the index keeps
``engine_hash -> our_hash`` so that ``BlockRemoved`` (which names engine hashes only) can be
applied, and a ``BlockStored`` whose ``parent_block_hash`` is known continues the chain from the
parent's ``our_hash``.

Freshness rules (the index must never be stale forever):

* ``AllBlocksCleared`` and a publisher restart drop the server's entries;
* lost events (a sequence gap, a dropped connection) drop the server's entries and mark it
  UNKNOWN until its next batch arrives; an UNKNOWN server is scored from speculative entries only;
* a server that leaves the pool is removed;
* a ``BlockStored`` whose parent is unknown (we joined after the parent was stored, or the
  parent's event was lost) cannot be placed in the chain and is counted as an orphan, not
  guessed.

Speculative entries (llm-d's ``speculativeIndexing``) cover the gap between a routing decision
and the engine's event: ``PreRequest`` adds the request's blocks for the chosen server with a
short TTL.

Memory is bounded by what the engines hold (``num_gpu_blocks`` per server, plus offload media)
and by ``max_blocks_per_server`` as a safety cap against a misbehaving publisher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kvroute.datalayer.kvevents import (
    AllBlocksCleared,
    BlockHash,
    BlockRemoved,
    BlockStored,
    KvEventBatch,
)
from kvroute.scheduling.plugins.prefix.hashing import chain_token_block, token_root_hash
from kvroute.scheduling.plugins.prefix.holders import (
    Holders,
    add_holder,
    drop_holder,
    holder_names,
    holds,
)


class ServerSync(StrEnum):
    SYNCED = "synced"  # every event since the last baseline was applied
    UNKNOWN = "unknown"  # events were lost; entries dropped until fresh events arrive


@dataclass(slots=True)
class _ServerBlocks:
    # engine hash -> (our hash, medium). A block held in a second medium (e.g. offloaded to CPU
    # as well) is also listed in ``multi`` with every medium; kept apart because a set per block
    # would triple the memory of the common case.
    engine: dict[BlockHash, tuple[int, str | None]] = field(default_factory=dict)
    multi: dict[BlockHash, set[str | None]] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)  # our_hash -> engine blocks mapping to it
    speculative: dict[int, float] = field(default_factory=dict)  # our_hash -> expiry
    sync: ServerSync = ServerSync.SYNCED
    block_size: int = 0  # from the latest BlockStored; 0 = not seen yet


@dataclass(slots=True)
class IndexStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    orphans: int = 0
    resyncs: int = 0
    dropped_over_cap: int = 0
    skipped_groups: int = 0


class PreciseIndex:
    """Global block index fed by KV events (implements ``kvevents.KvEventSink``)."""

    __slots__ = ("_holders", "_servers", "max_blocks_per_server", "stats")

    def __init__(self, *, max_blocks_per_server: int = 4_000_000) -> None:
        self.max_blocks_per_server = max_blocks_per_server
        self._holders: dict[int, Holders] = {}
        self._servers: dict[str, _ServerBlocks] = {}
        self.stats = IndexStats()

    # -- event side ----------------------------------------------------------------------------

    def apply(self, server: str, batch: KvEventBatch) -> None:
        blocks = self._server(server)
        blocks.sync = ServerSync.SYNCED
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._stored(server, blocks, event)
            elif isinstance(event, BlockRemoved):
                self._removed(server, blocks, event)
            elif isinstance(event, AllBlocksCleared):
                self.stats.cleared += 1
                self._clear(server, blocks)

    def resync(self, server: str, reason: str) -> None:
        """Events for ``server`` were lost (``reason`` is for logs): forget its blocks."""
        del reason
        blocks = self._server(server)
        self.stats.resyncs += 1
        self._clear(server, blocks)
        blocks.sync = ServerSync.UNKNOWN

    def remove_server(self, server: str) -> None:
        blocks = self._servers.pop(server, None)
        if blocks is not None:
            self._clear(server, blocks)

    def retain_servers(self, live: Iterable[str]) -> list[str]:
        keep = set(live)
        gone = [s for s in self._servers if s not in keep]
        for server in gone:
            self.remove_server(server)
        return gone

    def _server(self, server: str) -> _ServerBlocks:
        blocks = self._servers.get(server)
        if blocks is None:
            blocks = self._servers[server] = _ServerBlocks()
        return blocks

    def _stored(self, server: str, blocks: _ServerBlocks, event: BlockStored) -> None:
        if event.group_idx not in (None, 0):
            # Hybrid models publish one group per attention type; group 0 (full attention)
            # decides whether a prefix is reusable.
            self.stats.skipped_groups += 1
            return
        size = event.block_size
        if size <= 0:
            return
        blocks.block_size = size
        if event.parent_block_hash is None:
            parent = token_root_hash(event.lora_name or "")
        else:
            parent_entry = blocks.engine.get(event.parent_block_hash)
            if parent_entry is None:
                self.stats.orphans += len(event.block_hashes)
                return
            parent = parent_entry[0]
        tokens = event.token_ids
        for i, engine_hash in enumerate(event.block_hashes):
            chunk = tokens[i * size : (i + 1) * size]
            if len(chunk) < size:
                break  # engines only publish full blocks; a short tail is malformed
            ours = chain_token_block(parent, chunk)
            parent = ours
            entry = blocks.engine.get(engine_hash)
            if entry is not None:
                if entry[1] != event.medium:
                    blocks.multi.setdefault(engine_hash, {entry[1]}).add(event.medium)
                continue
            if len(blocks.engine) >= self.max_blocks_per_server:
                self.stats.dropped_over_cap += 1
                return
            blocks.engine[engine_hash] = (ours, event.medium)
            self.stats.stored += 1
            count = blocks.refs.get(ours, 0)
            blocks.refs[ours] = count + 1
            if count == 0:
                add_holder(self._holders, ours, server)

    def _removed(self, server: str, blocks: _ServerBlocks, event: BlockRemoved) -> None:
        if event.group_idx not in (None, 0):
            return
        for engine_hash in event.block_hashes:
            entry = blocks.engine.get(engine_hash)
            if entry is None:
                continue
            media = blocks.multi.get(engine_hash)
            if media is not None:
                media.discard(event.medium)
                if media:  # still held in another medium (e.g. offloaded to CPU)
                    blocks.engine[engine_hash] = (entry[0], next(iter(media)))
                    if len(media) == 1:
                        del blocks.multi[engine_hash]
                    continue
                del blocks.multi[engine_hash]
            elif entry[1] != event.medium:
                continue  # removed from a medium it was never stored in
            del blocks.engine[engine_hash]
            self.stats.removed += 1
            self._unref(server, blocks, entry[0])

    def _unref(self, server: str, blocks: _ServerBlocks, ours: int) -> None:
        count = blocks.refs.get(ours, 0) - 1
        if count > 0:
            blocks.refs[ours] = count
            return
        blocks.refs.pop(ours, None)
        drop_holder(self._holders, ours, server)

    def _clear(self, server: str, blocks: _ServerBlocks) -> None:
        for ours in blocks.refs:
            drop_holder(self._holders, ours, server)
        blocks.engine.clear()
        blocks.multi.clear()
        blocks.refs.clear()
        blocks.speculative.clear()

    # -- routing side --------------------------------------------------------------------------

    def add_speculative(
        self, server: str, hashes: Iterable[int], *, now: float, ttl: float
    ) -> None:
        """Assume ``server`` holds ``hashes`` for ``ttl`` seconds (until its events arrive)."""
        spec = self._server(server).speculative
        if len(spec) > 4096:  # amortized purge of expired guesses keeps this bounded
            for h in [h for h, t in spec.items() if t <= now]:
                del spec[h]
        expires_at = now + ttl
        for h in hashes:
            spec[h] = expires_at

    def matched_blocks(
        self, hashes: Sequence[int], servers: Sequence[str], now: float
    ) -> dict[str, int]:
        """Per server, the number of leading blocks of ``hashes`` it holds (consecutive, as the
        engine's prefix cache can only reuse an unbroken prefix)."""
        result = dict.fromkeys(servers, 0)
        alive = list(servers)
        for depth, h in enumerate(hashes):
            value = self._holders.get(h)
            still = []
            for s in alive:
                if holds(value, s) or self._speculative_hit(s, h, now):
                    still.append(s)
                else:
                    result[s] = depth
            if not still:
                return result
            alive = still
        for s in alive:
            result[s] = len(hashes)
        return result

    def _speculative_hit(self, server: str, h: int, now: float) -> bool:
        blocks = self._servers.get(server)
        if blocks is None:
            return False
        expiry = blocks.speculative.get(h)
        return expiry is not None and expiry > now

    # -- introspection -------------------------------------------------------------------------

    def sync_state(self, server: str) -> ServerSync | None:
        blocks = self._servers.get(server)
        return None if blocks is None else blocks.sync

    def block_size(self, server: str) -> int:
        blocks = self._servers.get(server)
        return 0 if blocks is None else blocks.block_size

    def size(self, server: str) -> int:
        blocks = self._servers.get(server)
        return 0 if blocks is None else len(blocks.engine)

    def holders(self, h: int) -> frozenset[str]:
        return frozenset(holder_names(self._holders.get(h)))

    def __len__(self) -> int:
        return len(self._holders)
