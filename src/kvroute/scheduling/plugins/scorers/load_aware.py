"""``load-aware-scorer`` (Distribution): llm-d-router's absolute waiting-queue score.

Formula (upstream)::

    q = waiting_queue_size(e)
    score = 0.5                        if q == 0
            0.0                        if q >= threshold
            0.5 * (1 - q / threshold)  otherwise

The maximum is 0.5 (upstream's choice, so that an idle endpoint never outweighs a full prefix
hit at equal weights). Unlike ``queue-scorer`` the score is not normalised over the candidates.
Parameters: ``threshold`` (128, > 0). Metrics consumed: ``EndpointMetrics.waiting_queue_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "load-aware-scorer"


class LoadAwareParams(PluginParams):
    threshold: int = Field(default=128, gt=0)


class LoadAwareScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: LoadAwareParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.threshold = (params or LoadAwareParams()).threshold

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        out: dict[str, float] = {}
        for e in endpoints:
            q = e.metrics.waiting_queue_size
            if q <= 0:
                out[e.name] = 0.5
            elif q >= self.threshold:
                out[e.name] = 0.0
            else:
                out[e.name] = 0.5 * (1.0 - q / self.threshold)
        return out


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> LoadAwareScorer:
    del handle
    return LoadAwareScorer(name, parse_params(LoadAwareParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = LoadAwareScorer
