"""``mm-embeddings-cache-scorer`` (Affinity): send a media item where its encoder output is cached.

A vision-language server caches the encoder output of each image (vLLM's encoder cache, keyed by
the item's hash) and the KV blocks of the prompt around it. The prefix scorer already sees the
item in the prompt's block chain, but only while the text *before* it matches; this scorer
catches the rest: the same picture asked about with another system prompt, in another turn
order, or in a second conversation.

Formula (llm-d-router ``mm-embeddings-cache-scorer``): the request's distinct media items that
the endpoint recently processed, divided by the request's distinct items; a request without
media gives no preference (no scores, so text traffic is untouched). The per-endpoint record is
an LRU of item keys per endpoint, filled at PreRequest with the items of each request sent there.
With an ``mm-embeddings-cache-producer`` declared before the scorer (upstream's split), the
producer owns and fills that record and the scorer only reads it (its own cache parameters are
then rejected as ambiguous); declared alone, the scorer keeps its own record of
``cacheSizeInMBPerServer / entrySizeMB`` entries (4096 / 2 MiB = 2048 items, upstream's sizing).

kvroute addition, as ``session-affinity-scorer``: an endpoint overloaded by the load-bound rule
(:mod:`~kvroute.scheduling.plugins.prefix.hotspot`, ``overloadAbsSlack`` requests *and*
``overloadRelSlack`` times busier than the least loaded candidate) scores 0, so a popular image
is replicated to a second server instead of queueing on the first ("when load allows").

Parameters: ``cacheSizeInMBPerServer`` (4096), ``entrySizeMB`` (2), ``overloadAbsSlack`` (16),
``overloadRelSlack`` (1.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import PreRequest
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, SchedulingResult, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.hotspot import HotspotGuard
from kvroute.scheduling.plugins.prefix.mm_producer import TYPE as PRODUCER_TYPE
from kvroute.scheduling.plugins.prefix.mm_producer import (
    MmEmbeddingsCacheProducer,
    MmItemCache,
    find_producer,
    request_items,
)
from kvroute.scheduling.request import InferenceRequest

TYPE = "mm-embeddings-cache-scorer"


class MmEmbeddingsCacheParams(PluginParams):
    cache_size_mb_per_server: float = Field(default=4096.0, gt=0.0, alias="cacheSizeInMBPerServer")
    entry_size_mb: float = Field(default=2.0, gt=0.0, alias="entrySizeMB")
    overload_abs_slack: float = Field(default=16.0, ge=0.0, alias="overloadAbsSlack")
    overload_rel_slack: float = Field(default=1.5, ge=1.0, alias="overloadRelSlack")


class MmEmbeddingsCacheScorer:
    category = ScorerCategory.AFFINITY

    def __init__(
        self,
        name: str = TYPE,
        params: MmEmbeddingsCacheParams | None = None,
        producer: MmEmbeddingsCacheProducer | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = p = params or MmEmbeddingsCacheParams()
        self.producer = producer
        self.guard = HotspotGuard(abs_slack=p.overload_abs_slack, rel_slack=p.overload_rel_slack)
        if producer is not None:
            self.items = producer.cache
        else:
            self.items = MmItemCache(int(p.cache_size_mb_per_server / p.entry_size_mb))
        self.capacity = self.items.capacity

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if self.producer is not None:
            match = self.producer.match(state, request)
            keys, produced = match.items, match.matched
        else:
            keys, produced = request_items(request), None
        if not keys:
            return {}
        overloaded = self.guard.overloaded(endpoints)
        out: dict[str, float] = {}
        for e in endpoints:
            if e.name in overloaded:
                continue
            if produced is not None:
                hits = produced.get(e.name, 0)
            else:
                hits = self.items.hits(e.name, keys)
            if hits:
                out[e.name] = hits / len(keys)
        return out

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.producer is not None:  # the producer records (its own PreRequest)
            return
        keys = request_items(request)
        primary = result.primary
        if keys and primary is not None and primary.targets:
            self.items.record(primary.targets[0].name, keys)

    def cached(self, endpoint: str) -> tuple[str, ...]:
        """The item keys recorded for ``endpoint``, least recently used first."""
        return self.items.cached(endpoint)


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MmEmbeddingsCacheScorer:
    params = parse_params(MmEmbeddingsCacheParams, name, TYPE, parameters)
    producer = find_producer(handle)
    if producer is not None:
        own = sorted({"cacheSizeInMBPerServer", "entrySizeMB"} & set(parameters or {}))
        if own:
            raise PluginValidationError(
                f"plugin {name!r} ({TYPE}): parameters.{own[0]}: the cache is owned by "
                f"{PRODUCER_TYPE} {producer.typed_name.name!r}; set its size there"
            )
    return MmEmbeddingsCacheScorer(name, params, producer)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = MmEmbeddingsCacheScorer
_p: type[PreRequest] = MmEmbeddingsCacheScorer
