"""``prefix-cache-affinity-filter``: keep the endpoints that hold most of the prompt's prefix.

Formula (llm-d-router), with ``s(e) = matched_blocks(e) / total_blocks`` from the
``prefix-cache-scorer`` named by ``prefixPluginName``::

    sticky = {e : s(e) >= affinityThreshold}
    keep sticky, unless
      * sticky is empty or every candidate (nothing to choose), or
      * exploration: with probability explorationProbability, or
      * the TTFT gate (maxTTFTPenaltyMs > 0): min over sticky of TTFT(e)
                                             - min over the others of TTFT(e) > maxTTFTPenaltyMs
    in which case every candidate passes.

``TTFT(e)`` by ``ttftSource``: ``prefillThroughput`` = in-flight tokens of ``e``
(``EndpointLoad.inflight_tokens``, the EPP's own ledger) / ``peakPrefillThroughput`` tokens/s;
``latencyPredictor`` = the TTFT predicted by the ``predicted-latency-producer`` named by
``latencyProducerName`` (declared before this filter); until that model is warm the
prefill-throughput estimate is used.

Parameters (upstream names and defaults): ``affinityThreshold`` 0.80, ``maxTTFTPenaltyMs``
18000 (0 = always stick), ``ttftSource`` ``prefillThroughput``, ``peakPrefillThroughput``
15928, ``explorationProbability`` 0. kvroute: ``prefixPluginName`` (``prefix-cache-scorer``),
``latencyProducerName`` (``predicted-latency-producer``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle, handle_rng
from kvroute.scheduling.interfaces import EXPLAIN, CycleState, Filter
from kvroute.scheduling.plugins.latency.producer import TYPE as PRODUCER_TYPE
from kvroute.scheduling.plugins.latency.producer import PredictedLatencyProducer
from kvroute.scheduling.plugins.latency.scorer import find_producer
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix.consumer import (
    DEFAULT_PREFIX_PLUGIN,
    PrefixMatcher,
    find_prefix_plugin,
)
from kvroute.scheduling.request import InferenceRequest

TYPE = "prefix-cache-affinity-filter"


class PrefixAffinityParams(PluginParams):
    affinity_threshold: float = Field(default=0.80, ge=0.0, le=1.0, alias="affinityThreshold")
    max_ttft_penalty_ms: float = Field(default=18000.0, ge=0.0, alias="maxTTFTPenaltyMs")
    ttft_source: Literal["prefillThroughput", "latencyPredictor"] = Field(
        default="prefillThroughput", alias="ttftSource"
    )
    peak_prefill_throughput: float = Field(default=15928.0, gt=0.0, alias="peakPrefillThroughput")
    exploration_probability: float = Field(
        default=0.0, ge=0.0, le=1.0, alias="explorationProbability"
    )
    prefix_plugin_name: str = Field(default=DEFAULT_PREFIX_PLUGIN, alias="prefixPluginName")
    latency_producer_name: str = Field(default=PRODUCER_TYPE, alias="latencyProducerName")


class PrefixCacheAffinityFilter:
    def __init__(
        self,
        name: str,
        params: PrefixAffinityParams,
        prefix: PrefixMatcher,
        producer: PredictedLatencyProducer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params
        self.prefix = prefix
        self.producer = producer
        self.rng = rng or random.Random()

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        if len(endpoints) < 2:
            return endpoints
        match = self.prefix.match(state, request, endpoints)
        total = match.total_blocks
        if total == 0:
            return endpoints
        p = self.params
        need = p.affinity_threshold * total
        got = match.matched
        sticky = [e for e in endpoints if got.get(e.name, 0) >= need and got.get(e.name, 0) > 0]
        if not sticky or len(sticky) == len(endpoints):
            return endpoints
        if p.exploration_probability > 0.0 and self.rng.random() < p.exploration_probability:
            return endpoints
        if p.max_ttft_penalty_ms > 0.0:
            ttft = self._ttft(state, request, endpoints)
            names = {e.name for e in sticky}
            best_sticky = min(ttft[e.name] for e in sticky)
            best_other = min(ttft[e.name] for e in endpoints if e.name not in names)
            if (best_sticky - best_other) * 1e3 > p.max_ttft_penalty_ms:
                explain = state.get(EXPLAIN, None)
                if explain is not None:
                    explain.append(
                        f"TTFT gate: sticky {best_sticky * 1e3:.0f} ms vs other "
                        f"{best_other * 1e3:.0f} ms; affinity broken"
                    )
                return endpoints
        return sticky

    def _ttft(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if self.params.ttft_source == "latencyPredictor" and self.producer is not None:
            preds = self.producer.predict(state, request, endpoints)
            if preds is not None:
                return {e.name: preds[e.name][0] for e in endpoints}
        rate = self.params.peak_prefill_throughput
        return {e.name: e.load.inflight_tokens / rate for e in endpoints}


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> PrefixCacheAffinityFilter:
    params = parse_params(PrefixAffinityParams, name, TYPE, parameters)
    prefix = find_prefix_plugin(handle, params.prefix_plugin_name, name, TYPE)
    producer = None
    if params.ttft_source == "latencyPredictor":
        producer = find_producer(handle, params.latency_producer_name, name, TYPE)
        if producer is None:
            raise PluginValidationError(
                f"plugin {name!r} ({TYPE}): parameters.ttftSource: latencyPredictor needs a "
                f"{PRODUCER_TYPE} named {params.latency_producer_name!r} declared before it"
            )
    return PrefixCacheAffinityFilter(name, params, prefix, producer, handle_rng(handle))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = PrefixCacheAffinityFilter
