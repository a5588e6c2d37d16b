"""Per-decision trace of one policy on one virtual-time stage (issue 11, fourth round).

Usage (from the repository root; deterministic, one stage, ~40 s on the 2-core box)::

    PYTHONPATH=src .venv/bin/python docs/results/sched-v2/round4/trace_sessions.py \
        multi-turn 405 kvroute            # or llm-d-token-aware, config:PATH

Splits the requests that arrived in the measurement window (6-30 s) by what happened to their
session: ``first`` (the session's first request), ``stay`` (same replica as its previous turn),
``move`` (another replica), with p50/p90 TTFT of each; for kvroute's moves, the mean weighted
score difference (chosen - previous replica) per scorer, i.e. what outweighed the cache. It
wraps ``SchedulerProfile.run`` to collect the traced run the dry-run path already has; nothing
else changes.
"""

from __future__ import annotations

import collections
import statistics
import sys
from typing import Any

from kvroute.framework.scheduling import PREFIX_CACHE_MATCH
from kvroute.scheduling import profile as prof
from kvroute_bench.cluster import RunConfig
from kvroute_bench.sim_replica import replica_config
from kvroute_bench.sweep import SweepSpec, run_one, stage_requests
from kvroute_bench.workload import resolve_spec

TRACES: dict[str, tuple[list[Any], dict[str, float], dict[str, int], float]] = {}
_run = prof.SchedulerProfile.run


def _traced(
    self: Any, state: Any, request: Any, endpoints: Any, trace: Any = None, totals_out: Any = None
) -> Any:
    t: list[Any] = []
    totals: dict[str, float] = {}
    result = _run(self, state, request, endpoints, t, totals)
    info = state.get(PREFIX_CACHE_MATCH, None)
    cached = dict(info.cached_tokens) if info else {}
    TRACES[request.request_id] = (t, totals, cached, len(request.prompt_text) / 4)
    return result


def main() -> None:
    preset, qps, policy = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    prof.SchedulerProfile.run = _traced  # type: ignore[method-assign]
    spec = SweepSpec(
        workload=resolve_spec(preset, {}),
        engine=replica_config("h100-llama3-8b", {}),
        replicas=10,
        policies=(policy,),
        qps=(qps,),
        duration=30,
        seed=1,
        run=RunConfig(warmup=6, drain=60),
    )
    res = run_one(spec, policy, stage_requests(spec, qps), qps)
    print(f"p90 TTFT {res.metrics.ttft_p90 * 1e3:.0f} ms")
    prev: dict[str, int] = {}
    count: collections.Counter[str] = collections.Counter()
    ttft: dict[str, list[float]] = collections.defaultdict(list)
    moves: list[dict[str, float]] = []
    for r in sorted(res.records, key=lambda r: r.sent):
        s = r.request.session_id
        if r.replica is None or s is None:
            continue
        kind = "first" if s not in prev else ("stay" if prev[s] == r.replica else "move")
        if 6 <= r.sent < 30:
            count[kind] += 1
            ttft[kind].append(r.ttft(90.0) * 1e3)
            if kind == "move" and r.request.request_id in TRACES:
                t, _tot, cached, plen = TRACES[r.request.request_id]
                chosen, holder = f"replica-{r.replica}", f"replica-{prev[s]}"
                d = {
                    p.plugin: p.weight * (p.scores.get(chosen, 0) - p.scores.get(holder, 0))
                    for p in t
                    if p.kind == "scorer" and p.scores is not None
                }
                d["_cached_holder"] = cached.get(holder, 0) / plen
                d["_cached_chosen"] = cached.get(chosen, 0) / plen
                moves.append(d)
        prev[s] = r.replica
    for kind in ("first", "stay", "move"):
        v = sorted(ttft[kind])
        if v:
            p50, p90 = v[len(v) // 2], v[int(len(v) * 0.9)]
            print(f"{kind:5s} n {len(v):5d}  TTFT p50 {p50:.0f}  p90 {p90:.0f} ms")
    for key in sorted({k for d in moves for k in d}):
        print(f"moves: {key:30s} mean {statistics.mean(d.get(key, 0.0) for d in moves):+.3f}")
    per = collections.Counter(r.replica for r in res.records if 6 <= r.sent < 30)
    print("requests per replica", sorted(per.values()))


if __name__ == "__main__":
    main()
