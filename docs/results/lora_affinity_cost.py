"""Per-call cost of ``lora-affinity-scorer``: upstream formula vs ``inflightAdapters`` (default).

Run: ``.venv/bin/python docs/results/lora_affinity_cost.py``. N endpoints with 3 of 15 adapters
active (``max_active_models`` 3, so slots are full, the common case under load) and 8 requests
of 4 adapters in flight on each; prints the best-of-5 time of one ``score`` call and
of one PreRequest + ResponseComplete pair, for an adapter request and (with the accounting on)
a base-model request. The figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import random
import timeit

from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.scheduling.interfaces import CycleState, ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.scorers.lora_affinity import LoraAffinityParams, LoraAffinityScorer
from kvroute.scheduling.request import InferenceRequest

ADAPTERS = [f"lora-{i}" for i in range(15)]


def _endpoints(n: int, rng: random.Random) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(
            name=f"e{i}",
            address="10.0.0.1",
            port=8000 + i,
            metrics=EndpointMetrics(
                active_models=frozenset(rng.sample(ADAPTERS, 3)), max_active_models=3
            ),
        )
        for i in range(n)
    )


def _measure(
    scorer: LoraAffinityScorer,
    state: CycleState,
    request: InferenceRequest,
    endpoints: tuple[Endpoint, ...],
) -> tuple[float, float]:
    k = 20000 // len(endpoints)
    runs = timeit.repeat(lambda: scorer.score(state, request, endpoints), number=k, repeat=5)
    result = SchedulingResult({"d": ProfileResult((endpoints[0],))}, "d")

    def hooks() -> None:
        scorer.pre_request(state, request, result)
        scorer.response_complete(request, endpoints[0], None)

    hook_runs = timeit.repeat(hooks, number=20000, repeat=5)
    return min(runs) / k * 1e6, min(hook_runs) / 20000 * 1e6


def main() -> None:
    for n in (10, 100, 1000):
        rng = random.Random(n)
        endpoints = _endpoints(n, rng)
        state = CycleState(0.0)
        for inflight, model in ((False, "lora-0"), (True, "lora-0"), (True, "base")):
            request = InferenceRequest(request_id="r", incoming_model=model, target_model=model)
            scorer = LoraAffinityScorer(params=LoraAffinityParams(inflight_adapters=inflight))
            for adapter in ADAPTERS:  # the scrapes have shown these as adapters
                learn = InferenceRequest(request_id="l", incoming_model="m", target_model=adapter)
                scorer.score(state, learn, endpoints)
            for e in endpoints:
                for _ in range(8):
                    adapter = rng.choice(ADAPTERS[:4])
                    other = InferenceRequest(
                        request_id="x", incoming_model=adapter, target_model=adapter
                    )
                    result = SchedulingResult({"d": ProfileResult((e,))}, "d")
                    scorer.pre_request(state, other, result)
            score_us, hook_us = _measure(scorer, state, request, endpoints)
            print(
                f"endpoints={n:5d} inflightAdapters={inflight!s:5} model={model:6}: "
                f"score {score_us:7.1f} us, PreRequest+ResponseComplete {hook_us:.2f} us"
            )


if __name__ == "__main__":
    main()
