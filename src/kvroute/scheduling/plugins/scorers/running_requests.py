"""``running-requests-size-scorer`` (Distribution): prefer endpoints running fewer requests.

Formula (upstream): min-max over the candidates of ``running_queue_size``::

    score = (max_r - r(e)) / (max_r - min_r)        # 1.0 for every endpoint when all equal

Metrics consumed: ``EndpointMetrics.running_queue_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.scorers.queue import min_max_low_is_best
from kvroute.scheduling.request import InferenceRequest

TYPE = "running-requests-size-scorer"


class RunningRequestsParams(PluginParams):
    pass


class RunningRequestsSizeScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        return min_max_low_is_best(endpoints, [e.metrics.running_queue_size for e in endpoints])


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> RunningRequestsSizeScorer:
    parse_params(RunningRequestsParams, name, TYPE, parameters)
    return RunningRequestsSizeScorer(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = RunningRequestsSizeScorer
