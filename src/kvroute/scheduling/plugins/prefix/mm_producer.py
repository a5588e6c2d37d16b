"""``mm-embeddings-cache-producer``: which endpoint recently encoded which media item.

llm-d-router v0.10 splits the multimodal encoder-cache affinity into a data producer that owns
the per-endpoint record and ``mm-embeddings-cache-scorer`` that scores from it. Here the producer
owns :class:`MmItemCache` (an LRU of media-item keys per endpoint, filled at PreRequest with the
distinct items of each request sent there). At PrepareData it writes this cycle's
:class:`EncoderCacheMatch` (matched items per candidate) into the CycleState;
``mm-embeddings-cache-scorer`` declared after it scores from that match instead of keeping its
own cache (declared alone, the scorer keeps its own, as before).

Items are the request's ``media`` keys, which kvroute's parser takes from the typed
chat-completions media blocks (upstream's "lightweight fallback"; the render service's
multimodal hashes are not used).

Endpoint lifecycle: an endpoint REMOVED event (the producer is a datastore listener; in the
samples it is also listed as an extractor of ``endpoint-notification-source``) drops that
endpoint's record at once.

Parameters: ``cacheSizeInMBPerServer`` (4096; values <= 0 fall back to it, as upstream):
entries per endpoint = MiB / 2 MiB per item. ``cacheSizeInMB`` is accepted as another spelling
of the same budget (upstream's own ``epp-mm-embeddings-cache-config.yaml`` sample uses it);
giving both is rejected by name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import EndpointEvent, EndpointEventKind
from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import PrepareData, PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.lifecycle import DatastoreListener
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, StateKey
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "mm-embeddings-cache-producer"
DEFAULT_CACHE_MB = 4096
ENTRY_SIZE_MB = 2.0  # upstream's fixed assumption per tracked item
MAX_ENDPOINTS = 4096


class MmItemCache:
    """Per-endpoint LRU of media-item keys, ``capacity`` entries per endpoint."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._caches: dict[str, OrderedDict[str, None]] = {}

    def record(self, endpoint: str, keys: Iterable[str]) -> None:
        cache = self._caches.get(endpoint)
        if cache is None:
            if len(self._caches) >= MAX_ENDPOINTS:
                self._caches.pop(next(iter(self._caches)))
            cache = self._caches[endpoint] = OrderedDict()
        for k in keys:
            cache[k] = None
            cache.move_to_end(k)
        while len(cache) > self.capacity:
            cache.popitem(last=False)

    def hits(self, endpoint: str, keys: Iterable[str]) -> int:
        cache = self._caches.get(endpoint)
        return 0 if cache is None else sum(1 for k in keys if k in cache)

    def drop(self, endpoint: str) -> None:
        self._caches.pop(endpoint, None)

    def cached(self, endpoint: str) -> tuple[str, ...]:
        """The item keys recorded for ``endpoint``, least recently used first."""
        return tuple(self._caches.get(endpoint, ()))

    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._caches)


def request_items(request: InferenceRequest) -> tuple[str, ...]:
    """The request's distinct media-item keys, in order (repeats count once)."""
    return tuple(dict.fromkeys(item.key for item in request.media))


@dataclass(frozen=True, slots=True)
class EncoderCacheMatch:
    """What PrepareData found (upstream's EncoderCacheMatchInfo): matched items per endpoint."""

    items: tuple[str, ...]
    matched: Mapping[str, int]


class MmProducerParams(PluginParams):
    cache_size_mb_per_server: int | None = Field(default=None, alias="cacheSizeInMBPerServer")
    cache_size_mb: int | None = Field(default=None, alias="cacheSizeInMB")

    @model_validator(mode="after")
    def _one_spelling(self) -> MmProducerParams:
        if self.cache_size_mb_per_server is not None and self.cache_size_mb is not None:
            raise ValueError(
                "cacheSizeInMB and cacheSizeInMBPerServer name the same budget: give one"
            )
        return self

    @property
    def budget_mb(self) -> int:
        mb = self.cache_size_mb_per_server
        if mb is None:
            mb = self.cache_size_mb
        return DEFAULT_CACHE_MB if mb is None or mb <= 0 else mb


class MmEmbeddingsCacheProducer:
    """Records each request's media items on the endpoint it was sent to."""

    def __init__(self, name: str = TYPE, params: MmProducerParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or MmProducerParams()
        self.cache = MmItemCache(int(self.params.budget_mb / ENTRY_SIZE_MB))
        self.state_key: StateKey[EncoderCacheMatch] = StateKey(f"{TYPE}/{name}")

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        keys = request_items(request)
        matched = {e.name: n for e in endpoints if (n := self.cache.hits(e.name, keys))}
        state.write(self.state_key, EncoderCacheMatch(keys, matched))

    def match(self, state: CycleState, request: InferenceRequest) -> EncoderCacheMatch:
        """This cycle's match (from PrepareData; computed now if PrepareData did not run)."""
        found = state.get(self.state_key, None)
        if found is not None:
            return found
        keys = request_items(request)
        names = self.cache.endpoints()
        return EncoderCacheMatch(keys, {n: h for n in names if (h := self.cache.hits(n, keys))})

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        keys = request_items(request)
        primary = result.primary
        if keys and primary is not None and primary.targets:
            self.cache.record(primary.targets[0].name, keys)

    def endpoint_event(self, event: EndpointEvent) -> None:
        if event.kind is EndpointEventKind.REMOVED:
            self.cache.drop(event.endpoint.name)


def find_producer(handle: PluginHandle) -> MmEmbeddingsCacheProducer | None:
    """The last ``mm-embeddings-cache-producer`` declared so far (any name), or None."""
    plugins = getattr(handle, "plugins", None)
    if isinstance(plugins, Mapping):
        found = [p for p in plugins.values() if isinstance(p, MmEmbeddingsCacheProducer)]
        return found[-1] if found else None
    try:
        plugin = handle.plugin(TYPE)
    except PluginValidationError:  # not declared (or declared later)
        return None
    return plugin if isinstance(plugin, MmEmbeddingsCacheProducer) else None


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MmEmbeddingsCacheProducer:
    return MmEmbeddingsCacheProducer(name, parse_params(MmProducerParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[PreRequest] = MmEmbeddingsCacheProducer
_d: type[PrepareData] = MmEmbeddingsCacheProducer
_l: type[DatastoreListener] = MmEmbeddingsCacheProducer
