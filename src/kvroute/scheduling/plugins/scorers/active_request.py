"""``active-request-scorer`` (Distribution): prefer endpoints with fewer requests in flight.

Formula (llm-d-router), with ``n(e)`` the EPP's in-flight requests on ``e`` and ``max`` the
largest ``n`` among the candidates::

    score(e) = 1.0                                  if n(e) <= idleThreshold
             = (max - n(e)) / max * maxBusyScore    otherwise

Input: ``EndpointLoad.inflight`` (counted by the director at send, uncounted at completion).
Parameters (upstream names and defaults): ``idleThreshold`` 0, ``maxBusyScore`` 1.0,
``requestTimeout`` (accepted and ignored, as upstream ignores it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import GoDuration, PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "active-request-scorer"


class ActiveRequestParams(PluginParams):
    idle_threshold: int = Field(default=0, ge=0, alias="idleThreshold")
    max_busy_score: float = Field(default=1.0, ge=0.0, le=1.0, alias="maxBusyScore")
    request_timeout: GoDuration | None = Field(default=None, alias="requestTimeout")


class ActiveRequestScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: ActiveRequestParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or ActiveRequestParams()

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        idle = self.params.idle_threshold
        busy = self.params.max_busy_score
        top = max(e.load.inflight for e in endpoints)
        out: dict[str, float] = {}
        for e in endpoints:
            n = e.load.inflight
            out[e.name] = 1.0 if n <= idle or top <= 0 else (top - n) / top * busy
        return out


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> ActiveRequestScorer:
    return ActiveRequestScorer(name, parse_params(ActiveRequestParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = ActiveRequestScorer
