"""Autoscaling in virtual time: a pool that an HPA grows and shrinks during the run.

The same discrete-event model as :mod:`kvroute_bench.cluster` (simulated engines stepped in
virtual time, one router, one clock), with a pool whose size changes:

- every ``sync_period`` the :class:`~kvroute_bench.hpa.Hpa` reads one **signal** over the
  ready replicas and sets the Deployment's replica count;
- a new replica **starts** (pulls the image, loads weights) for a start-up delay drawn uniformly
  from ``[startup_min, startup_max]`` (60-180 s by default), is billed from the moment it is
  created and takes traffic only once ready;
- a removed replica leaves the router's pool at once (the EPP drops a terminating pod), finishes
  its in-flight requests and is billed until the last one ends; starting replicas are removed
  first, then the newest ready ones (the ReplicaSet's preference for the youngest pods).

Signals (:data:`SIGNALS`), each the value the chart's PromQL would return at the sync:
``gpu-busy`` (the fraction of the last sync period each engine spent stepping, averaged over
ready replicas: what DCGM's ``GR_ENGINE_ACTIVE`` or ``nvidia-smi`` utilisation reports and
what most HPAs use), ``queue`` (``kvroute_pool_average_queue_size``), ``kv``
(``kvroute_pool_average_kv_cache_utilization``) and ``running``
(``kvroute_pool_average_running_requests``). The EPP also exports flow control's queue wait and
the predicted-TTFT headroom, but this loop runs neither (it routes at arrival, without flow
control or the latency predictor), so they are not offered: :func:`register_signal` takes them
once the loop models them.

The router sees the ready replicas' endpoints with the EPP's in-flight ledger (``least-requests``
by default; policies that read scraped metrics are not offered, since this loop does not scrape
between syncs).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from kvroute.sdk import Endpoint, EndpointLoad
from kvroute_bench.baselines import Router
from kvroute_bench.hpa import Hpa, HpaSpec
from kvroute_bench.metrics import RequestRecord, percentile
from kvroute_bench.pool import PoolView, StepEvents
from kvroute_bench.sim_replica import SimReplica
from kvroute_bench.workload import BenchRequest, WorkloadSpec, generate
from kvroute_sim.config import EngineConfig

_STEP, _READY, _SYNC = 0, 1, 2
TRACE_SHAPES = ("diurnal", "bursty")
ROUTERS = ("least-requests", "p2c", "round-robin")


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """The offered load over time (requests/s), applied by thinning a Poisson stream.

    ``diurnal``: a day compressed into ``period`` seconds, from ``trough`` x peak at the start to
    the peak at mid-period and back. ``bursty``: a steady ``base`` x peak with square bursts to
    the peak, ``burst_len`` seconds long every ``burst_every`` seconds (the first after one
    interval).
    """

    shape: str = "diurnal"
    peak_qps: float = 40.0
    duration: float = 1200.0
    period: float = 1200.0
    trough: float = 0.15
    base: float = 0.35
    burst_every: float = 300.0
    burst_len: float = 90.0

    def __post_init__(self) -> None:
        if self.shape not in TRACE_SHAPES:
            raise ValueError(f"unknown trace shape {self.shape!r} (known: {TRACE_SHAPES})")

    def rate_at(self, t: float) -> float:
        if self.shape == "diurnal":
            frac = (
                self.trough + (1 - self.trough) * (1 - math.cos(2 * math.pi * t / self.period)) / 2
            )
            return self.peak_qps * frac
        k = t / self.burst_every
        in_burst = k >= 1 and (t - math.floor(k) * self.burst_every) < self.burst_len
        return self.peak_qps * (1.0 if in_burst else self.base)


def trace_requests(trace: TraceSpec, workload: WorkloadSpec, seed: int) -> list[BenchRequest]:
    """The workload's request shapes arriving at ``trace.rate_at(t)`` (seeded thinning)."""
    rng = random.Random(seed * 31 + 7)
    full = generate(workload, rate=trace.peak_qps, duration=trace.duration, seed=seed)
    return [r for r in full if rng.random() * trace.peak_qps < trace.rate_at(r.arrival)]


@dataclass(frozen=True, slots=True)
class PoolSample:
    """What a signal reads at a sync: the ready replicas' endpoints (metrics as of now) and the
    fraction of the last sync period each one's engine spent stepping."""

    endpoints: Sequence[Endpoint]
    busy: Sequence[float]


SignalFn = Callable[[PoolSample], float | None]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


SIGNALS: dict[str, SignalFn] = {
    "gpu-busy": lambda s: _mean(s.busy),
    "queue": lambda s: _mean([float(e.metrics.waiting_queue_size) for e in s.endpoints]),
    "kv": lambda s: _mean([e.metrics.kv_cache_usage for e in s.endpoints]),
    "running": lambda s: _mean([float(e.metrics.running_queue_size) for e in s.endpoints]),
}
# Signals the EPP exports that this loop does not model. Named here so that asking for them says
# why they are missing.
PENDING_SIGNALS = {
    "flow-control-wait": (
        "this loop runs no flow control (the EPP exports "
        "kvroute_pool_admission_queue_oldest_wait_seconds)"
    ),
    "ttft-headroom": (
        "this loop runs no latency predictor (the EPP exports "
        "kvroute_pool_predicted_ttft_headroom_seconds)"
    ),
}


def register_signal(name: str, fn: SignalFn) -> None:
    """Add a signal (flow-control wait, predicted-TTFT headroom) under ``name``."""
    if name in SIGNALS:
        raise ValueError(f"signal {name!r} already registered")
    SIGNALS[name] = fn
    PENDING_SIGNALS.pop(name, None)


def signal_fn(name: str) -> SignalFn:
    if name in SIGNALS:
        return SIGNALS[name]
    if name in PENDING_SIGNALS:
        raise ValueError(f"signal {name!r} is not available yet: {PENDING_SIGNALS[name]}")
    raise ValueError(f"unknown signal {name!r} (known: {', '.join(SIGNALS)})")


@dataclass(frozen=True, slots=True)
class ScalerConfig:
    signal: str
    hpa: HpaSpec
    initial_replicas: int = 2
    startup_min: float = 60.0
    startup_max: float = 180.0
    drain: float = 120.0  # seconds after the last arrival for requests to finish
    slo_ttft: float = 1.0
    bucket: float = 30.0  # time-series resolution of the p90 TTFT plot

    @property
    def label(self) -> str:
        return f"{self.signal}@{self.hpa.target:g}"


@dataclass(slots=True)
class _Slot:
    engine: SimReplica
    endpoint: Endpoint
    created: float
    ready_at: float
    state: str = "starting"  # starting | ready | draining | gone
    ended: float | None = None
    stepping: bool = False
    busy: float = 0.0  # seconds stepping since the last sync
    requests: dict[str, BenchRequest] = field(default_factory=dict)


@dataclass(slots=True)
class AutoscaleResult:
    label: str
    signal: str
    target: float
    arrived: int
    slo_attainment: float  # requests whose TTFT met the SLO / requests arrived
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    replica_hours: float
    peak_replicas: int
    # (time, replicas desired, replicas ready, signal value or NaN) at each sync
    series: list[tuple[float, int, int, float]]
    ttft_p90_series: list[tuple[float, float]]  # (bucket start, p90 TTFT of arrivals in it)

    def row(self) -> dict[str, float | str | int]:
        return {
            "label": self.label,
            "signal": self.signal,
            "target": self.target,
            "arrived": self.arrived,
            "slo_attainment": self.slo_attainment,
            "ttft_p50": self.ttft_p50,
            "ttft_p90": self.ttft_p90,
            "ttft_p99": self.ttft_p99,
            "replica_hours": self.replica_hours,
            "peak_replicas": self.peak_replicas,
        }


def run_autoscaled(
    requests: Sequence[BenchRequest],
    engine: EngineConfig,
    router: Router,
    scaler: ScalerConfig,
    *,
    seed: int = 0,
) -> AutoscaleResult:
    """Run ``requests`` through a pool that ``scaler`` resizes; see the module docstring."""
    read_signal = signal_fn(scaler.signal)
    hpa = Hpa(scaler.hpa)
    rng = random.Random(seed * 977 + 3)
    slots: list[_Slot] = []
    ready: list[_Slot] = []  # the router's pool, in creation order
    heap: list[tuple[float, int, int, int, object]] = []
    seq = 0
    records = {r.request_id: RequestRecord(request=r, sent=r.arrival) for r in requests}

    def push(t: float, kind: int, i: int, payload: object = None) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, kind, seq, i, payload))
        seq += 1

    def new_slot(now: float, delay: float) -> None:
        i = len(slots)
        ep = Endpoint(name=f"replica-{i}", address="10.0.0.1", port=8000 + i, load=EndpointLoad())
        slots.append(_Slot(SimReplica(engine), ep, now, now + delay))
        if delay <= 0:
            slots[i].state = "ready"
            ready.append(slots[i])
        else:
            push(now + delay, _READY, i)

    def wake(i: int, t: float) -> None:
        at = slots[i].engine.next_step_time(t)
        if at is not None:
            slots[i].stepping = True
            push(at, _STEP, i)

    def retire(s: _Slot, now: float) -> None:
        if s.state == "draining" and not s.requests:
            s.state, s.ended = "gone", now

    def rescale(now: float, desired: int) -> None:
        live = [s for s in slots if s.state in ("starting", "ready")]
        for _ in range(desired - len(live)):
            new_slot(now, rng.uniform(scaler.startup_min, scaler.startup_max))
        surplus = len(live) - desired
        for s in sorted(live, key=lambda s: (s.state == "ready", -s.created)):
            if surplus <= 0:
                break
            surplus -= 1
            if s.state == "starting":
                s.state, s.ended = "gone", now
            else:
                ready.remove(s)
                s.state = "draining"
                retire(s, now)

    for _ in range(scaler.initial_replicas):
        new_slot(0.0, 0.0)
    last = requests[-1].arrival if requests else 0.0
    stop_at = last + scaler.drain
    push(scaler.hpa.sync_period, _SYNC, -1)
    series: list[tuple[float, int, int, float]] = []
    idx = 0
    now = 0.0
    while True:
        t_arr = requests[idx].arrival if idx < len(requests) else math.inf
        t_ev = heap[0][0] if heap else math.inf
        if t_arr < t_ev:
            now = t_arr
            req = requests[idx]
            idx += 1
            choice = router.pick(req, PoolView([s.endpoint for s in ready]), now)
            rec = records[req.request_id]
            if choice is None:
                rec.shed = True
                continue
            s = ready[choice]
            rec.replica = slots.index(s)
            if not s.engine.add(req, now):
                rec.failed = True
                continue
            s.endpoint.load.inflight += 1
            s.endpoint.load.inflight_tokens += req.prompt_len + req.output_len
            s.requests[req.request_id] = req
            if not s.stepping:
                wake(rec.replica, now)
            continue
        if t_ev == math.inf or t_ev > stop_at:
            break
        now, kind, _seq, i, payload = heapq.heappop(heap)
        if kind == _SYNC:
            live = [s for s in slots if s.state in ("starting", "ready")]
            period = scaler.hpa.sync_period
            sample = PoolSample(
                [replace(s.endpoint, metrics=s.engine.snapshot(now)) for s in ready],
                [min(1.0, s.busy / period) for s in ready],
            )
            for s in slots:
                s.busy = 0.0
            value = read_signal(sample)
            desired = hpa.decide(now, len(live), value)
            rescale(now, desired)
            series.append((now, desired, len(ready), math.nan if value is None else value))
            if idx < len(requests) or any(s.requests for s in slots):
                push(now + period, _SYNC, -1)
            continue
        s = slots[i]
        if kind == _READY:
            if s.state == "starting":
                s.state = "ready"
                ready.append(s)
            continue
        if payload is None:  # a wake-up: the step starts now
            ev = s.engine.step(now)
            if ev.duration <= 0.0:
                s.stepping = False
                at = s.engine.next_step_time(now)
                if at is not None and at > now:
                    wake(i, now)
                continue
            s.busy += ev.duration
            push(now + ev.duration, _STEP, i, ev)
            continue
        s.stepping = False
        assert isinstance(payload, StepEvents)
        for rid in payload.first_token:
            records[rid].first_token = now
        for rid, n_out in payload.finished:
            rec = records[rid]
            rec.finish, rec.output_tokens = now, n_out
            if rec.first_token is None:
                rec.first_token = now
            req = s.requests.pop(rid)
            s.endpoint.load.inflight -= 1
            s.endpoint.load.inflight_tokens -= req.prompt_len + req.output_len
            router.on_complete(req, i, now)
        retire(s, now)
        wake(i, now)
    return _result(scaler, list(records.values()), slots, series, now)


def _result(
    scaler: ScalerConfig,
    recs: list[RequestRecord],
    slots: list[_Slot],
    series: list[tuple[float, int, int, float]],
    end: float,
) -> AutoscaleResult:
    # A request never served (shed, rejected, unfinished) counts at end - sent: a miss.
    served = [not (r.shed or r.failed) and r.first_token is not None for r in recs]
    ttfts = [r.ttft(end) if ok else end - r.sent for r, ok in zip(recs, served, strict=True)]
    met = sum(1 for t, ok in zip(ttfts, served, strict=True) if ok and t <= scaler.slo_ttft)
    finite = sorted(ttfts)
    billed = sum((s.ended if s.ended is not None else end) - s.created for s in slots)
    buckets: dict[int, list[float]] = {}
    for r, t in zip(recs, ttfts, strict=True):
        buckets.setdefault(int(r.sent // scaler.bucket), []).append(t)
    p90_series = [(k * scaler.bucket, percentile(v, 90)) for k, v in sorted(buckets.items())]
    return AutoscaleResult(
        label=scaler.label,
        signal=scaler.signal,
        target=scaler.hpa.target,
        arrived=len(recs),
        slo_attainment=met / len(recs) if recs else 1.0,
        ttft_p50=percentile(finite, 50) if finite else math.nan,
        ttft_p90=percentile(finite, 90) if finite else math.nan,
        ttft_p99=percentile(finite, 99) if finite else math.nan,
        replica_hours=billed / 3600.0,
        peak_replicas=max((d for _t, d, _r, _v in series), default=scaler.initial_replicas),
        series=series,
        ttft_p90_series=p90_series,
    )
