"""``precise-prefix-cache-scorer`` (Affinity): score by the blocks the engines say they hold.

Formula::

    score(e) = leading_blocks_held(e) / total_blocks

``total_blocks`` is the number of full KV blocks of the request's token ids (tokenized with the
model's local tokenizer and chat template, ``tokenization.py``) and ``leading_blocks_held(e)`` is
how many of them, from the start and without a gap, server ``e`` holds according to its KV
events (``precise_index.py``) or a speculative entry (a request routed to ``e`` less than
``speculativeTtlSeconds`` ago whose events have not arrived yet). The anti-hotspot rule of
``hotspot.py`` applies as in ``prefix-cache-scorer``.

KV events endpoint per server (documented convention, first match wins):

1. the endpoint label ``kvroute.io/kv-events-endpoint`` (a full ZMQ address,
   ``tcp://10.0.0.7:5557``);
2. ``kvEventsPort`` (a fixed port on the endpoint's address; vLLM's default publisher is
   ``tcp://*:5557``);
3. the endpoint's serving port + ``kvEventsPortOffset`` (default 1000: 8000 -> 9000).

Each data-parallel rank is its own endpoint and publishes on its own port (vLLM offsets the
port by the rank). The engine's KV block size is learned from its events (``block_size``),
else from ``vllm:cache_config_info`` (auto-tune), else ``blockSizeTokens``.

Lifecycle (run by :func:`kvroute.wiring.build_epp`, never from a request): ``attach(datastore)``
records a subscription for every endpoint and follows the datastore's endpoint events (a new
endpoint is subscribed, one that leaves is unsubscribed and forgotten); ``run_background()``
runs the subscriber, whose task group owns the sockets; ``aclose()`` stops them all. Without a
PrepareData pass (the director always runs one) or when the tokenizer cannot encode the
request, every endpoint scores 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import Field

from kvroute.datalayer.kvevents import KvEventSubscriber
from kvroute.datalayer.tokenization import PromptTokenizer, RequestTokenizer
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.framework.hooks import PrepareData, PreRequest
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, PrefixCacheMatchInfo
from kvroute.hostport import format_hostport
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
from kvroute.scheduling.plugins.prefix.hashing import token_block_hashes, token_root_hash
from kvroute.scheduling.plugins.prefix.hotspot import HotspotGuard, HotspotPolicy
from kvroute.scheduling.plugins.prefix.precise_index import PreciseIndex
from kvroute.scheduling.request import InferenceRequest

T = TypeVar("T")

TYPE = "precise-prefix-cache-scorer"
KV_EVENTS_ENDPOINT_LABEL = "kvroute.io/kv-events-endpoint"


class PrecisePrefixParams(PluginParams):
    tokenizer: str | None = None
    tokenizer_cache_size: int = Field(default=1024, alias="tokenizerCacheSize", ge=0)
    auto_tune: bool = Field(default=True, alias="autoTune")
    block_size_tokens: int = Field(default=16, alias="blockSizeTokens", gt=0)
    max_prefix_blocks_to_match: int = Field(default=2048, alias="maxPrefixBlocksToMatch", gt=0)
    kv_events_port: int | None = Field(default=None, alias="kvEventsPort", gt=0, lt=65536)
    kv_events_port_offset: int = Field(default=1000, alias="kvEventsPortOffset")
    subscribe: bool = True  # false: events are fed to ``index`` by the caller (sim, bench)
    speculative_ttl_seconds: float = Field(default=2.0, alias="speculativeTtlSeconds", ge=0)
    reorder_window: int = Field(default=8, alias="reorderWindow", ge=0)
    max_blocks_per_server: int = Field(default=4_000_000, alias="maxBlocksPerServer", gt=0)
    hotspot_policy: HotspotPolicy = Field(default=HotspotPolicy.LOAD_BOUND, alias="hotspotPolicy")
    hotspot_abs_slack: float = Field(default=16.0, alias="hotspotAbsSlack", ge=0)
    hotspot_rel_slack: float = Field(default=1.5, alias="hotspotRelSlack", ge=1.0)


@dataclass(frozen=True, slots=True)
class PreciseMatch:
    total_blocks: int
    matched: Mapping[str, int]
    hashes: Mapping[str, tuple[int, ...]]  # per server (block size and LoRA root may differ)


def _by_name(endpoint: Endpoint) -> str:
    return endpoint.name


def match_token_blocks(
    index: PreciseIndex,
    tokens: Sequence[int],
    request: InferenceRequest,
    endpoints: Sequence[Endpoint],
    *,
    key: Callable[[Endpoint], str],
    block_size: Callable[[Endpoint], int],
    max_blocks: int,
    now: float,
) -> PreciseMatch:
    """How many leading blocks of ``tokens`` each endpoint holds in ``index``.

    Endpoints with the same block size and KV namespace (the LoRA adapter when the endpoint
    serves it, else the base model) share one hash chain; ``key(e)`` is the server name the
    index knows ``e`` by. The result is keyed by endpoint name.
    """
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    model = request.target_model
    for e in endpoints:
        lora = (
            model if model in e.metrics.active_models or model in e.metrics.waiting_models else ""
        )
        groups.setdefault((block_size(e), lora), []).append(e)
    matched: dict[str, int] = {}
    hashes: dict[str, tuple[int, ...]] = {}
    total = 0
    for (size, lora), members in groups.items():
        chain = tuple(
            token_block_hashes(
                tokens, block_size=size, root=token_root_hash(lora), max_blocks=max_blocks
            )
        )
        total = max(total, len(chain))
        counts = index.matched_blocks(chain, [key(e) for e in members], now)
        for e in members:
            hashes[e.name] = chain
            matched[e.name] = counts[key(e)]
    return PreciseMatch(total, matched, hashes)


class PrecisePrefixCacheScorer:
    """Level 3: a global index fed by every server's KV events."""

    category = ScorerCategory.AFFINITY

    def __init__(
        self,
        name: str = TYPE,
        params: PrecisePrefixParams | None = None,
        *,
        tokenizer: RequestTokenizer | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or PrecisePrefixParams()
        if tokenizer is None:
            if not p.tokenizer:
                raise ConfigError("a tokenizer directory is required (parameters.tokenizer)")
            tokenizer = PromptTokenizer.from_directory(
                p.tokenizer, cache_size=p.tokenizer_cache_size
            )
        self.tokenizer: RequestTokenizer = tokenizer
        self.index = PreciseIndex(max_blocks_per_server=p.max_blocks_per_server)
        self.guard = HotspotGuard(p.hotspot_policy, p.hotspot_abs_slack, p.hotspot_rel_slack)
        self.subscriber: KvEventSubscriber | None = None
        self._key: StateKey[PreciseMatch] = StateKey(f"precise-prefix-match/{name}")
        self._known: dict[str, str] = {}  # server -> its KV events address
        self._outbox: list[list[Any]] | None = None  # replicated speculative entries

    # -- event subscriptions -------------------------------------------------------------------

    def blocks_held(self, endpoint: str) -> int:
        """Prefix blocks the index holds for ``endpoint`` (the live pool page shows it)."""
        return self.index.size(endpoint)

    def kv_events_endpoint(self, endpoint: Endpoint) -> str:
        """The ZMQ address of ``endpoint``'s KV event publisher (see the module docstring)."""
        label = endpoint.labels.get(KV_EVENTS_ENDPOINT_LABEL)
        if label:
            return label
        port = self.params.kv_events_port or endpoint.port + self.params.kv_events_port_offset
        return f"tcp://{format_hostport(endpoint.address, port)}"

    def attach(self, datastore: Datastore) -> None:
        """Follow ``datastore``: subscribe to every endpoint now and as they come and go.

        Only records the subscriptions; ``run_background()`` opens them.
        """
        for endpoint in datastore.endpoints():
            self._ensure_subscribed(endpoint)
        datastore.subscribe(self.endpoint_event)

    def endpoint_event(self, event: EndpointEvent) -> None:
        if event.kind is EndpointEventKind.REMOVED:
            self.forget(event.endpoint.name)
        else:
            self._ensure_subscribed(event.endpoint)

    def forget(self, server: str) -> None:
        self._known.pop(server, None)
        if self.subscriber is not None:
            self.subscriber.unsubscribe(server)
        self.index.remove_server(server)

    def _ensure_subscribed(self, endpoint: Endpoint) -> None:
        if not self.params.subscribe:
            return
        address = self.kv_events_endpoint(endpoint)
        if self._known.get(endpoint.name) == address:
            return
        if endpoint.name in self._known:  # the address changed: the old blocks are gone
            self.index.remove_server(endpoint.name)
        self._known[endpoint.name] = address
        self._subscriber().subscribe(endpoint.name, address)

    def _subscriber(self) -> KvEventSubscriber:
        if self.subscriber is None:
            self.subscriber = KvEventSubscriber(
                self.index, reorder_window=self.params.reorder_window
            )
        return self.subscriber

    async def run_background(self) -> None:
        """Run the KV-event subscriptions until cancelled (a no-op with ``subscribe: false``)."""
        if self.params.subscribe:
            await self._subscriber().run()

    async def aclose(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.aclose()
            self.subscriber = None
        self._known.clear()

    # -- PrepareData ---------------------------------------------------------------------------

    def block_size(self, endpoint: Endpoint) -> int:
        learned = self.index.block_size(endpoint.name)
        if learned > 0:
            return learned
        if self.params.auto_tune and endpoint.metrics.cache_block_size > 0:
            return endpoint.metrics.cache_block_size
        return self.params.block_size_tokens

    def prefetch(self, request: InferenceRequest) -> Sequence[int] | None:
        """Token ids of ``request``; the director runs this in a worker thread before
        scheduling (tokenizers release the GIL) and hands the result to :meth:`prepare_data`."""
        return self.tokenizer.encode_request(request)

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        match = self._match(state, request, endpoints)
        state.write(self._key, match)
        # The public view P/D deciders read (upstream's PrefixCacheMatchInfo attribute).
        sizes = {e.name: self.block_size(e) for e in endpoints}
        cached = {n: b * sizes.get(n, 0) for n, b in match.matched.items()}
        state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo(cached))

    def _match(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> PreciseMatch:
        prefetched = state.get(PREFETCHED, None)
        if prefetched is not None and self.typed_name.name in prefetched:
            tokens = cast("Sequence[int] | None", prefetched[self.typed_name.name])
        else:
            tokens = self.tokenizer.encode_request(request)
        if tokens is None:
            return PreciseMatch(0, {}, {})
        return match_token_blocks(
            self.index,
            tokens,
            request,
            endpoints,
            key=_by_name,
            block_size=self.block_size,
            max_blocks=self.params.max_prefix_blocks_to_match,
            now=state.now,
        )

    # -- Scorer --------------------------------------------------------------------------------

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        match = state.get(self._key, None)
        if match is None:  # no PrepareData pass: nothing matched
            return {e.name: 0.0 for e in endpoints}
        overloaded = self.guard.overloaded(endpoints)
        explain = state.get(EXPLAIN, None)
        if explain is not None:
            explain.append(
                f"precise: {match.total_blocks} blocks; held "
                + ", ".join(f"{n}={c}" for n, c in sorted(match.matched.items()))
                + (f"; overloaded (affinity off): {sorted(overloaded)}" if overloaded else "")
            )
        scores: dict[str, float] = {}
        for e in endpoints:
            chain = match.hashes.get(e.name, ())
            if not chain or e.name in overloaded:
                scores[e.name] = 0.0
            else:
                scores[e.name] = match.matched.get(e.name, 0) / len(chain)
        return scores

    # -- PreRequest ----------------------------------------------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.params.speculative_ttl_seconds <= 0:
            return
        match = state.get(self._key, None)
        primary = result.primary
        if match is None or primary is None or not primary.targets:
            return
        target = primary.targets[0]
        chain = match.hashes.get(target.name)
        if chain:
            ttl = self.params.speculative_ttl_seconds
            self.index.add_speculative(target.name, chain, now=state.now, ttl=ttl)
            outbox = self._outbox
            if outbox is not None:
                outbox.append([target.name, ttl, list(chain)])

    # -- ReplicatedState (active-active peers; kvroute.replicasync) ----------------------------

    def replication_channel(self) -> str:
        return f"{TYPE}/{self.typed_name.name}"

    def drain_replicated(self) -> list[Any]:
        """Speculative entries made here since the last drain: ``[server, ttl_s, [hash...]]``
        (the remaining TTL, never an absolute time). Stored blocks need no sync: every replica
        subscribes to the engines' KV events itself."""
        out, self._outbox = self._outbox or [], []
        return out

    def merge_replicated(self, entries: Sequence[object], now: float) -> None:
        checked = checked_speculative_entries(entries, self.params.speculative_ttl_seconds)
        for server, ttl, hashes in checked:
            if ttl > 0 and server in self._known:
                self.index.add_speculative(server, hashes, now=now, ttl=ttl)


def checked_speculative_entries(
    entries: Sequence[object], max_ttl: float
) -> list[tuple[str, float, list[int]]]:
    """A peer's ``[server, ttl_s, [hash...]]`` entries, validated all before any is applied
    (``ValueError`` on a malformed one); each TTL capped at ``max_ttl``."""
    checked = []
    for e in entries:
        if not isinstance(e, list) or len(e) != 3:
            raise ValueError("speculative entry is not [server, ttl, hashes]")
        server, ttl, hashes = e
        if not isinstance(server, str) or not isinstance(ttl, int | float):
            raise ValueError("speculative entry types")
        if not isinstance(hashes, list) or len(hashes) > 1 << 16:
            raise ValueError("speculative entry hashes")
        if not all(isinstance(h, int) and not isinstance(h, bool) for h in hashes):
            raise ValueError("speculative entry hashes")
        checked.append((server, min(float(ttl), max_ttl), hashes))
    return checked


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrecisePrefixCacheScorer:
    del handle
    params = parse_params(PrecisePrefixParams, name, TYPE, parameters)
    try:
        return PrecisePrefixCacheScorer(name, params)
    except ConfigError as exc:
        raise PluginValidationError(f"plugin {name!r} ({TYPE}): {exc.message}") from exc


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_scorer: type[Scorer] = PrecisePrefixCacheScorer
_prepare: type[PrepareData] = PrecisePrefixCacheScorer
_pre: type[PreRequest] = PrecisePrefixCacheScorer
