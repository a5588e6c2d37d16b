"""``active-request-scorer`` (Distribution): prefer endpoints with fewer requests in flight.

Formula (llm-d-router), with ``n(e)`` the EPP's in-flight requests on ``e`` and ``max`` the
largest ``n`` among the candidates::

    score(e) = 1.0                                  if n(e) <= idleThreshold
             = (max - n(e)) / max * maxBusyScore    otherwise

Input: ``EndpointLoad.inflight`` (counted by the director at send, uncounted at completion).
Parameters (upstream names and defaults): ``idleThreshold`` 0, ``maxBusyScore`` 1.0,
``requestTimeout`` (accepted and ignored, as upstream ignores it). kvroute: ``normalize``
(false = upstream). With ``true`` the busy score is a min-max over the candidates,
``(max - n) / (max - min) * maxBusyScore``, which keeps separating endpoints when all are busy
(upstream's ``(max - n) / max`` squeezes 30 vs 40 in flight into 0.25 vs 0).

kvroute: a dead zone around the least loaded candidate, as the prefix scorer's hot-spot guard
has, from four parameters (each default 0 = upstream): ``slack`` (requests), ``relativeSlack``
(a fraction of the candidates' mean in-flight count), ``idleSlack`` (requests, shrinking as the
pool fills: ``idleSlack - low``, gone once the least loaded candidate has ``idleSlack`` in
flight) and ``meanIdleSlack`` (the same, fading with the mean: ``meanIdleSlack - mean``). With
``low`` the smallest ``n`` among the candidates and ``mean`` their mean::

    dz    = max(slack, relativeSlack * mean, idleSlack - low, meanIdleSlack - mean)
    n'(e) = low + max(0, n(e) - low - dz)

and the formula above runs on ``n'`` (``idleThreshold`` still tests the raw count). Endpoints
within ``dz`` requests of the least loaded one score alike; beyond it only the excess counts.
Why: at light load a few requests in flight on the server holding a request's prefix would
otherwise move its score from 1 to 0 and, at weight 2, outweigh prefix affinity, while near
saturation (where ``idleSlack`` has faded) the exact counts are what spreads first tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.config.duration import GoDuration
from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn

TYPE = "active-request-scorer"
_EXACT = 1 << 53  # integers below this are exact as floats


class ActiveRequestParams(PluginParams):
    idle_threshold: int = Field(default=0, ge=0, alias="idleThreshold")
    max_busy_score: float = Field(default=1.0, ge=0.0, le=1.0, alias="maxBusyScore")
    request_timeout: GoDuration | None = Field(default=None, alias="requestTimeout")
    normalize: bool = False
    slack: int = Field(default=0, ge=0)
    relative_slack: float = Field(default=0.0, ge=0.0, alias="relativeSlack")
    idle_slack: int = Field(default=0, ge=0, alias="idleSlack")
    mean_idle_slack: int = Field(default=0, ge=0, alias="meanIdleSlack")


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
        raw = [e.load.inflight for e in endpoints]
        least = min(raw)
        p = self.params
        total = sum(raw)
        mean = total / len(raw)
        dz = max(
            float(p.slack), p.relative_slack * mean, p.idle_slack - least, p.mean_idle_slack - mean
        )
        loads = raw if dz <= 0 else [least + max(0.0, n - least - dz) for n in raw]
        top = max(loads)
        low = least if self.params.normalize else 0
        span = top - low
        if span <= 0 or (top if loads is raw else max(raw)) <= idle:  # every candidate: 1.0
            return ScoreColumn.uniform(endpoints, 1.0)
        # Every value is in [0, 1] (no clamp needed) when the counts are integers (``sum`` is an
        # int only then), none negative and all exact as floats: then ``low <= eff <= top``, so
        # ``0 <= top - eff <= span`` after rounding too, and ``busy`` is at most 1.
        unit = type(total) is int and least >= 0 and top < _EXACT and 0.0 <= busy <= 1.0
        if loads is raw:  # no dead zone: the same formula without pairing each count with itself
            return ScoreColumn(
                endpoints, [1.0 if n <= idle else (top - n) / span * busy for n in raw], unit=unit
            )
        return ScoreColumn(
            endpoints,
            [
                1.0 if n <= idle else (top - eff) / span * busy
                for n, eff in zip(raw, loads, strict=True)
            ],
            unit=unit,
        )


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> ActiveRequestScorer:
    return ActiveRequestScorer(name, parse_params(ActiveRequestParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = ActiveRequestScorer
