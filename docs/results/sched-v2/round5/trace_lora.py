"""Per-request trace of the slowest requests on the multi-LoRA stage (issue 11, fifth round).

Usage (from the repository root; deterministic, one stage)::

    PYTHONPATH=src .venv/bin/python docs/results/sched-v2/round5/trace_lora.py 64.5 kvroute
    PYTHONPATH=src .venv/bin/python docs/results/sched-v2/round5/trace_lora.py 129 config:PATH

Runs ``--preset multi-lora --param num_adapters=15 --engine max_loras=3 --engine
max_cpu_loras=6``, 10 replicas, ``--duration 30 --seed 1`` (the bench's stage). For every request
of the measurement window it keeps what the scheduler saw at decision time on the chosen
endpoint (scraped running / waiting adapters, the EPP's in-flight adapters, its lora score and
the best lora score in the pool, its in-flight count against the pool's least) and classifies
the slowest 1% (by TTFT): ``resident`` (the adapter was running or in flight there),
``free-slot`` (lora 0.8: a slot looked free), ``evict`` (lora 0.6 / 0: it had to wait for a
slot). It wraps ``SchedulerProfile.run`` to collect the traced run the dry-run path already
has; nothing else changes.
"""

from __future__ import annotations

import collections
import statistics
import sys
from typing import Any

from kvroute.scheduling import profile as prof
from kvroute_bench.cluster import RunConfig
from kvroute_bench.sim_replica import replica_config
from kvroute_bench.sweep import SweepSpec, run_one, stage_requests
from kvroute_bench.workload import resolve_spec

SNAP: dict[str, tuple[dict[str, dict[str, float]], dict[str, Any], float]] = {}
_run = prof.SchedulerProfile.run


def _traced(
    self: Any, state: Any, request: Any, endpoints: Any, trace: Any = None, totals_out: Any = None
) -> Any:
    t: list[Any] = []
    totals: dict[str, float] = {}
    result = _run(self, state, request, endpoints, t, totals)
    scores = {
        p.plugin: {k: p.weight * v for k, v in p.scores.items()}
        for p in t
        if p.kind == "scorer" and p.scores is not None
    }
    eps = {
        e.name: (
            sorted(e.metrics.active_models),
            sorted(e.metrics.waiting_models),
            dict(e.load.inflight_models),
            e.load.inflight,
            e.metrics.waiting_queue_size,
        )
        for e in endpoints
    }
    SNAP[request.request_id] = (scores, eps, state.now)
    return result


def main() -> None:
    qps, policy = float(sys.argv[1]), sys.argv[2]
    prof.SchedulerProfile.run = _traced  # type: ignore[method-assign]
    spec = SweepSpec(
        workload=resolve_spec("multi-lora", {"num_adapters": "15"}),
        engine=replica_config("h100-llama3-8b", {"max_loras": 3, "max_cpu_loras": 6}),
        replicas=10,
        policies=(policy,),
        qps=(qps,),
        duration=30,
        seed=1,
        run=RunConfig(warmup=6, drain=60),
    )
    res = run_one(spec, policy, stage_requests(spec, qps), qps)
    m = res.metrics
    print(f"p90 / p99 TTFT {m.ttft_p90 * 1e3:.0f} / {m.ttft_p99 * 1e3:.0f} ms")
    win = [r for r in res.records if 6 <= r.sent < 30 and r.replica is not None]
    win.sort(key=lambda r: r.ttft(90.0), reverse=True)
    tail = win[: max(1, len(win) // 100)]
    kinds: collections.Counter[str] = collections.Counter()
    per_kind_all: collections.Counter[str] = collections.Counter()
    contrib: dict[str, list[float]] = collections.defaultdict(list)
    replicas: collections.Counter[int] = collections.Counter()
    adapters: collections.Counter[str] = collections.Counter()

    def classify(r: Any) -> str:
        snap = SNAP.get(r.request.request_id)
        if snap is None:
            return "untraced"
        _scores, eps, _now = snap
        act, _wait, infl, _n, _q = eps[f"replica-{r.replica}"]
        a = r.request.adapter
        if a is None:
            return "base"
        if a in act or a in infl:
            return "resident"
        lora = snap[0].get("lora-affinity-scorer", {}).get(f"replica-{r.replica}")
        if lora is None:
            return "no-lora-score"
        return "free-slot" if lora >= 0.8 * 4 - 1e-9 else "evict"

    for r in win:
        per_kind_all[classify(r)] += 1
    for i, r in enumerate(tail):
        k = classify(r)
        kinds[k] += 1
        replicas[r.replica or 0] += 1
        adapters[r.request.adapter or "-"] += 1
        snap = SNAP.get(r.request.request_id)
        if snap is None:
            continue
        scores, eps, now = snap
        chosen = f"replica-{r.replica}"
        lora = scores.get("lora-affinity-scorer", {})
        best_lora = max(lora.values()) if lora else 0.0
        # the endpoint the lora term alone would pick, with the least in flight among those
        best = min(
            (n for n in eps if lora.get(n, 0.0) >= best_lora - 1e-9), key=lambda n: eps[n][3]
        )
        for p, s in scores.items():
            contrib[p].append(s.get(chosen, 0.0) - s.get(best, 0.0))
        if i < 12:
            act, wait, infl, n, q = eps[chosen]
            print(
                f"ttft {r.ttft(90.0) * 1e3:6.0f} ms t={now:5.2f} {r.request.adapter} -> {chosen} "
                f"[{k}] lora {lora.get(chosen, 0):.1f} (best {best_lora:.1f} on {best}, "
                f"inflight {eps[best][3]}) running {act} waiting {wait} "
                f"inflight-models {infl} inflight {n} queue {q}"
            )
    print("window:", dict(per_kind_all))
    print("slowest 1%:", dict(kinds), "n", len(tail))
    print("slowest 1% by replica:", sorted(replicas.items()))
    print("slowest 1% by adapter:", adapters.most_common(6))
    for p in sorted(contrib):
        print(f"chosen - best-lora endpoint: {p:28s} mean {statistics.mean(contrib[p]):+.3f}")


if __name__ == "__main__":
    main()
