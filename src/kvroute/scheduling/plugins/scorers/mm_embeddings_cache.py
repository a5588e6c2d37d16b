"""``mm-embeddings-cache-scorer`` (Affinity): send a media item where its encoder output is cached.

A vision-language server caches the encoder output of each image (vLLM's encoder cache, keyed by
the item's hash) and the KV blocks of the prompt around it. The prefix scorer already sees the
item in the prompt's block chain, but only while the text *before* it matches; this scorer
catches the rest: the same picture asked about with another system prompt, in another turn
order, or in a second conversation.

Formula (llm-d-router ``mm-embeddings-cache-scorer``): the request's distinct media items that
the endpoint recently processed, divided by the request's distinct items; a request without
media gives no preference (no scores, so text traffic is untouched). kvroute keeps the
per-endpoint record itself (upstream splits it into ``mm-embeddings-cache-producer``): an LRU of
item keys per endpoint, filled at PreRequest with the items of each request sent there, of
``cacheSizeInMBPerServer / entrySizeMB`` entries (4096 / 2 MiB = 2048 items, upstream's sizing).

kvroute addition, as ``session-affinity-scorer``: an endpoint overloaded by the load-bound rule
(:mod:`~kvroute.scheduling.plugins.prefix.hotspot`, ``overloadAbsSlack`` requests *and*
``overloadRelSlack`` times busier than the least loaded candidate) scores 0, so a popular image
is replicated to a second server instead of queueing on the first ("when load allows").

Parameters: ``cacheSizeInMBPerServer`` (4096), ``entrySizeMB`` (2), ``overloadAbsSlack`` (16),
``overloadRelSlack`` (1.5).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.hooks import PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.hotspot import HotspotGuard
from kvroute.scheduling.request import InferenceRequest

TYPE = "mm-embeddings-cache-scorer"
MAX_ENDPOINTS = 4096


class MmEmbeddingsCacheParams(PluginParams):
    cache_size_mb_per_server: float = Field(default=4096.0, gt=0.0, alias="cacheSizeInMBPerServer")
    entry_size_mb: float = Field(default=2.0, gt=0.0, alias="entrySizeMB")
    overload_abs_slack: float = Field(default=16.0, ge=0.0, alias="overloadAbsSlack")
    overload_rel_slack: float = Field(default=1.5, ge=1.0, alias="overloadRelSlack")


class MmEmbeddingsCacheScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str = TYPE, params: MmEmbeddingsCacheParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or MmEmbeddingsCacheParams()
        self.capacity = max(1, int(p.cache_size_mb_per_server / p.entry_size_mb))
        self.guard = HotspotGuard(abs_slack=p.overload_abs_slack, rel_slack=p.overload_rel_slack)
        self._caches: dict[str, OrderedDict[str, None]] = {}

    @staticmethod
    def _keys(request: InferenceRequest) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item.key for item in request.media))

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        keys = self._keys(request)
        if not keys:
            return {}
        overloaded = self.guard.overloaded(endpoints)
        out: dict[str, float] = {}
        for e in endpoints:
            cache = self._caches.get(e.name)
            if cache is None or e.name in overloaded:
                continue
            hits = sum(1 for k in keys if k in cache)
            if hits:
                out[e.name] = hits / len(keys)
        return out

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        keys = self._keys(request)
        primary = result.primary
        if not keys or primary is None or not primary.targets:
            return
        name = primary.targets[0].name
        cache = self._caches.get(name)
        if cache is None:
            if len(self._caches) >= MAX_ENDPOINTS:
                self._caches.pop(next(iter(self._caches)))
            cache = self._caches[name] = OrderedDict()
        for k in keys:
            cache[k] = None
            cache.move_to_end(k)
        while len(cache) > self.capacity:
            cache.popitem(last=False)

    def cached(self, endpoint: str) -> tuple[str, ...]:
        """The item keys recorded for ``endpoint``, least recently used first."""
        return tuple(self._caches.get(endpoint, ()))


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MmEmbeddingsCacheScorer:
    return MmEmbeddingsCacheScorer(
        name, parse_params(MmEmbeddingsCacheParams, name, TYPE, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = MmEmbeddingsCacheScorer
_p: type[PreRequest] = MmEmbeddingsCacheScorer
