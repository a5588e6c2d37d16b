"""Per-call cost of ``lora-affinity-scorer``: upstream formula vs ``inflightAdapters`` (default).

Run: ``.venv/bin/python docs/results/lora_affinity_cost.py``. N endpoints with 3 of 15 adapters
active (``max_active_models`` 3, so slots are full, the common case under load) and 8 requests
of 4 adapters in flight on each (on the datastore's in-flight ledger, where the director counts
them); prints the best-of-5 time of one ``score`` call and of one send + finish pair on the
ledger, for an adapter request and (with the accounting on) a base-model request. The figures
are in docs/benchmarks.md.
"""

from __future__ import annotations

import random
import timeit

from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.scorers.lora_affinity import LoraAffinityParams, LoraAffinityScorer
from kvroute.scheduling.request import InferenceRequest

ADAPTERS = [f"lora-{i}" for i in range(15)]


def _store(n: int, rng: random.Random) -> Datastore:
    store = Datastore()
    for i in range(n):
        store.upsert_endpoint(f"e{i}", "10.0.0.1", 8000 + i)
        store.update_metrics(
            f"e{i}",
            EndpointMetrics(active_models=frozenset(rng.sample(ADAPTERS, 3)), max_active_models=3),
        )
    return store


def _measure(
    scorer: LoraAffinityScorer,
    state: CycleState,
    request: InferenceRequest,
    store: Datastore,
) -> tuple[float, float]:
    endpoints: tuple[Endpoint, ...] = store.endpoints()
    k = 20000 // len(endpoints)
    runs = timeit.repeat(lambda: scorer.score(state, request, endpoints), number=k, repeat=5)
    target, model = endpoints[0], request.target_model

    def ledger() -> None:
        store.on_request_sent(target.name, 10, model=model)
        store.on_request_finished(target.name, 10, load=target.load, model=model)

    ledger_runs = timeit.repeat(ledger, number=20000, repeat=5)
    return min(runs) / k * 1e6, min(ledger_runs) / 20000 * 1e6


def main() -> None:
    for n in (10, 100, 1000):
        rng = random.Random(n)
        state = CycleState(0.0)
        for inflight, model in ((False, "lora-0"), (True, "lora-0"), (True, "base")):
            store = _store(n, rng)
            endpoints = store.endpoints()
            request = InferenceRequest(request_id="r", incoming_model=model, target_model=model)
            scorer = LoraAffinityScorer(params=LoraAffinityParams(inflight_adapters=inflight))
            for adapter in ADAPTERS:  # the scrapes have shown these as adapters
                learn = InferenceRequest(request_id="l", incoming_model="m", target_model=adapter)
                scorer.score(state, learn, endpoints)
            for e in endpoints:
                for _ in range(8):
                    store.on_request_sent(e.name, model=rng.choice(ADAPTERS[:4]))
            score_us, ledger_us = _measure(scorer, state, request, store)
            print(
                f"endpoints={n:5d} inflightAdapters={inflight!s:5} model={model:6}: "
                f"score {score_us:7.1f} us, ledger send+finish {ledger_us:.2f} us"
            )


if __name__ == "__main__":
    main()
