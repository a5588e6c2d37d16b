"""``queue-scorer`` (Distribution): prefer endpoints with the shortest waiting queue.

Formula (upstream, min-max over the candidates)::

    q(e)  = waiting_queue_size(e) + sent_since_scrape(e)      # kvroute default
    score = (max_q - q(e)) / (max_q - min_q)     # 1.0 for every endpoint when all are equal

Metrics consumed: ``EndpointMetrics.waiting_queue_size`` and the EPP's own
``EndpointLoad.sent_since_scrape``.

In-flight accounting (kvroute improvement over upstream): upstream scores the queue length from
the last scrape only, so every request decided between two scrapes (50 ms apart) sees the same
idle-looking endpoint and they all herd onto it. kvroute adds the requests it has itself sent to
the endpoint since that scrape, which the scrape could not yet see. Set ``inflightAccounting:
false`` for the pure upstream formula.
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
from kvroute.scheduling.scores import ScoreColumn

TYPE = "queue-scorer"


class QueueScorerParams(PluginParams):
    inflight_accounting: bool = Field(default=True, alias="inflightAccounting")


class QueueScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: QueueScorerParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.inflight_accounting = (params or QueueScorerParams()).inflight_accounting

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        if self.inflight_accounting:
            qs = [e.metrics.waiting_queue_size + e.load.sent_since_scrape for e in endpoints]
        else:
            qs = [e.metrics.waiting_queue_size for e in endpoints]
        return min_max_low_is_best(endpoints, qs)


def min_max_low_is_best(
    endpoints: Sequence[Endpoint], values: Sequence[int]
) -> Mapping[str, float]:
    """Upstream's min-max normalisation where the smallest value scores 1 and the largest 0.

    Returned as a :class:`ScoreColumn` aligned with ``endpoints`` (uniform 1.0 when all equal).
    Over integers (the counters these scorers read; ``sum`` is an ``int`` only when every value
    is one) every score is in [0, 1] and none is NaN: ``0 <= hi - v <= hi - lo`` exactly, and
    rounding to float keeps that order, so the column is marked ``unit`` (no clamp needed).
    """
    lo = min(values)
    hi = max(values)
    if hi == lo:
        return ScoreColumn.uniform(endpoints, 1.0)
    span = float(hi - lo)
    return ScoreColumn(endpoints, [(hi - v) / span for v in values], unit=type(sum(values)) is int)


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> QueueScorer:
    return QueueScorer(name, parse_params(QueueScorerParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = QueueScorer
