"""``precise-prefix-cache-producer``: the KV-event prefix index as a data producer.

llm-d-router v0.10 split its precise prefix scorer into this producer, which owns the index fed
by the engines' ZMQ KV events and publishes each endpoint's prefix match, and the generic
``prefix-cache-scorer`` that scores from it. Its samples declare::

    - type: token-producer                      # vllm backend: the engine's token ids
      parameters: {modelName: ..., vllm: {url: http://localhost:8000}}
    - type: endpoint-notification-source
    - type: precise-prefix-cache-producer
      parameters: {tokenProcessorConfig: {blockSize: 64}}
    - type: prefix-cache-scorer
      parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
    dataLayer: {sources: [{pluginRef: endpoint-notification-source,
                           extractors: [{pluginRef: precise-prefix-cache-producer}]}]}

Here the index is :class:`~kvroute.scheduling.plugins.prefix.precise_index.PreciseIndex` and
the KV-event decoding and subscriptions are :mod:`kvroute.datalayer.kvevents`, shared with the
deprecated one-plugin ``precise-prefix-cache-scorer``; the index is keyed by ``address:port``
(upstream's pod identifier). Per request (PrepareData) the producer hashes the request's token
ids into blocks and writes, per candidate endpoint, how many leading blocks it holds (its events
or a live speculative entry) and the ``PrefixCacheMatchInfo`` view; ``prefix-cache-scorer``
naming it scores ``held / total blocks``, and the plugins that consume a prefix match
(``no-hit-lru-scorer``, ``prefix-cache-affinity-filter``) read the same match.

Token ids, first match wins: the rendered ids of a ``token-producer`` with the ``vllm`` backend
declared before it (named ``token-producer`` or ``tokenizer``); else the local tokenizer of
kvroute's ``tokenizer`` parameter (a tokenizer directory, as the deprecated scorer). With
neither (upstream would hash its text estimate, which no engine event can match) or when the
render fails, nothing matches and every endpoint scores 0.

Where events come from:

* ``dataLayer``: listed under ``endpoint-notification-source`` with ``kvEventsConfig.discoverPods``
  (true), each endpoint gets one subscription at ``tcp://<address>:<socketPort + rank>``
  (``podDiscoveryConfig.socketPort`` 5557; the rank from kvroute's ``<pod>-rank-<i>`` endpoint
  names, 0 otherwise; the endpoint label ``kvroute.io/kv-events-endpoint`` overrides the
  address), opened when it is added and closed, with its blocks dropped, when it leaves. Not
  listed under the source, the producer opens no per-endpoint subscription (as upstream).
* ``kvEventsConfig.zmqEndpoint`` (global socket): the producer binds that address and the
  engines connect to it; each message's topic must be ``kv@<address:port>@<model>``
  (:mod:`kvroute.datalayer.kvevents_bound`). Both may run at once.

``kvEventsConfig.topicFilter`` ("kv@") is the SUB subscription prefix of both.

Parameters (upstream's names and defaults) and what they do here:

* ``tokenProcessorConfig.blockSizeTokens`` (16; the deprecated ``blockSize`` is used when it is
  unset; 0 = unset): the block size for an endpoint whose engine has not reported its own yet.
  kvroute hashes events at the engine's block size (learned from its ``BlockStored`` events,
  else its ``cache_config_info`` metric), so blocks are counted at that granularity once known.
* ``tokenProcessorConfig.hashSeed`` and ``hashAlgorithm`` (``cbor-fnv``|``xxh64``): accepted,
  and changing them changes nothing observable: kvroute hashes both the request and the event
  token ids with its own chain (``hashing.py``) in a process-local index, so the keys never leave
  the process and no seed or algorithm can make a block match or not match.
* ``kvEventsConfig.engineType``: ``vllm`` only; ``sglang`` is rejected (kvroute decodes vLLM's
  wire format only). ``concurrency`` (4) is accepted: upstream's worker-shard count; kvroute
  applies each endpoint's events in order on the event loop, so it changes only throughput.
  ``podDiscoveryConfig.podLabelSelector``/``podNamespace`` are accepted and unused, as in
  upstream's producer (which takes its endpoints from the notification source).
  ``podDiscoveryConfig.replaySocketPort`` > 0 is rejected (no replay socket here: lost events
  drop the endpoint's entries until fresh ones arrive).
* ``indexerConfig.kvBlockIndexConfig.enableMetrics`` (false): keeps upstream's index counters
  (:meth:`PrecisePrefixCacheProducer.index_metrics`: ``kv_cache_index_admissions_total``,
  ``_evictions_total``, ``_lookup_requests_total``, ``_lookup_hits_total`` = the best
  endpoint's leading blocks per lookup; all 0 while it is false) and, with
  ``metricsLoggingInterval`` (a Go duration in nanoseconds, or a duration string; 0 = off),
  logs them at INFO every interval. kvroute's ``/metrics`` does not export them yet.
  ``inMemoryConfig``, ``redisConfig``, ``costAwareMemoryConfig`` and
  ``indexerConfig.kvCacheBackendConfigs`` (per-medium weights) are rejected by name: kvroute's
  index is in-memory, bounded by what the engines hold, and counts a block held in any medium
  as one block. ``tokenizersPoolConfig`` is rejected, as upstream.
* ``speculativeIndexing`` (false), ``speculativeTTL`` ("2s"): after a routing decision, the
  chosen endpoint (and the prefill endpoint, if any) is assumed to hold the request's blocks for
  the TTL, which covers the time until its own events arrive; these entries are shared with
  active-active peers (``ReplicatedState``), stored blocks are not (each replica subscribes).
* kvroute's own: ``tokenizer``, ``tokenizerCacheSize`` (1024), ``maxPrefixBlocksToMatch``
  (2048), ``reorderWindow`` (8), ``maxBlocksPerServer`` (4000000).

Upstream's per-medium (device-tier) breakdown of the match is not produced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import zmq

from kvroute.datalayer.kvevents import KvEventSubscriber
from kvroute.datalayer.kvevents_bound import BoundKvEventListener
from kvroute.datalayer.tokenization import PromptTokenizer, RequestTokenizer
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.framework.endpoint import split_rank_name
from kvroute.framework.hooks import PrepareData, PreRequest
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, PrefixCacheMatchInfo
from kvroute.hostport import format_hostport
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    PREFETCHED,
    CycleState,
    SchedulingResult,
    ScorerCategory,
    StateKey,
)
from kvroute.scheduling.plugins.params import parse_params
from kvroute.scheduling.plugins.prefix.approximate import PREFILL_PROFILE, PrefixMatch
from kvroute.scheduling.plugins.prefix.precise import (
    KV_EVENTS_ENDPOINT_LABEL,
    PreciseMatch,
    checked_speculative_entries,
    match_token_blocks,
)
from kvroute.scheduling.plugins.prefix.precise_index import PreciseIndex
from kvroute.scheduling.plugins.prefix.precise_params import PreciseProducerParams
from kvroute.scheduling.plugins.prefix.render import RenderTokenProducer
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)

TYPE = "precise-prefix-cache-producer"
TOKEN_PRODUCER_NAMES = ("token-producer", "tokenizer")
BIND_RETRY_S = 5.0
INDEX_METRICS = (  # upstream's names (pkg/kvcache/metrics), without the llm_d_epp_ prefix
    "kv_cache_index_admissions_total",
    "kv_cache_index_evictions_total",
    "kv_cache_index_lookup_requests_total",
    "kv_cache_index_lookup_hits_total",
)


@dataclass(frozen=True, slots=True)
class _Cycle:
    match: PreciseMatch  # keyed by endpoint name


def index_key(endpoint: Endpoint) -> str:
    """The index's name for ``endpoint``: ``address:port`` (upstream's pod identifier)."""
    return f"{endpoint.address}:{endpoint.port}"


def rank_of(endpoint: Endpoint) -> int:
    """Data-parallel rank from kvroute's ``<pod>-rank-<i>`` endpoint names (else 0)."""
    return split_rank_name(endpoint.name)[1] or 0


class PrecisePrefixCacheProducer:
    """See the module docstring."""

    category = ScorerCategory.AFFINITY

    def __init__(
        self,
        name: str = TYPE,
        params: PreciseProducerParams | None = None,
        *,
        tokenizer: RequestTokenizer | None = None,
        token_source: str | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or PreciseProducerParams()
        if tokenizer is None and p.tokenizer:
            tokenizer = PromptTokenizer.from_directory(
                p.tokenizer, cache_size=p.tokenizer_cache_size
            )
        self.tokenizer = tokenizer
        self.token_source = token_source  # a vllm token-producer's name
        self.index = PreciseIndex(max_blocks_per_server=p.max_blocks_per_server)
        events = p.kv_events_config
        self.subscriber: KvEventSubscriber | None = None
        self.listener: BoundKvEventListener | None = None
        if events.zmq_endpoint:
            self.listener = BoundKvEventListener(
                self.index,
                events.zmq_endpoint,
                topic_filter=events.topic_filter,
                reorder_window=p.reorder_window,
            )
        self._key: StateKey[_Cycle] = StateKey(f"precise-prefix-producer/{name}")
        self._subscribed: dict[str, str] = {}  # endpoint name -> its KV events address
        self._keys: dict[str, str] = {}  # endpoint name -> index key, as notified
        self.connected: set[str] = set()  # index keys whose publisher a subscription reached
        self._outbox: list[list[Any]] | None = None  # replicated speculative entries
        self.metrics_enabled = p.indexer_config.kv_block_index_config.enable_metrics
        self.lookups = 0  # with enableMetrics: lookups made
        self.lookup_hits = 0  # with enableMetrics: the best endpoint's leading blocks, summed

    # -- endpoint events (endpoint-notification-source) ----------------------------------------

    def kv_events_endpoint(self, endpoint: Endpoint) -> str:
        label = endpoint.labels.get(KV_EVENTS_ENDPOINT_LABEL)
        if label:
            return label
        port = self.params.kv_events_config.pod_discovery_config.socket_port + rank_of(endpoint)
        return f"tcp://{format_hostport(endpoint.address, port)}"

    def extract_endpoint(self, event: EndpointEvent) -> None:
        endpoint = event.endpoint
        if event.kind is EndpointEventKind.REMOVED:
            self._forget(endpoint)
            return
        key = index_key(endpoint)
        old_key = self._keys.get(endpoint.name)
        if old_key is not None and old_key != key:
            self._forget(endpoint)  # the endpoint moved: its old blocks are gone
        self._keys[endpoint.name] = key
        if not self.params.kv_events_config.discover_pods:
            return
        address = self.kv_events_endpoint(endpoint)
        if self._subscribed.get(endpoint.name) == address:
            return
        if endpoint.name in self._subscribed:  # a new publisher address: a new stream
            self.index.remove_server(key)
            self.connected.discard(key)
        self._subscribed[endpoint.name] = address
        self._subscriber().subscribe(key, address)

    def _forget(self, endpoint: Endpoint) -> None:
        key = self._keys.pop(endpoint.name, index_key(endpoint))
        self._subscribed.pop(endpoint.name, None)
        self.connected.discard(key)
        if self.subscriber is not None:
            self.subscriber.unsubscribe(key)
        if self.listener is not None:
            self.listener.forget(key)
        self.index.remove_server(key)

    def _subscriber(self) -> KvEventSubscriber:
        if self.subscriber is None:
            self.subscriber = KvEventSubscriber(
                self.index,
                reorder_window=self.params.reorder_window,
                on_connected=self.connected.add,
                topic_filter=self.params.kv_events_config.topic_filter,
            )
        return self.subscriber

    def blocks_held(self, endpoint: str) -> int:
        return self.index.size(self._keys.get(endpoint, endpoint))

    # -- background ----------------------------------------------------------------------------

    async def run_background(self) -> None:
        """Run the per-endpoint subscriptions, the global socket and the metrics log."""
        async with asyncio.TaskGroup() as tg:
            if self.params.kv_events_config.discover_pods:
                tg.create_task(self._subscriber().run(), name=f"{TYPE} subscriptions")
            if self.listener is not None:
                tg.create_task(self._run_listener(self.listener), name=f"{TYPE} global socket")
            index_cfg = self.params.indexer_config.kv_block_index_config
            if index_cfg.enable_metrics and index_cfg.metrics_logging_interval > 0:
                tg.create_task(self._log_metrics(index_cfg.metrics_logging_interval))

    async def _run_listener(self, listener: BoundKvEventListener) -> None:
        # A bind failure (address in use, not local) is retried on its own, so that it does not
        # take the per-endpoint subscriptions down with it.
        while True:
            try:
                await listener.run()
            except zmq.ZMQError as exc:
                log.warning(
                    "%s %r: cannot bind kvEventsConfig.zmqEndpoint %r: %s (retrying in %.0fs)",
                    TYPE,
                    self.typed_name.name,
                    listener.address,
                    exc,
                    BIND_RETRY_S,
                )
            await asyncio.sleep(BIND_RETRY_S)

    async def _log_metrics(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            log.info("%s", self.metrics_line())

    def index_metrics(self) -> dict[str, int]:
        """Upstream's index counters (all 0 unless ``enableMetrics``)."""
        if not self.metrics_enabled:
            return dict.fromkeys(INDEX_METRICS, 0)
        s = self.index.stats
        values = (s.stored, s.removed, self.lookups, self.lookup_hits)
        return dict(zip(INDEX_METRICS, values, strict=True))

    def metrics_line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.index_metrics().items())
        return f"{TYPE} {self.typed_name.name!r}: {counts} keys={len(self.index)}"

    async def aclose(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.aclose()
            self.subscriber = None
        self._subscribed.clear()

    # -- PrepareData ---------------------------------------------------------------------------

    def block_size(self, endpoint: Endpoint) -> int:
        learned = self.index.block_size(index_key(endpoint))
        if learned > 0:
            return learned
        if endpoint.metrics.cache_block_size > 0:
            return endpoint.metrics.cache_block_size
        return self.params.token_processor_config.effective_block_size

    def prefetch(self, request: InferenceRequest) -> Sequence[int] | None:
        """Local tokenizer ids (only without a vllm token-producer; run in a worker thread)."""
        if self.token_source is not None or self.tokenizer is None:
            return None
        return self.tokenizer.encode_request(request)

    def _tokens(self, state: CycleState, request: InferenceRequest) -> Sequence[int] | None:
        prefetched = state.get(PREFETCHED, None) or {}
        if self.token_source is not None:
            return cast("Sequence[int] | None", prefetched.get(self.token_source))
        if self.tokenizer is None:
            return None
        if self.typed_name.name in prefetched:
            return cast("Sequence[int] | None", prefetched[self.typed_name.name])
        return self.tokenizer.encode_request(request)

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        tokens = self._tokens(state, request)
        if not tokens:
            match = PreciseMatch(0, {}, {})
        else:
            match = match_token_blocks(
                self.index,
                tokens,
                request,
                endpoints,
                key=index_key,
                block_size=self.block_size,
                max_blocks=self.params.max_prefix_blocks_to_match,
                now=state.now,
            )
            if self.metrics_enabled:
                self.lookups += 1
                self.lookup_hits += max(match.matched.values(), default=0)
        state.write(self._key, _Cycle(match))
        sizes = {e.name: self.block_size(e) for e in endpoints}
        cached = {n: b * sizes.get(n, 0) for n, b in match.matched.items()}
        state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo(cached))

    # -- what consumers read -------------------------------------------------------------------

    def match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixMatch:
        """This cycle's match as a prefix consumer reads it (level 2: token blocks)."""
        cycle = state.get(self._key, None)
        if cycle is None or not cycle.match.hashes:
            return PrefixMatch(level=2, hashes=(), matched={})
        longest = max(cycle.match.hashes.values(), key=len)
        return PrefixMatch(level=2, hashes=longest, matched=cycle.match.matched)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        """``held / total`` blocks per endpoint (what ``prefix-cache-scorer`` returns)."""
        cycle = state.get(self._key, None)
        scores: dict[str, float] = {}
        for e in endpoints:
            chain = cycle.match.hashes.get(e.name, ()) if cycle is not None else ()
            held = cycle.match.matched.get(e.name, 0) if cycle is not None else 0
            scores[e.name] = held / len(chain) if chain else 0.0
        return scores

    # -- PreRequest ----------------------------------------------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if not self.params.speculative_indexing:
            return
        cycle = state.get(self._key, None)
        if cycle is None:
            return
        targets = []
        primary = result.primary
        if primary is not None and primary.targets:
            targets.append(primary.targets[0])
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.targets and result.primary_profile != PREFILL_PROFILE:
            targets.append(prefill.targets[0])
        ttl = self.params.speculative_ttl
        for target in targets:
            chain = cycle.match.hashes.get(target.name)
            if chain:
                self.index.add_speculative(index_key(target), chain, now=state.now, ttl=ttl)
                if self._outbox is not None:
                    self._outbox.append([index_key(target), ttl, list(chain)])

    # -- ReplicatedState (active-active peers; kvroute.replicasync) ----------------------------

    def replication_channel(self) -> str:
        return f"{TYPE}/{self.typed_name.name}"

    def drain_replicated(self) -> list[Any]:
        """Speculative entries made here since the last drain: ``[address:port, ttl_s,
        [hash...]]``. Stored blocks need no sync: every replica has its own subscriptions."""
        out, self._outbox = self._outbox or [], []
        return out

    def merge_replicated(self, entries: Sequence[object], now: float) -> None:
        checked = checked_speculative_entries(entries, self.params.speculative_ttl)
        known = set(self._keys.values())
        if self.listener is not None:
            known |= self.listener.pods
        for server, ttl, hashes in checked:
            if ttl > 0 and server in known:
                self.index.add_speculative(server, hashes, now=now, ttl=ttl)


def _token_source(handle: PluginHandle) -> str | None:
    for token_name in TOKEN_PRODUCER_NAMES:
        try:
            plugin = handle.plugin(token_name)
        except PluginValidationError:
            continue
        if isinstance(plugin, RenderTokenProducer):
            return plugin.typed_name.name
    return None


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrecisePrefixCacheProducer:
    params = parse_params(PreciseProducerParams, name, TYPE, parameters)
    try:
        return PrecisePrefixCacheProducer(name, params, token_source=_token_source(handle))
    except ConfigError as exc:  # an unreadable tokenizer directory
        raise PluginValidationError(
            f"plugin {name!r} ({TYPE}): parameters.tokenizer: {exc.message}"
        ) from exc


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_prepare: type[PrepareData] = PrecisePrefixCacheProducer
_pre: type[PreRequest] = PrecisePrefixCacheProducer
