"""The virtual-time discrete-event harness: a pool of simulated engines, one router, one clock.

Events, in time order (ties: steps finish before scrapes, scrapes before arrivals):

- **arrival** — the router picks a replica from the :class:`~kvroute_bench.pool.PoolView`
  (wall time of the decision is measured); the request is added to that engine, the EPP-side
  counters (``inflight``, ``sent_since_scrape``, ``inflight_tokens``) go up, and an idle engine
  starts a step at once, as vLLM's engine loop would.
- **step done** — the step's first tokens and completions are stamped at its end; a router with
  an ``on_first_token`` method hears of each first token (the first streamed chunk); completions
  decrement the counters and reach the router's ``on_complete`` (kvroute's ResponseComplete);
  a busy engine starts its next step immediately.
- **scrape** — every ``scrape_interval`` each replica's metrics are snapshotted into its
  ``Endpoint`` (phases staggered across replicas, as independent scrapers would be) and its
  ``sent_since_scrape`` resets. Between scrapes a router sees metrics up to one interval old.

A router may also **hold** a request: ``pick`` returns :data:`HOLD` and the router keeps it
(kvroute's flow control). After every event the harness asks ``release(pool, now)`` for one held
request at a time, ``(request, replica)`` to dispatch it now (the counters move before the next
call, as the EPP's do) or ``(request, None)`` to reject it; ``None`` when nothing is due. Its
TTFT counts from arrival, so the wait is part of it.

Nothing here touches the wall clock except to time decisions, so a run is a pure function of
(workload, engines, router, seed).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from kvroute.sdk import Endpoint, EndpointLoad
from kvroute_bench.baselines import Router
from kvroute_bench.metrics import EngineCounters, RequestRecord, Slo, StageMetrics, summarize
from kvroute_bench.pool import EngineTotals, PoolView, ReplicaEngine, StepCosts, StepEvents
from kvroute_bench.workload import BenchRequest

_STEP, _SCRAPE = 0, 1
HOLD = -1  # ``pick`` result: the router keeps the request and releases it later


@dataclass(frozen=True, slots=True)
class RunConfig:
    scrape_interval: float = 0.05
    warmup: float = 0.0  # seconds at the start excluded from the metrics
    drain: float = 60.0  # seconds after the last arrival to let requests finish
    slo: Slo = field(default_factory=Slo)


@dataclass(slots=True)
class RunResult:
    metrics: StageMetrics
    records: list[RequestRecord]
    sim_seconds: float
    wall_seconds: float
    decisions: int


def make_endpoints(n: int, labels: Sequence[Mapping[str, str]] | None = None) -> list[Endpoint]:
    """``n`` endpoints; ``labels[i]`` are replica ``i``'s pod labels (accelerator, cost)."""
    return [
        Endpoint(
            name=f"replica-{i}",
            address="10.0.0.1",
            port=8000 + i,
            labels=dict(labels[i]) if labels else {},
            load=EndpointLoad(),
        )
        for i in range(n)
    ]


def run_stage(
    requests: Sequence[BenchRequest],
    engines: Sequence[ReplicaEngine],
    router: Router,
    *,
    offered_qps: float,
    duration: float,
    config: RunConfig,
    costs: StepCosts | None = None,
    progress: Callable[[float], None] | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
) -> RunResult:
    """Run one stage: the arrivals in ``requests`` (sorted, times in ``[0, duration)``).

    ``labels`` (one mapping per replica) become the endpoints' pod labels. Per replica, the
    seconds of the steps ending inside the measurement window go to
    ``metrics.extra["replica_busy_s"]`` (:mod:`kvroute_bench.cost`)."""
    wall0 = time.perf_counter()
    n = len(engines)
    pool = PoolView(make_endpoints(n, labels), engines, costs)
    records = {r.request_id: RequestRecord(request=r, sent=r.arrival) for r in requests}
    by_replica_req: list[dict[str, BenchRequest]] = [{} for _ in range(n)]
    stepping = [False] * n
    heap: list[tuple[float, int, int, int, StepEvents | None]] = []
    seq = 0
    for i in range(n):
        heapq.heappush(heap, (config.scrape_interval * i / n, _SCRAPE, seq, i, None))
        seq += 1
    start_totals = [e.totals() for e in engines]
    window = (config.warmup, duration)
    tokens_in_window = 0
    replica_busy = [0.0] * n
    stop_at = duration + config.drain
    now = 0.0
    next_progress = 0.0
    idx = 0
    decisions = 0
    prepare = getattr(router, "prepare", None)
    on_first_token = getattr(router, "on_first_token", None)
    release = getattr(router, "release", None)

    def dispatch(req: BenchRequest, choice: int | None, now: float) -> None:
        rec = records[req.request_id]
        if choice is None:
            rec.shed = True
            return
        rec.replica = choice
        if not engines[choice].add(req, now):
            rec.failed = True
            router.on_complete(req, choice, now)
            return
        load = pool.endpoints[choice].load
        load.inflight += 1
        load.sent_since_scrape += 1
        load.inflight_tokens += req.prompt_len + req.output_len
        by_replica_req[choice][req.request_id] = req
        if not stepping[choice]:
            wake(choice, now)

    def release_held(now: float) -> None:
        if release is None:
            return
        while (out := release(pool, now)) is not None:
            dispatch(out[0], out[1], now)

    def wake(i: int, t: float) -> None:
        """Queue replica ``i``'s next step at the time its engine loop would take it."""
        nonlocal seq
        at = engines[i].next_step_time(t)
        if at is None:
            return
        stepping[i] = True
        heapq.heappush(heap, (at, _STEP, seq, i, None))
        seq += 1

    while True:
        t_arr = requests[idx].arrival if idx < len(requests) else float("inf")
        t_ev = heap[0][0] if heap else float("inf")
        if t_arr < t_ev:
            now = t_arr
            req = requests[idx]
            idx += 1
            if prepare is not None:
                prepare(req)  # untimed: request rendering is the client's work, not the EPP's
            t0 = time.perf_counter()
            choice = router.pick(req, pool, now)
            rec = records[req.request_id]
            rec.decision_us = (time.perf_counter() - t0) * 1e6
            decisions += 1
            if choice != HOLD:
                dispatch(req, choice, now)
            continue
        if t_ev == float("inf"):
            break
        now, kind, _s, i, ev = heapq.heappop(heap)
        if now > stop_at:
            break
        if kind == _SCRAPE:
            if idx >= len(requests) and not any(stepping):
                continue  # nothing left to happen: let the scrape chain end
            ep = pool.endpoints[i]
            pool.endpoints[i] = replace(ep, metrics=engines[i].snapshot(now))
            ep.load.sent_since_scrape = 0
            heapq.heappush(heap, (now + config.scrape_interval, _SCRAPE, seq, i, None))
            seq += 1
            release_held(now)  # also where held requests' TTLs are checked
            if progress is not None and now >= next_progress:
                progress(now)
                next_progress = now + 1.0
            continue
        if ev is None:
            # A wake-up: the step starts now; its events land at its end.
            ev = engines[i].step(now)
            if ev.duration <= 0.0:
                stepping[i] = False
                at = engines[i].next_step_time(now)
                if at is not None and at > now:
                    wake(i, now)
                continue
            heapq.heappush(heap, (now + ev.duration, _STEP, seq, i, ev))
            seq += 1
            continue
        stepping[i] = False
        if window[0] <= now < window[1]:
            tokens_in_window += ev.output_tokens
            replica_busy[i] += ev.duration
        for rid in ev.first_token:
            records[rid].first_token = now
            if on_first_token is not None:
                on_first_token(by_replica_req[i][rid], i, now)
        for rid, n_out in ev.finished:
            rec = records[rid]
            rec.finish = now
            rec.output_tokens = n_out
            if rec.first_token is None:
                rec.first_token = now
            req = by_replica_req[i].pop(rid)
            load = pool.endpoints[i].load
            load.inflight -= 1
            load.inflight_tokens -= req.prompt_len + req.output_len
            router.on_complete(req, i, now)
        wake(i, now)
        if ev.finished:
            release_held(now)

    end = now
    counters = _counters(start_totals, [e.totals() for e in engines])
    recs = list(records.values())
    metrics = summarize(
        recs,
        policy=router.name,
        offered_qps=offered_qps,
        window=window,
        end=end,
        output_tokens_in_window=tokens_in_window,
        counters=counters,
        slo=config.slo,
    )
    metrics.extra["replica_busy_s"] = replica_busy
    return RunResult(metrics, recs, end, time.perf_counter() - wall0, decisions)


def _counters(before: Sequence[EngineTotals], after: Sequence[EngineTotals]) -> EngineCounters:
    per_replica = []
    q = h = p = a = 0
    for b, e in zip(before, after, strict=True):
        dq, dh = e.prefix_queries - b.prefix_queries, e.prefix_hits - b.prefix_hits
        q, h = q + dq, h + dh
        p += e.preemptions - b.preemptions
        a += e.adapter_loads - b.adapter_loads
        per_replica.append(dh / dq if dq else 0.0)
    return EngineCounters(
        prefix_queries=q,
        prefix_hits=h,
        preemptions=p,
        adapter_loads=a,
        per_replica_hit_rate=tuple(per_replica),
    )
