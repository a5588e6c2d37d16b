"""``utilization-detector``: pool saturation for admission, and a filter for saturated endpoints.

Parameters (upstream defaults): ``queueDepthThreshold`` 5, ``kvCacheUtilThreshold`` 0.8 (in
(0, 1]), ``metricsStalenessThreshold`` "200ms", ``headroom`` 0.0.

As a **saturation detector** (admission)::

    per endpoint:  1.0 if its metrics are stale (never scraped, or older than the threshold)
                   else max(waiting_queue_size / queueDepthThreshold,
                            kv_cache_usage / kvCacheUtilThreshold)
    pool:          mean over the candidates; 1.0 for an empty list; saturated when >= 1.0

As a **filter**: keep endpoints whose metrics are fresh and whose queue and KV-cache are below
``threshold * (1 + headroom)``. If that leaves nothing it returns its input unchanged (fail
open): shedding is admission's decision, not the filter's.

Metrics consumed: ``waiting_queue_size``, ``kv_cache_usage``, ``updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.config.duration import GoDuration
from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EXPLAIN, CycleState, Filter, SaturationDetector
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "utilization-detector"


class UtilizationParams(PluginParams):
    queue_depth_threshold: int = Field(default=5, gt=0, alias="queueDepthThreshold")
    kv_cache_util_threshold: float = Field(
        default=0.8, gt=0.0, le=1.0, alias="kvCacheUtilThreshold"
    )
    metrics_staleness_threshold: GoDuration = Field(
        default=0.2, gt=0.0, alias="metricsStalenessThreshold"
    )
    headroom: float = Field(default=0.0, ge=0.0)


class UtilizationDetector:
    def __init__(self, name: str = TYPE, params: UtilizationParams | None = None) -> None:
        p = params or UtilizationParams()
        self.typed_name = TypedName(TYPE, name)
        self.params = p
        self._queue = float(p.queue_depth_threshold)
        self._kv = p.kv_cache_util_threshold
        self._stale = p.metrics_staleness_threshold
        self._queue_limit = p.queue_depth_threshold * (1.0 + p.headroom)
        self._kv_limit = p.kv_cache_util_threshold * (1.0 + p.headroom)

    def is_stale(self, endpoint: Endpoint, now: float) -> bool:
        updated = endpoint.metrics.updated_at
        return updated <= 0.0 or now - updated > self._stale

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        q, kv, stale = self._queue, self._kv, self._stale
        total = 0.0
        for e in endpoints:
            m = e.metrics
            if m.updated_at <= 0.0 or now - m.updated_at > stale:
                total += 1.0
            else:
                total += max(m.waiting_queue_size / q, m.kv_cache_usage / kv)
        return total / len(endpoints)

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        now, stale = state.now, self._stale
        ql, kvl = self._queue_limit, self._kv_limit
        kept = [
            e
            for e in endpoints
            if e.metrics.updated_at > 0.0
            and now - e.metrics.updated_at <= stale
            and e.metrics.waiting_queue_size < ql
            and e.metrics.kv_cache_usage < kvl
        ]
        notes = state.get(EXPLAIN, None)
        if not kept:
            if notes is not None:
                notes.append("every endpoint is saturated or stale: failing open (all kept)")
            return endpoints
        if notes is not None and len(kept) < len(endpoints):
            notes.append(f"kept endpoints with fresh metrics, queue < {ql:g} and kv < {kvl:g}")
        return kept


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> UtilizationDetector:
    return UtilizationDetector(name, parse_params(UtilizationParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = UtilizationDetector
_d: type[SaturationDetector] = UtilizationDetector
