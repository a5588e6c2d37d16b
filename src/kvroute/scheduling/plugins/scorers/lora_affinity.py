"""``lora-affinity-scorer`` (Affinity): prefer endpoints that have the request's LoRA adapter.

Formula (upstream), for adapter ``m = request.target_model``::

    1.0  m is in active_models                                   (no load needed)
    0.8  len(active_models) + len(waiting_models) < max_active   (a free adapter slot)
    0.6  m is in waiting_models                                  (being loaded; will queue)
    0.0  otherwise                                               (would evict another adapter)

Metrics consumed: ``active_models``, ``waiting_models``, ``max_active_models`` (from vLLM's
``vllm:lora_requests_info``). A base-model request scores 0.8 on servers with free slots and 0
elsewhere, exactly as upstream; give the scorer a small weight if that matters.
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

TYPE = "lora-affinity-scorer"


class LoraAffinityParams(PluginParams):
    pass


def lora_affinity(endpoint: Endpoint, adapter: str) -> float:
    m = endpoint.metrics
    if adapter in m.active_models:
        return 1.0
    if len(m.active_models) + len(m.waiting_models) < m.max_active_models:
        return 0.8
    if adapter in m.waiting_models:
        return 0.6
    return 0.0


class LoraAffinityScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        adapter = request.target_model
        return {e.name: lora_affinity(e, adapter) for e in endpoints}


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> LoraAffinityScorer:
    parse_params(LoraAffinityParams, name, TYPE, parameters)
    return LoraAffinityScorer(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = LoraAffinityScorer
