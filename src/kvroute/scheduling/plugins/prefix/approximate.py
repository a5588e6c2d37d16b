"""``prefix-cache-scorer`` (Affinity): prefer the servers that were recently sent this prefix.

Formula (upstream)::

    score(e) = matched_blocks(e) / total_blocks      (0 for every server when total_blocks == 0)

where ``total_blocks`` is the number of prefix blocks of the request and ``matched_blocks(e)``
is what upstream's ``matchLongestPrefix`` counts for ``e`` in the index (see ``index.py``). The
plugin is its own producer (upstream's auto-added ``approx-prefix-cache-producer`` with the same
parameters): ``prepare_data`` hashes the request and matches it, ``pre_request`` adds the
request's blocks for the chosen target (and the ``prefill`` profile's target, if any).

Two hashing levels share this one index:

* **level 1** (default, upstream-compatible): character blocks, ``hashing.char_block_hashes``;
* **level 2** (``tokenizer: <local dir>``): the engine's token ids in blocks of the engine's KV
  block size (auto-tuned from ``vllm:cache_config_info{block_size}``), so a match means the
  engine very likely has the same blocks cached. Requests the tokenizer cannot handle (no chat
  template, a template error) fall back to level 1.

kvroute addition: the anti-hotspot rule of ``hotspot.py`` (``hotspotPolicy``, default
``load-bound``) zeroes the score of overloaded servers; ``hotspotPolicy: none`` is upstream.

Parameters (upstream names and defaults): ``autoTune`` true, ``blockSizeTokens`` 16,
``maxPrefixBlocksToMatch`` 256, ``maxPrefixTokensToMatch`` (> 0 overrides: blocks =
tokens / blockSize), ``lruCapacityPerServer`` 31250, deprecated ``blockSize`` (characters; an
error unless ``blockSizeTokens`` is also set). kvroute: ``tokenizer``, ``tokenizerCacheSize``,
``pruneIntervalSeconds`` 120, ``hotspotPolicy``, ``hotspotAbsSlack``, ``hotspotRelSlack``.

Metrics consumed: ``EndpointMetrics.cache_block_size`` and ``cache_num_blocks`` (auto-tune), and
the load signals of ``hotspot.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import Field, model_validator

from kvroute.datalayer.tokenization import PromptTokenizer, RequestTokenizer
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.framework.hooks import PrepareData, PreRequest
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, PrefixCacheMatchInfo
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    EXPLAIN,
    PREFETCHED,
    CycleState,
    SchedulingResult,
    Scorer,
    ScorerCategory,
    StateKey,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.hashing import (
    AVERAGE_CHARS_PER_TOKEN,
    char_block_hashes,
    model_root_hash,
    request_input_bytes,
    token_block_hashes,
    token_root_hash,
)
from kvroute.scheduling.plugins.prefix.hotspot import (
    HotspotGuard,
    HotspotPolicy,
    held_not_overloaded,
)
from kvroute.scheduling.plugins.prefix.index import PrefixIndex
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

T = TypeVar("T")

TYPE = "prefix-cache-scorer"
PREFILL_PROFILE = "prefill"  # upstream's experimentalDefaultPrefillProfile


class PrefixCacheParams(PluginParams):
    auto_tune: bool = Field(default=True, alias="autoTune")
    block_size_tokens: int | None = Field(default=None, alias="blockSizeTokens", gt=0)
    block_size: int | None = Field(default=None, alias="blockSize", gt=0)  # deprecated, chars
    max_prefix_blocks_to_match: int = Field(default=256, alias="maxPrefixBlocksToMatch", gt=0)
    max_prefix_tokens_to_match: int = Field(default=0, alias="maxPrefixTokensToMatch", ge=0)
    lru_capacity_per_server: int = Field(default=31250, alias="lruCapacityPerServer", gt=0)
    tokenizer: str | None = None
    tokenizer_cache_size: int = Field(default=1024, alias="tokenizerCacheSize", ge=0)
    prune_interval_seconds: float = Field(default=120.0, alias="pruneIntervalSeconds", gt=0)
    hotspot_policy: HotspotPolicy = Field(default=HotspotPolicy.LOAD_BOUND, alias="hotspotPolicy")
    hotspot_abs_slack: float = Field(default=16.0, alias="hotspotAbsSlack", ge=0)
    hotspot_rel_slack: float = Field(default=1.5, alias="hotspotRelSlack", ge=1.0)

    @model_validator(mode="after")
    def _deprecated_block_size(self) -> PrefixCacheParams:
        if self.block_size is not None and self.block_size_tokens is None:
            raise ValueError(
                "blockSize (characters) is deprecated; set blockSizeTokens instead "
                "(blockSizeTokens = blockSize / 4)"
            )
        return self

    # The smallest block size used, whatever is configured or auto-tuned (1: none).
    min_block_tokens: ClassVar[int] = 1

    @property
    def block_tokens(self) -> int:
        return self.block_size_tokens or 16

    def max_blocks(self, block_tokens: int) -> int:
        if self.max_prefix_tokens_to_match > 0:
            return max(1, self.max_prefix_tokens_to_match // block_tokens)
        return self.max_prefix_blocks_to_match or UNLIMITED_BLOCKS


UNLIMITED_BLOCKS = 1 << 62  # both caps 0 on the producer: the whole prompt


class ProducerParams(PrefixCacheParams):
    """``approx-prefix-cache-producer``: upstream v0.10's defaults (``types.go``,
    ``plugin.go``): ``maxPrefixTokensToMatch`` 131072 (wins over blocks),
    ``maxPrefixBlocksToMatch`` 2048 (0 with a token cap of 0: unlimited), and an effective block
    size of at least 64 tokens (``minBlockSizeTokens``), so vLLM's 16-token blocks are matched
    in 64-token steps. The one-plugin ``prefix-cache-scorer`` keeps GIE v1.5's (256 blocks)."""

    max_prefix_blocks_to_match: int = Field(default=2048, alias="maxPrefixBlocksToMatch", ge=0)
    max_prefix_tokens_to_match: int = Field(default=131072, alias="maxPrefixTokensToMatch", ge=0)
    min_block_tokens: ClassVar[int] = 64


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """What ``prepare_data`` found for one request (read by ``score`` and ``pre_request``)."""

    level: int  # 1 = characters, 2 = tokens
    hashes: tuple[int, ...]
    matched: Mapping[str, int]

    @property
    def total_blocks(self) -> int:
        return len(self.hashes)


NO_MATCH = PrefixMatch(level=1, hashes=(), matched={})  # no PrepareData pass: nothing to match


class PrefixCacheScorer:
    """Upstream's approximate prefix-cache scorer and producer in one plugin (levels 1 and 2)."""

    category = ScorerCategory.AFFINITY

    def __init__(
        self,
        name: str = TYPE,
        params: PrefixCacheParams | None = None,
        *,
        tokenizer: RequestTokenizer | None = None,
        type_name: str = TYPE,
    ) -> None:
        self.typed_name = TypedName(type_name, name)
        self.params = p = params or PrefixCacheParams()
        self.index = PrefixIndex(p.lru_capacity_per_server)
        self.tokenizer: RequestTokenizer | None = tokenizer
        if tokenizer is None and p.tokenizer:
            self.tokenizer = PromptTokenizer.from_directory(
                p.tokenizer, cache_size=p.tokenizer_cache_size
            )
        self.guard = HotspotGuard(p.hotspot_policy, p.hotspot_abs_slack, p.hotspot_rel_slack)
        self._key: StateKey[PrefixMatch] = StateKey(f"prefix-match/{name}")
        self._last_seen: dict[str, float] = {}
        self._next_prune = 0.0
        # the candidate tuple of the last cycle and when it was seen: the datastore hands out
        # the same frozen tuple until an endpoint or its metrics change, so a cycle over the
        # same tuple needs no per-endpoint pass
        self._observed: Sequence[Endpoint] = ()
        self._observed_at = 0.0
        self._tuned_capacity: dict[str, int] = {}
        self._outbox: list[list[Any]] | None = None  # replicated inserts (after a first drain)
        # the name of a prefetching token producer (token-producer's vllm backend) whose token
        # ids this plugin hashes when it has them (set by the producer's factory)
        self.token_source: str | None = None

    # -- ReplicatedState (active-active peers; kvroute.replicasync) ----------------------------

    def replication_channel(self) -> str:
        return f"{TYPE}/{self.typed_name.name}"

    def drain_replicated(self) -> list[Any]:
        """The index inserts made here since the last drain: ``[server, [hash, ...]]``."""
        out, self._outbox = self._outbox or [], []
        return out

    def merge_replicated(self, entries: Sequence[object], now: float) -> None:
        """A peer's inserts; all validated before any is applied. A server this replica has
        not scheduled over yet is taken on trust (peers are authenticated) but, like any
        server, pruned once absent for a prune interval; at most 4096 servers are tracked."""
        limit = self.params.max_blocks(1)
        checked = [_prefix_entry(e, limit) for e in entries]
        seen = self._last_seen
        for server, hashes in checked:
            if server not in seen:
                if len(seen) >= 4096:
                    continue
                seen[server] = now
            self.index.add(server, hashes)

    # -- PrepareData ---------------------------------------------------------------------------

    def blocks_held(self, endpoint: str) -> int:
        """Prefix blocks the index holds for ``endpoint`` (the live pool page shows it)."""
        return self.index.size(endpoint)

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        size = self.block_size_tokens(endpoints)
        match = self._match(state, request, endpoints, size)
        state.write(self._key, match)
        # The public view P/D deciders read (upstream's PrefixCacheMatchInfo attribute).
        cached = {name: blocks * size for name, blocks in match.matched.items()}
        state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo(cached))

    def _match(
        self,
        state: CycleState,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        block_tokens: int,
    ) -> PrefixMatch:
        self._observe(state.now, endpoints)
        tokens = None
        if self.token_source is not None:
            prefetched = state.get(PREFETCHED, None)
            got = prefetched.get(self.token_source) if prefetched else None
            tokens = got if isinstance(got, list) else None
        level, hashes = self.hash_request(request, endpoints, block_tokens, tokens=tokens)
        matched = self.index.match_longest_prefix(hashes)
        return PrefixMatch(level=level, hashes=tuple(hashes), matched=matched)

    def block_size_tokens(self, endpoints: Sequence[Endpoint]) -> int:
        """Upstream auto-tune: the first endpoint that reports a block size decides."""
        floor = self.params.min_block_tokens
        if self.params.auto_tune:
            for e in endpoints:
                if e.metrics.cache_block_size > 0:
                    return max(floor, e.metrics.cache_block_size)
        return max(floor, self.params.block_tokens)

    def hash_request(
        self,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        block_tokens: int | None = None,
        *,
        tokens: Sequence[int] | None = None,
    ) -> tuple[int, list[int]]:
        """(level, chained block hashes) of ``request`` (``block_tokens``: the block size when
        the caller has it already; ``tokens``: engine token ids a token producer rendered)."""
        if block_tokens is None:
            block_tokens = self.block_size_tokens(endpoints)
        max_blocks = self.params.max_blocks(block_tokens)
        salt = request.body.get("cache_salt")
        salt = salt if isinstance(salt, str) else ""
        if tokens is None and self.tokenizer is not None:
            tokens = self.tokenizer.encode_request(request)
        if tokens is not None:
            root = token_root_hash(request.target_model + salt)
            return 2, token_block_hashes(
                tokens, block_size=block_tokens, root=root, max_blocks=max_blocks
            )
        return 1, char_block_hashes(
            request_input_bytes(request),
            block_chars=block_tokens * AVERAGE_CHARS_PER_TOKEN,
            max_blocks=max_blocks,
            root=model_root_hash(request.target_model, salt),
        )

    def _observe(self, now: float, endpoints: Sequence[Endpoint]) -> None:
        """Auto-tune LRU capacities and prune servers not seen for a prune interval.

        Upstream prunes with a 2-minute goroutine against the datastore; without a subscription
        (``endpoint_event``) a server that has been absent from every cycle for that long is
        treated the same way.
        """
        seen = self._last_seen
        if endpoints is self._observed:
            self._observed_at = now  # same frozen endpoints as last cycle: nothing new to tune
        else:
            # A new tuple: the datastore builds one whenever any endpoint's metrics change, so
            # with many endpoints nearly every cycle comes here. Sightings and capacities are
            # independent, so each gets its own tight loop (invariants bound once).
            last = self._observed_at
            for e in self._observed:  # the previous tuple's last sighting
                seen[e.name] = last
            self._observed, self._observed_at = endpoints, now
            for e in endpoints:
                seen[e.name] = now
            if self.params.auto_tune:
                tuned = self._tuned_capacity
                tuned_to = tuned.get
                for e in endpoints:
                    blocks = e.metrics.cache_num_blocks
                    if blocks > 0 and tuned_to(e.name) != blocks:
                        tuned[e.name] = blocks
                        self.index.set_capacity(e.name, blocks)
        if now >= self._next_prune:
            for e in self._observed:
                seen[e.name] = self._observed_at
            horizon = now - self.params.prune_interval_seconds
            for name in [n for n, t in seen.items() if t < horizon]:
                self.forget(name)
            self._next_prune = now + self.params.prune_interval_seconds

    def forget(self, server: str) -> None:
        self.index.remove_server(server)
        self._last_seen.pop(server, None)
        self._tuned_capacity.pop(server, None)
        if any(e.name == server for e in self._observed):
            self._observed = ()  # its sighting must not be written back

    def endpoint_event(self, event: EndpointEvent) -> None:
        """Datastore listener: prune a server as soon as it leaves the pool."""
        if event.kind is EndpointEventKind.REMOVED:
            self.forget(event.endpoint.name)

    # -- Scorer --------------------------------------------------------------------------------

    def match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixMatch:
        """This cycle's match (from PrepareData; computed now if no hook ran). Read by the
        plugins that consume prefix data (``prefix-cache-affinity-filter``, ``no-hit-lru-scorer``,
        the latency predictor)."""
        match = state.get(self._key, None)
        if match is None:  # PrepareData did not run this cycle: no prefix data
            return NO_MATCH
        return match

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        match = self.match(state, request, endpoints)
        total = match.total_blocks
        if total == 0 or not match.matched:  # no endpoint holds a block: no guard needed
            return ScoreColumn.uniform(endpoints, 0.0)
        matched = match.matched
        explain = state.get(EXPLAIN, None)
        if explain is not None:
            overloaded = self.guard.overloaded(endpoints)
            explain.append(
                f"level {match.level}: {total} blocks; matched "
                + ", ".join(f"{n}={c}" for n, c in sorted(matched.items()))
                + (f"; overloaded (affinity off): {sorted(overloaded)}" if overloaded else "")
            )
        # matched / total on the servers holding a block (0 elsewhere and on overloaded ones):
        # a sparse column, so only those few are touched here and in the profile
        got = self.guard.loads_over(endpoints)
        if got is None:
            return ScoreColumn.sparse(endpoints, {n: c / total for n, c in matched.items()})
        loads, limit = got
        return ScoreColumn.sparse(
            endpoints, held_not_overloaded(endpoints, loads, matched, total, limit)
        )

    # -- PreRequest ----------------------------------------------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        match = state.get(self._key, None)
        if match is None or not match.hashes:  # None: no PrepareData pass
            return
        hashes = match.hashes
        targets = []
        primary = result.primary
        if primary is not None and primary.targets:
            targets.append(primary.targets[0])
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.targets and result.primary_profile != PREFILL_PROFILE:
            targets.append(prefill.targets[0])
        outbox = self._outbox
        for target in targets:
            self.index.add(target.name, hashes)
            if outbox is not None:
                outbox.append([target.name, list(hashes)])


def _prefix_entry(entry: object, max_blocks: int) -> tuple[str, list[int]]:
    """``[server, [hash, ...]]`` from a peer, checked (``ValueError`` when malformed)."""
    if not isinstance(entry, list) or len(entry) != 2:
        raise ValueError("prefix entry is not [server, hashes]")
    server, hashes = entry
    if not isinstance(server, str) or not server or not isinstance(hashes, list):
        raise ValueError("prefix entry types")
    if len(hashes) > max_blocks or not all(
        isinstance(h, int) and not isinstance(h, bool) and 0 <= h < 1 << 64 for h in hashes
    ):
        raise ValueError("prefix entry hashes")
    return server, hashes


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> PrefixCacheScorer:
    del handle
    params = parse_params(PrefixCacheParams, name, TYPE, parameters)
    try:
        return PrefixCacheScorer(name, params)
    except ConfigError as exc:
        raise PluginValidationError(f"plugin {name!r} ({TYPE}): {exc.message}") from exc


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_scorer: type[Scorer] = PrefixCacheScorer
_prepare: type[PrepareData] = PrefixCacheScorer
_pre: type[PreRequest] = PrefixCacheScorer
