"""``kv-cache-utilization-scorer`` (Distribution): prefer endpoints with free KV-cache.

Formula (upstream): ``score = 1 - kv_cache_usage`` (usage is a 0..1 fraction; the framework
clamps anything a broken exporter reports outside that range).

Metrics consumed: ``EndpointMetrics.kv_cache_usage``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

TYPE = "kv-cache-utilization-scorer"


class KvCacheParams(PluginParams):
    pass


class KvCacheUtilizationScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return ScoreColumn(endpoints, [1.0 - e.metrics.kv_cache_usage for e in endpoints])


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> KvCacheUtilizationScorer:
    parse_params(KvCacheParams, name, TYPE, parameters)
    return KvCacheUtilizationScorer(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = KvCacheUtilizationScorer
