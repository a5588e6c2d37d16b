"""predicted-latency-producer learns per-endpoint TTFT/TPOT from responses; latency-scorer uses it.

The "servers" are two closed-form latency laws (a fast and a 3x slower endpoint): the point is
that the producer learns each law from PreRequest/ResponseComplete alone and that the scorer
then ranks and honours SLOs with it.
"""

from __future__ import annotations

import random
from types import MappingProxyType

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.interfaces import CycleState, ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.latency.producer import PredictedLatencyProducer
from kvroute.scheduling.plugins.latency.scorer import LatencyScorer, LatencyScorerParams
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import make_endpoint


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _req(i: int, tokens: int, headers: dict[str, str] | None = None) -> InferenceRequest:
    return InferenceRequest(
        request_id=f"r{i}",
        incoming_model="m",
        target_model="m",
        prompt_text="y" * (4 * tokens),
        headers=MappingProxyType(headers or {}),
    )


def _train(producer: PredictedLatencyProducer, eps: list[Endpoint], clock: Clock) -> None:
    rng = random.Random(7)
    speed = {"fast": 1.0, "slow": 3.0}
    for i in range(300):
        ep = eps[i % 2]
        tokens = rng.randint(100, 3000)
        clock.t += 0.5
        state = CycleState(clock.t)
        req = _req(i, tokens)
        producer.pre_request(state, req, SchedulingResult({"d": ProfileResult((ep,))}, "d"))
        ttft = speed[ep.name] * (0.01 + tokens * 2e-5)
        out = 50
        tpot = speed[ep.name] * 0.008
        first = clock.t + ttft
        clock.t = first + tpot * (out - 1)
        producer.response_complete(req, ep, Usage(tokens, out, 0, first_token_at=first))


def test_learns_each_endpoint_and_reports_error() -> None:
    clock = Clock()
    ctx = PluginContext(clock=clock)
    producer = PredictedLatencyProducer(handle=ctx)
    eps = [make_endpoint("fast"), make_endpoint("slow")]
    _train(producer, eps, clock)
    preds = producer.predict(CycleState(clock.t + 1), _req(999, 2000), eps)
    assert preds is not None
    (fast, _), (slow, slow_tpot) = preds["fast"], preds["slow"]
    assert abs(fast - 0.05) / 0.05 < 0.1
    assert abs(slow - 0.15) / 0.15 < 0.1
    assert abs(slow_tpot - 0.024) < 0.003
    err = producer.predictor.median_ttft_error()
    assert err is not None
    assert err < 0.05
    assert producer.pending() == 0


def test_cold_model_has_no_prediction_and_scorer_falls_back() -> None:
    scorer = LatencyScorer()
    eps = [make_endpoint("a", kv=0.9, waiting=5), make_endpoint("b", kv=0.1)]
    out = scorer.score(CycleState(0.0), _req(1, 100), eps)
    assert out["b"] > out["a"]


def test_scorer_prefers_fast_and_honours_slo_headroom() -> None:
    clock = Clock()
    ctx = PluginContext(clock=clock)
    producer = PredictedLatencyProducer(handle=ctx)
    eps = [make_endpoint("fast"), make_endpoint("slow")]
    _train(producer, eps, clock)
    state = CycleState(clock.t + 1)
    plain = LatencyScorer(producer=producer)
    assert plain.score(state, _req(1, 2000), eps) == {"fast": 1.0, "slow": 0.0}
    # both meet a loose SLO: "least" packs onto the one closest to it, "most" keeps margin
    loose = {"x-llm-d-slo-ttft-ms": "1000"}
    least = plain.score(CycleState(clock.t + 1), _req(2, 2000, loose), eps)
    assert least["slow"] > least["fast"] >= 0.5
    most = LatencyScorer(
        params=LatencyScorerParams(headroomSelectionStrategy="most"), producer=producer
    ).score(CycleState(clock.t + 1), _req(3, 2000, loose), eps)
    assert most["fast"] > most["slow"] >= 0.5
    # only the fast one meets a tight SLO: it alone scores
    tight = {"x-slo-ttft-ms": "100"}
    only = plain.score(CycleState(clock.t + 1), _req(4, 2000, tight), eps)
    assert only["fast"] >= 0.5
    assert only["slow"] == 0.0
    # a malformed header is ignored: the plain ranking
    bad = plain.score(CycleState(clock.t + 1), _req(5, 2000, {"x-llm-d-slo-ttft-ms": "soon"}), eps)
    assert bad == {"fast": 1.0, "slow": 0.0}


def test_scorer_uses_a_declared_producer_or_owns_one() -> None:
    reg = default_registry(include_entry_points=False)
    ctx = PluginContext()
    alone = reg.create("latency-scorer", "l", {}, ctx)
    assert isinstance(alone, LatencyScorer)
    assert alone.owns_producer
    ctx.plugins["predicted-latency-producer"] = reg.create(
        "predicted-latency-producer", "predicted-latency-producer", {"contextTTL": "1m"}, ctx
    )
    shared = reg.create("latency-scorer", "l2", {"ttftWeight": 1, "tpotWeight": 0}, ctx)
    assert isinstance(shared, LatencyScorer)
    assert not shared.owns_producer
    assert shared.producer is ctx.plugins["predicted-latency-producer"]


def test_headroom_per_accelerator_class_over_slo_requests_in_the_window() -> None:
    """The autoscaling signal ``kvroute_pool_predicted_ttft_headroom_seconds``: SLO - predicted
    TTFT, averaged per class of the picked endpoint over SLO requests of the last window."""
    from kvroute.framework.accelerator import ACCELERATOR_LABEL

    clock = Clock()
    producer = PredictedLatencyProducer(handle=PluginContext(clock=clock))
    eps = [
        make_endpoint("fast", labels={ACCELERATOR_LABEL: "h100"}),
        make_endpoint("slow", labels={ACCELERATOR_LABEL: "l4"}),
    ]
    _train(producer, eps, clock)  # requests without an SLO header: no headroom sample
    assert producer.headroom(clock.t) == {}
    slo = {"x-llm-d-slo-ttft-ms": "500"}
    for i, ep in enumerate(eps):
        state = CycleState(clock.t)
        result = SchedulingResult({"d": ProfileResult((ep,))}, "d")
        producer.pre_request(state, _req(1000 + i, 2000, slo), result)
    got = producer.headroom(clock.t)
    assert set(got) == {"h100", "l4"}
    assert abs(got["h100"] - (0.5 - 0.05)) < 0.02  # fast: 50 ms predicted for 2000 tokens
    assert abs(got["l4"] - (0.5 - 0.15)) < 0.03  # slow: 150 ms
    producer.pre_request(
        CycleState(clock.t), _req(2000, 2000, {"x-slo-ttft-ms": "bad"}), result
    )  # a malformed SLO header adds no sample
    assert producer.headroom(clock.t) == got
    assert producer.headroom(clock.t + 61.0) == {}  # aged out of the 60 s window
