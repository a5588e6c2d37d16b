"""Per-request records and the per-stage summary: the formulas every mode (virtual and live) uses.

Definitions (inference-perf's, see the performance-model reference §3.1):

- TTFT = first token - arrival (the client's send time);
- TPOT = (e2e - TTFT) / (output tokens - 1), only for requests with more than one token;
- NTPOT = e2e / output tokens (normalised time per output token, GIE's headline latency);
- e2e = last token - arrival;
- goodput = completed requests per second that met the SLO (TTFT ≤ the request's own TTFT SLO
  or the run's default, and TPOT ≤ the TPOT SLO);
- percentiles interpolate linearly between order statistics (numpy's default, "type 7").

A request that never finished inside the run (still queued when the simulation stopped) is
*censored*: its latencies are counted as "at least until the end", which keeps percentiles honest
under overload instead of silently dropping the worst requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvroute.sdk import Criticality
from kvroute_bench.workload import BenchRequest


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return float(data[lo] + (data[hi] - data[lo]) * frac)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are absolute in the run's clock (seconds)."""

    request: BenchRequest
    sent: float  # when the client sent it (= arrival in virtual time)
    replica: int | None = None
    first_token: float | None = None
    finish: float | None = None
    output_tokens: int = 0
    shed: bool = False  # rejected by the router (429/503)
    failed: bool = False  # an error from the server or transport (live mode)
    cached_tokens: int = 0
    decision_us: float = 0.0  # router wall time for this request's decision

    @property
    def completed(self) -> bool:
        return self.finish is not None and not self.failed

    def ttft(self, end: float) -> float:
        return (self.first_token if self.first_token is not None else end) - self.sent

    def e2e(self, end: float) -> float:
        return (self.finish if self.finish is not None else end) - self.sent

    def tpot(self) -> float | None:
        if self.finish is None or self.first_token is None or self.output_tokens < 2:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)

    def ntpot(self, end: float) -> float:
        return self.e2e(end) / max(1, self.output_tokens or self.request.output_len)


@dataclass(frozen=True, slots=True)
class Slo:
    ttft: float = 1.0  # seconds; a request's own ``ttft_slo`` overrides it
    tpot: float = 0.050  # seconds


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Pool-wide engine counters over a stage (deltas), from the simulator or /metrics."""

    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which were found cached
    preemptions: int = 0
    adapter_loads: int = 0
    per_replica_hit_rate: tuple[float, ...] = ()


@dataclass(slots=True)
class ClassMetrics:
    """Outcome of one criticality class."""

    arrived: int
    completed: int
    shed: int
    success_rate: float
    shed_rate: float
    ttft_p50: float
    ttft_p90: float
    slo_ttft: float
    slo_met_rate: float


@dataclass(slots=True)
class StageMetrics:
    policy: str
    offered_qps: float
    window_s: float
    arrived: int
    completed: int
    shed: int
    failed: int
    censored: int
    achieved_qps: float
    output_tok_s: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    tpot_p50: float
    tpot_p90: float
    ntpot_p50: float
    ntpot_p90: float
    e2e_p50: float
    e2e_p90: float
    goodput_rps: float
    prefix_hit_rate: float
    preemptions: int
    adapter_loads: int
    adapter_loads_per_1k: float
    decision_us_p50: float
    decision_us_p99: float
    by_criticality: dict[str, ClassMetrics] = field(default_factory=dict)
    per_replica_hit_rate: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: _json_safe(v) for k, v in out.items()}


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def summarize(
    records: Iterable[RequestRecord],
    *,
    policy: str,
    offered_qps: float,
    window: tuple[float, float],
    end: float,
    output_tokens_in_window: int,
    counters: EngineCounters,
    slo: Slo,
) -> StageMetrics:
    """Summarise the requests *sent* inside ``window`` (warm-up excluded); ``end`` is when the
    run stopped (censoring time). Throughput counts completions and tokens inside the window, so
    an overloaded pool shows its capacity, not the offered load."""
    t0, t1 = window
    span = max(t1 - t0, 1e-9)
    recs = [r for r in records if t0 <= r.sent < t1]
    served = [r for r in recs if not r.shed and not r.failed]
    done = [r for r in served if r.finish is not None]
    ttfts = [r.ttft(end) for r in served]
    tpots = [x for r in done if (x := r.tpot()) is not None]
    ntpots = [r.ntpot(end) for r in served]
    e2es = [r.e2e(end) for r in served]
    finished_in_window = sum(1 for r in records if r.finish is not None and t0 <= r.finish < t1)
    good = sum(1 for r in done if _meets_slo(r, slo))
    decisions = [r.decision_us for r in recs]
    loads = counters.adapter_loads
    return StageMetrics(
        policy=policy,
        offered_qps=offered_qps,
        window_s=span,
        arrived=len(recs),
        completed=len(done),
        shed=sum(1 for r in recs if r.shed),
        failed=sum(1 for r in recs if r.failed),
        censored=len(served) - len(done),
        achieved_qps=finished_in_window / span,
        output_tok_s=output_tokens_in_window / span,
        ttft_p50=percentile(ttfts, 50),
        ttft_p90=percentile(ttfts, 90),
        ttft_p99=percentile(ttfts, 99),
        tpot_p50=percentile(tpots, 50),
        tpot_p90=percentile(tpots, 90),
        ntpot_p50=percentile(ntpots, 50),
        ntpot_p90=percentile(ntpots, 90),
        e2e_p50=percentile(e2es, 50),
        e2e_p90=percentile(e2es, 90),
        goodput_rps=good / span,
        prefix_hit_rate=(
            counters.prefix_hits / counters.prefix_queries if counters.prefix_queries else 0.0
        ),
        preemptions=counters.preemptions,
        adapter_loads=loads,
        adapter_loads_per_1k=1000.0 * loads / len(recs) if recs else 0.0,
        decision_us_p50=percentile(decisions, 50),
        decision_us_p99=percentile(decisions, 99),
        by_criticality=_by_criticality(recs, end, slo),
        per_replica_hit_rate=list(counters.per_replica_hit_rate),
    )


def _meets_slo(r: RequestRecord, slo: Slo) -> bool:
    if r.first_token is None:
        return False
    ttft_slo = r.request.ttft_slo if r.request.ttft_slo is not None else slo.ttft
    tpot = r.tpot()
    return r.ttft(r.first_token) <= ttft_slo and (tpot is None or tpot <= slo.tpot)


def _by_criticality(recs: Sequence[RequestRecord], end: float, slo: Slo) -> dict[str, ClassMetrics]:
    out: dict[str, ClassMetrics] = {}
    for crit in Criticality:
        group = [r for r in recs if r.request.criticality is crit]
        if not group:
            continue
        served = [r for r in group if not r.shed and not r.failed]
        done = [r for r in served if r.finish is not None]
        ttfts = [r.ttft(end) for r in served]
        slos = [r.request.ttft_slo for r in group if r.request.ttft_slo is not None]
        slo_ttft = slos[0] if slos else slo.ttft
        met = sum(1 for r in done if _meets_slo(r, slo))
        out[crit.value] = ClassMetrics(
            arrived=len(group),
            completed=len(done),
            shed=sum(1 for r in group if r.shed),
            success_rate=len(done) / len(group),
            shed_rate=sum(1 for r in group if r.shed) / len(group),
            ttft_p50=percentile(ttfts, 50),
            ttft_p90=percentile(ttfts, 90),
            slo_ttft=slo_ttft,
            slo_met_rate=met / len(group),
        )
    return out


def gap_closed(rr: float, policy: float, oracle: float) -> float:
    """(RR - policy) / (RR - oracle): 1 = as good as the oracle, 0 = no better than RR,
    negative = worse than RR. NaN when the oracle is no better than RR (nothing to close)."""
    denom = rr - oracle
    if not math.isfinite(denom) or denom <= 0 or not math.isfinite(policy):
        return math.nan
    return (rr - policy) / denom
