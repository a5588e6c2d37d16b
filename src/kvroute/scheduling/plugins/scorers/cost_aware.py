"""``cost-aware-scorer`` (kvroute): the cheapest endpoint per token that is predicted to meet
the request's TTFT SLO with headroom; the fastest when none is.

Each endpoint's accelerator class and cost per hour come from its pod labels
(:mod:`kvroute.framework.accelerator`: ``kvroute.dev/accelerator``, ``kvroute.dev/cost-per-hour``;
unknown or malformed values read as the default class, logged once). Cost per token is
``cost_per_hour / relative_speed``: a replica's token throughput scales with its class's speed.

Until scheduler v2's latency predictor lands, TTFT is an **analytical estimate** from the
class's relative speed and the endpoint's load (both parameters in reference-class seconds)::

    queued(e)   = waiting_queue_size(e) + sent_since_scrape(e)
    ttft_est(e) = (referenceTtftMs + queuePenaltyMs * queued(e)
                   + runningPenaltyMs * running_queue_size(e)) / relative_speed(e) / 1000

The SLO is the request's ``x-llm-d-slo-ttft-ms`` (or ``x-slo-ttft-ms``) header, else
``defaultTtftSloMs``. An endpoint *fits* when ``ttft_est <= slo * (1 - headroom)`` and its
scraped KV-cache use is at most ``maxKvUtilization`` (default 1.0: no limit; a nearly full
cache means the next request waits for blocks, which the queue shows only later). Scores:
fitting endpoints get 0.6..1 by cost per token (cheapest 1.0); the others get 0..0.5 by
estimated TTFT (fastest 0.5). So the cheapest fitting endpoint wins, and when none fits --
critical traffic in a saturated cheap tier -- the fastest does. With ``criticalOnFastest`` a
Critical request always takes the fastest-estimated endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.accelerator import endpoint_hardware
from kvroute.framework.request import Criticality
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "cost-aware-scorer"
SLO_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")


class CostAwareScorerParams(PluginParams):
    default_ttft_slo_ms: float = Field(default=1000.0, gt=0, alias="defaultTtftSloMs")
    headroom: float = Field(default=0.2, ge=0, lt=1)
    reference_ttft_ms: float = Field(default=50.0, ge=0, alias="referenceTtftMs")
    queue_penalty_ms: float = Field(default=40.0, ge=0, alias="queuePenaltyMs")
    running_penalty_ms: float = Field(default=1.0, ge=0, alias="runningPenaltyMs")
    critical_on_fastest: bool = Field(default=False, alias="criticalOnFastest")
    max_kv_utilization: float = Field(default=1.0, gt=0, le=1, alias="maxKvUtilization")


def request_ttft_slo_s(request: InferenceRequest, default_ms: float) -> float:
    """The request's TTFT SLO in seconds: its SLO header if it parses as a positive number."""
    for h in SLO_HEADERS:
        raw = request.headers.get(h)
        if raw is None:
            continue
        try:
            ms = float(raw)
        except ValueError:
            continue
        if ms > 0:
            return ms / 1000.0
    return default_ms / 1000.0


class CostAwareScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str = TYPE, params: CostAwareScorerParams | None = None) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or CostAwareScorerParams()

    def estimate_ttft_s(self, endpoint: Endpoint) -> float:
        p = self.params
        m = endpoint.metrics
        queued = m.waiting_queue_size + endpoint.load.sent_since_scrape
        ms = p.reference_ttft_ms + p.queue_penalty_ms * queued
        ms += p.running_penalty_ms * m.running_queue_size
        speed = endpoint_hardware(endpoint.labels).accelerator.relative_speed
        return ms / speed / 1000.0

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        p = self.params
        budget = request_ttft_slo_s(request, p.default_ttft_slo_ms) * (1.0 - p.headroom)
        est = {e.name: self.estimate_ttft_s(e) for e in endpoints}
        critical_fast = p.critical_on_fastest and request.criticality == Criticality.CRITICAL
        kv_max = p.max_kv_utilization
        fits = (
            []
            if critical_fast
            else [
                e for e in endpoints if est[e.name] <= budget and e.metrics.kv_cache_usage <= kv_max
            ]
        )
        out: dict[str, float] = {}
        if fits:
            cost = {}
            for e in fits:
                hw = endpoint_hardware(e.labels)
                cost[e.name] = hw.cost_per_hour / hw.accelerator.relative_speed
            lo, hi = min(cost.values()), max(cost.values())
            for name, c in cost.items():
                out[name] = 1.0 if hi == lo else 0.6 + 0.4 * (hi - c) / (hi - lo)
        rest = [e for e in endpoints if e.name not in out]
        if rest:
            lo, hi = min(est[e.name] for e in rest), max(est[e.name] for e in rest)
            for e in rest:
                t = est[e.name]
                out[e.name] = 0.5 if hi == lo else 0.5 * (hi - t) / (hi - lo)
        return out


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> CostAwareScorer:
    return CostAwareScorer(name, parse_params(CostAwareScorerParams, name, TYPE, parameters))


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = CostAwareScorer
