"""``latency-scorer`` (Balance): prefer the endpoint with the lowest predicted latency, or the
ones that meet the request's SLOs with headroom.

Predictions come from ``predicted-latency-producer`` (the instance named by ``producerName``,
declared before this scorer; when there is none the scorer owns a private one and runs its
hooks itself). SLOs come from the request headers (:mod:`~kvroute.scheduling.plugins.latency.slo`).
Formula (llm-d-router's §7; the bucket values are kvroute's)::

    no SLO header:    score = ttftWeight * lo(TTFT) + tpotWeight * lo(TPOT)
                      lo(v) = (max v - v) / (max v - min v) over the candidates (1 when all equal)
    with SLOs:        h_ttft = slo_ttft - TTFT,  h_tpot = slo_tpot * sloBufferFactor - TPOT
                      (an absent SLO counts as met with zero headroom)
      some endpoints meet every SLO:  only they score, 0.5 + 0.5 * blend of their normalised
                      headrooms (``most``: largest margin best; ``least``: closest to the SLO
                      best, i.e. bin-packing); the others score 0
      none meets them: idle endpoints (nothing in flight) 1.0; then TTFT met but TPOT missed
                      0.3-0.5, TPOT met but TTFT missed 0.1-0.3, both missed 0-0.1, each band
                      ordered by the no-SLO score
    no prediction yet (cold):  (kvW * (1 - kv) + queueW * lo(queue) + prefixW * prefix)
                      / (kvW + queueW + prefixW)

Parameters (upstream): ``ttftWeight`` 0.8, ``tpotWeight`` 0.2, ``headroomSelectionStrategy``
``least`` | ``most`` (``least``), ``compositeKVWeight``, ``compositeQueueWeight``,
``compositePrefixWeight`` (1 each). kvroute: ``producerName`` (``predicted-latency-producer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.request import Usage
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import (
    EXPLAIN,
    CycleState,
    SchedulingResult,
    Scorer,
    ScorerCategory,
)
from kvroute.scheduling.plugins.latency.producer import TYPE as PRODUCER_TYPE
from kvroute.scheduling.plugins.latency.producer import PredictedLatencyProducer
from kvroute.scheduling.plugins.latency.slo import parse_slo
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "latency-scorer"


class LatencyScorerParams(PluginParams):
    ttft_weight: float = Field(default=0.8, ge=0.0, alias="ttftWeight")
    tpot_weight: float = Field(default=0.2, ge=0.0, alias="tpotWeight")
    headroom_selection_strategy: Literal["least", "most"] = Field(
        default="least", alias="headroomSelectionStrategy"
    )
    composite_kv_weight: float = Field(default=1.0, ge=0.0, alias="compositeKVWeight")
    composite_queue_weight: float = Field(default=1.0, ge=0.0, alias="compositeQueueWeight")
    composite_prefix_weight: float = Field(default=1.0, ge=0.0, alias="compositePrefixWeight")
    producer_name: str = Field(default=PRODUCER_TYPE, alias="producerName")


def _low_is_best(values: Mapping[str, float]) -> dict[str, float]:
    vs = values.values()
    lo = min(vs)
    hi = max(vs)
    if hi <= lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {k: (hi - v) / span for k, v in values.items()}


class LatencyScorer:
    category = ScorerCategory.BALANCE

    def __init__(
        self,
        name: str = TYPE,
        params: LatencyScorerParams | None = None,
        producer: PredictedLatencyProducer | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.params = params or LatencyScorerParams()
        self.owns_producer = producer is None
        self.producer = producer or PredictedLatencyProducer(f"{name}/producer")

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if not endpoints:
            return {}
        preds = self.producer.predict(state, request, endpoints)
        if preds is None:
            return self._composite(state, request, endpoints)
        ttft: dict[str, float] = {}
        tpot: dict[str, float] = {}
        for e in endpoints:
            ttft[e.name], tpot[e.name] = preds[e.name]
        blend = self._blend(ttft, tpot)
        slo = parse_slo(request.headers)
        explain = state.get(EXPLAIN, None)
        if explain is not None:
            explain.append(
                "predicted ms: "
                + ", ".join(f"{n}=ttft {ttft[n] * 1e3:.0f}/tpot {tpot[n] * 1e3:.1f}" for n in ttft)
                + (f"; SLO ttft={slo.ttft_s} tpot={slo.tpot_s} s" if slo.any else "")
            )
        if not slo.any:
            return blend
        buffer = self.producer.params.slo_buffer_factor
        h_ttft = {n: 0.0 if slo.ttft_s is None else slo.ttft_s - v for n, v in ttft.items()}
        h_tpot = {
            n: 0.0 if slo.tpot_s is None else slo.tpot_s * buffer - v for n, v in tpot.items()
        }
        meet = [n for n in ttft if h_ttft[n] >= 0.0 and h_tpot[n] >= 0.0]
        if meet:
            return self._headroom(meet, h_ttft, h_tpot, endpoints)
        out: dict[str, float] = {}
        for e in endpoints:
            b = blend[e.name]
            if e.load.inflight == 0:
                out[e.name] = 1.0
            elif h_ttft[e.name] >= 0.0:
                out[e.name] = 0.3 + 0.2 * b
            elif h_tpot[e.name] >= 0.0:
                out[e.name] = 0.1 + 0.2 * b
            else:
                out[e.name] = 0.1 * b
        return out

    def _blend(self, ttft: Mapping[str, float], tpot: Mapping[str, float]) -> dict[str, float]:
        p = self.params
        wt, wp = p.ttft_weight, p.tpot_weight
        nt = _low_is_best(ttft)
        if wp == 0.0:
            return nt
        np_ = _low_is_best(tpot)
        if wt == 0.0:
            return np_
        total = wt + wp
        return {k: (wt * v + wp * np_[k]) / total for k, v in nt.items()}

    def _headroom(
        self,
        meet: Sequence[str],
        h_ttft: Mapping[str, float],
        h_tpot: Mapping[str, float],
        endpoints: Sequence[Endpoint],
    ) -> dict[str, float]:
        p = self.params
        total = p.ttft_weight + p.tpot_weight or 1.0
        # "most": largest headroom best = smallest negative headroom; "least": the reverse.
        sign = -1.0 if p.headroom_selection_strategy == "most" else 1.0
        nt = _low_is_best({n: sign * h_ttft[n] for n in meet})
        nh = _low_is_best({n: sign * h_tpot[n] for n in meet})
        out = dict.fromkeys([e.name for e in endpoints], 0.0)
        for n in meet:
            out[n] = 0.5 + 0.5 * (p.ttft_weight * nt[n] + p.tpot_weight * nh[n]) / total
        return out

    def _composite(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> dict[str, float]:
        p = self.params
        wk, wq, wx = p.composite_kv_weight, p.composite_queue_weight, p.composite_prefix_weight
        total = wk + wq + wx or 1.0
        queue = _low_is_best(
            {
                e.name: float(e.metrics.waiting_queue_size + e.load.sent_since_scrape)
                for e in endpoints
            }
        )
        prompt = len(request.prompt_text) / 4.0
        uncached = self.producer.uncached(state, request, endpoints)
        out: dict[str, float] = {}
        for e in endpoints:
            hit = 1.0 - uncached[e.name] / prompt if prompt > 0 else 0.0
            kv = 1.0 - e.metrics.kv_cache_usage
            out[e.name] = (wk * kv + wq * queue[e.name] + wx * hit) / total
        return out

    # -- hooks: forwarded only to a producer this scorer owns ------------------------------------

    def pre_request(
        self, state: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None:
        if self.owns_producer:
            self.producer.pre_request(state, request, result)

    def response_complete(
        self, request: InferenceRequest, endpoint: Endpoint, usage: Usage | None
    ) -> None:
        if self.owns_producer:
            self.producer.response_complete(request, endpoint, usage)


def find_producer(
    handle: PluginHandle, producer_name: str, name: str, type_name: str
) -> PredictedLatencyProducer | None:
    """The declared producer of that name, None when there is none; error if it is not one."""
    try:
        plugin = handle.plugin(producer_name)
    except PluginValidationError:
        return None
    if not isinstance(plugin, PredictedLatencyProducer):
        raise PluginValidationError(
            f"plugin {name!r} ({type_name}): {producer_name!r} is a {plugin.typed_name.type}, "
            f"not a {PRODUCER_TYPE}"
        )
    return plugin


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> LatencyScorer:
    params = parse_params(LatencyScorerParams, name, TYPE, parameters)
    producer = find_producer(handle, params.producer_name, name, TYPE)
    if producer is None:
        producer = PredictedLatencyProducer(f"{name}/producer", handle=handle)
        scorer = LatencyScorer(name, params, producer)
        scorer.owns_producer = True
        return scorer
    return LatencyScorer(name, params, producer)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = LatencyScorer
