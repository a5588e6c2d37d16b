"""``burst-prefix-cache-producer``: co-locate a burst of prompt-sharing requests.

When many requests sharing one prompt arrive at once (the ``n`` samples of an RL rollout step),
every prefix cache is still cold, a cache-state scorer scores them all zero and load balancing
scatters them, so the shared prompt is prefilled on several replicas. This producer groups the
requests of one window (``windowDurationMs``) by their prompt prefix and steers a group onto one
replica, filling it up to ``maxPerReplica`` group members before spilling to the next least
loaded replica of the window. ``prefix-cache-scorer`` with ``prefixMatchInfoProducerName`` naming
this producer scores its match: a full match on the assigned replica, nothing elsewhere.

Prefix identity: the chained hashes of the request's full blocks of ``blockSizeTokens * 4``
bytes (kvroute's level-1 hashing; engine token ids from a ``token-producer`` are not used),
capped at ``maxPrefixTokensToMatch / blockSizeTokens`` blocks (2048 when 0). Two requests are
one group when their whole capped chains are equal.

**Differs from upstream (said plainly).** Upstream holds every request up to the window length
and assigns the whole batch jointly (longest prefixes first, singletons left alone). kvroute's
PrepareData runs on the event loop and must not block, so the assignment here is *online*: the
first request of a group in a window picks the replica with the least window load (ties: fewer
requests in flight, then name), and the group's later members of the same window follow it
(spilling at ``maxPerReplica``). No request waits, so no latency is added; the first member of
a group gets an affinity even if no second member comes (upstream gives a lone request none).
``maxBatchSize``: requests past it in one window get no affinity (upstream returns an error).

Parameters (upstream's names and defaults): ``windowDurationMs`` (100, 1..10000),
``maxPerReplica`` (-1 = unlimited, else >= 1), ``blockSizeTokens`` (64),
``maxPrefixTokensToMatch`` (0; a positive value must be >= ``blockSizeTokens``),
``minColocateBlocks`` (0; > 0: a new group whose first N blocks equal those of a group already
placed in the window joins that group's replica while the replica holds fewer than
``ceil(window requests / replicas) + 1`` of the window's requests: one request of slack, as the
online assignment does not know the batch size), ``maxBatchSize`` (1000, -1 = unlimited),
``balanceBy`` (``requests``: window load is the request count; ``tokens``: each group's prefix
blocks are charged once per replica it lands on).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.hooks import PrepareData
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, ScorerCategory, StateKey
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.approximate import NO_MATCH, PrefixMatch
from kvroute.scheduling.plugins.prefix.hashing import (
    char_block_hashes,
    model_root_hash,
    request_input_bytes,
)
from kvroute.scheduling.request import InferenceRequest

TYPE = "burst-prefix-cache-producer"
DEFAULT_MAX_PREFIX_BLOCKS = 2048
CHARS_PER_TOKEN = 4


class BurstParams(PluginParams):
    window_duration_ms: int = Field(default=100, ge=1, le=10000, alias="windowDurationMs")
    max_per_replica: int = Field(default=-1, alias="maxPerReplica")
    block_size_tokens: int = Field(default=64, ge=1, alias="blockSizeTokens")
    max_prefix_tokens_to_match: int = Field(default=0, ge=0, alias="maxPrefixTokensToMatch")
    min_colocate_blocks: int = Field(default=0, ge=0, alias="minColocateBlocks")
    max_batch_size: int = Field(default=1000, alias="maxBatchSize")
    balance_by: Literal["requests", "tokens"] = Field(default="requests", alias="balanceBy")

    @model_validator(mode="after")
    def _check(self) -> BurstParams:
        if self.max_per_replica != -1 and self.max_per_replica < 1:
            raise ValueError("maxPerReplica must be -1 (unlimited) or >= 1")
        if self.max_batch_size != -1 and self.max_batch_size < 1:
            raise ValueError("maxBatchSize must be -1 (unlimited) or >= 1")
        if 0 < self.max_prefix_tokens_to_match < self.block_size_tokens:
            raise ValueError(
                "maxPrefixTokensToMatch must be 0 or >= blockSizeTokens "
                "(a smaller value yields zero prefix blocks)"
            )
        return self

    @property
    def max_blocks(self) -> int:
        if self.max_prefix_tokens_to_match > 0:
            return self.max_prefix_tokens_to_match // self.block_size_tokens
        return DEFAULT_MAX_PREFIX_BLOCKS


@dataclass
class _Group:
    replicas: list[str] = field(default_factory=list)  # in placement order
    counts: dict[str, int] = field(default_factory=dict)  # members per replica


@dataclass
class _Window:
    opened: float
    requests: int = 0
    groups: dict[int, _Group] = field(default_factory=dict)
    by_leading: dict[int, str] = field(default_factory=dict)  # chain hash at N-1 -> replica
    load: dict[str, float] = field(default_factory=dict)  # balanced quantity per replica
    placed: dict[str, int] = field(default_factory=dict)  # requests per replica


class BurstPrefixCacheProducer:
    """Assigns each request of a window to its prompt group's replica (see the module doc)."""

    category = ScorerCategory.AFFINITY

    def __init__(self, name: str = TYPE, params: BurstParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or BurstParams()
        self._key: StateKey[PrefixMatch] = StateKey(f"burst-prefix-match/{name}")
        self._lock = threading.Lock()
        self._window: _Window | None = None

    def hashes(self, request: InferenceRequest) -> list[int]:
        salt = request.body.get("cache_salt")
        root = model_root_hash(request.target_model, salt if isinstance(salt, str) else "")
        return char_block_hashes(
            request_input_bytes(request),
            block_chars=self.params.block_size_tokens * CHARS_PER_TOKEN,
            max_blocks=self.params.max_blocks,
            root=root,
        )

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        hashes = self.hashes(request)
        target = self._assign(state.now, hashes, endpoints) if hashes and endpoints else None
        matched = {target: len(hashes)} if target is not None else {}
        state.write(self._key, PrefixMatch(level=1, hashes=tuple(hashes), matched=matched))

    def _current(self, now: float) -> _Window:
        w = self._window
        if w is None or now - w.opened >= self.params.window_duration_ms / 1000.0:
            w = self._window = _Window(opened=now)
        return w

    def _assign(self, now: float, hashes: list[int], endpoints: Sequence[Endpoint]) -> str | None:
        p = self.params
        names = {e.name for e in endpoints}
        with self._lock:
            w = self._current(now)
            if p.max_batch_size != -1 and w.requests >= p.max_batch_size:
                return None
            w.requests += 1
            group = w.groups.setdefault(hashes[-1], _Group())
            target = next(
                (
                    r
                    for r in group.replicas
                    if r in names
                    and (p.max_per_replica == -1 or group.counts[r] < p.max_per_replica)
                ),
                None,
            )
            if target is None and not group.replicas:
                target = self._colocate(w, hashes, names, len(endpoints))
            if target is None or (
                p.max_per_replica != -1 and group.counts.get(target, 0) >= p.max_per_replica
            ):
                target = self._least_loaded(w, endpoints, exclude=set(group.replicas))
            if target not in group.counts:
                group.replicas.append(target)
                group.counts[target] = 0
                if p.balance_by == "tokens":
                    w.load[target] = w.load.get(target, 0.0) + len(hashes)
            group.counts[target] += 1
            w.placed[target] = w.placed.get(target, 0) + 1
            if p.balance_by == "requests":
                w.load[target] = w.load.get(target, 0.0) + 1
            n = p.min_colocate_blocks
            if n and len(hashes) >= n:
                w.by_leading.setdefault(hashes[n - 1], target)
            return target

    def _colocate(
        self, w: _Window, hashes: list[int], names: set[str], replicas: int
    ) -> str | None:
        n = self.params.min_colocate_blocks
        if not n or len(hashes) < n:
            return None
        replica = w.by_leading.get(hashes[n - 1])
        if replica is None or replica not in names:
            return None
        fair = math.ceil(w.requests / max(1, replicas)) + 1  # +1: the batch is not known yet
        return replica if w.placed.get(replica, 0) < fair else None

    @staticmethod
    def _least_loaded(w: _Window, endpoints: Sequence[Endpoint], exclude: set[str]) -> str:
        pool = [e for e in endpoints if e.name not in exclude] or list(endpoints)
        best = min(
            pool,
            key=lambda e: (
                w.load.get(e.name, 0.0),
                e.metrics.waiting_queue_size + e.metrics.running_queue_size,
                e.name,
            ),
        )
        return best.name

    # -- what prefix-cache-scorer reads -------------------------------------------------------

    def match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixMatch:
        return state.get(self._key, NO_MATCH)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        match = self.match(state, request, endpoints)
        return {name: 1.0 for name in match.matched if any(e.name == name for e in endpoints)}


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> BurstPrefixCacheProducer:
    return BurstPrefixCacheProducer(name, parse_params(BurstParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[PrepareData] = BurstPrefixCacheProducer
