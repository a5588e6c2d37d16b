"""A QPS sweep: every policy at every offered load, on the same generated requests.

For each stage the workload is generated once (seeded), then each policy runs it on a fresh pool
of engines, so policies differ only in their decisions. The engines are identical unless the
spec names an accelerator per replica (a heterogeneous pool, :mod:`kvroute_sim.accelerators`).
``pooled`` runs the same requests on one engine with the pool's resources
(:func:`~kvroute_bench.sim_replica.pooled_config`; homogeneous pools only); ``oracle`` is the
greedy clairvoyant router.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvroute_bench.baselines import BASELINES, GreedyOracle, Router
from kvroute_bench.cache_aware import SglangCacheAwareRouter
from kvroute_bench.cache_bound import pooled_cache_hit_rate
from kvroute_bench.cluster import RunConfig, RunResult, run_stage
from kvroute_bench.cost import (
    cost_figures,
    parse_prices,
    replica_labels,
    replica_output_tokens,
    ttft_attainment,
)
from kvroute_bench.metrics import StageMetrics
from kvroute_bench.pool import PoolView
from kvroute_bench.sim_replica import SimReplica, pooled_config, step_costs
from kvroute_bench.token_aware import LlmdTokenAwareRouter
from kvroute_bench.workload import BenchRequest, WorkloadSpec, generate
from kvroute_sim.accelerators import on_accelerator
from kvroute_sim.config import EngineConfig

EPP_PROFILES = {"kvroute": "default", "decision-tree": "decision-tree"}
# EPP configs shipped with the bench, by policy name: upstream's default stays available by name
# whatever kvroute's own default becomes.
EPP_CONFIG_FILES = {
    "upstream-default": Path(__file__).parent / "profiles/upstream-default.yaml",
    "cost-aware": Path(__file__).parent / "profiles/cost-aware.yaml",
}
PEER_BASELINES: dict[str, Callable[[int], Router]] = {
    "sglang-cache-aware": SglangCacheAwareRouter,
    "llm-d-token-aware": LlmdTokenAwareRouter,
}
ALL_POLICIES = (
    "random",
    "round-robin",
    "least-requests",
    "p2c",
    *PEER_BASELINES,
    *EPP_PROFILES,
    *EPP_CONFIG_FILES,
    "oracle",
    "pooled",
)


class _Single:
    """The pooled bound's router: there is one replica."""

    name = "pooled"

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        return 0

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        del request, replica, now


def make_router(policy: str, seed: int) -> Router:
    """A router by policy name: a baseline (``round-robin`` ... ``sglang-cache-aware``,
    ``llm-d-token-aware``), ``kvroute``/``decision-tree`` (built-in profiles),
    ``upstream-default``, ``config:PATH`` (any EndpointPickerConfig file), ``oracle`` or
    ``pooled``."""
    if policy in BASELINES:
        return BASELINES[policy](seed)
    if policy in PEER_BASELINES:
        return PEER_BASELINES[policy](seed)
    if policy == "oracle":
        return GreedyOracle()
    if policy == "pooled":
        return _Single()
    from kvroute_bench.epp_router import EppRouter  # kvroute's scheduler: imported on demand

    if policy in EPP_PROFILES:
        return EppRouter(policy, EPP_PROFILES[policy], seed=seed)
    if policy in EPP_CONFIG_FILES:
        return EppRouter(policy, str(EPP_CONFIG_FILES[policy]), seed=seed)
    if policy.startswith("config:"):
        path = policy.removeprefix("config:")
        return EppRouter(policy, path, seed=seed)
    known = ", ".join([*ALL_POLICIES, "config:PATH"])
    raise ValueError(f"unknown policy {policy!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    workload: WorkloadSpec
    engine: EngineConfig
    replicas: int
    policies: tuple[str, ...]
    qps: tuple[float, ...]
    duration: float
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    requests: tuple[BenchRequest, ...] | None = None  # trace replay: used at every stage
    accelerators: tuple[str, ...] = ()  # one per replica (heterogeneous pool); () = all --profile

    def replica_configs(self) -> list[EngineConfig]:
        """Each replica's engine: ``engine`` as it runs on that replica's accelerator."""
        if not self.accelerators:
            return [self.engine] * self.replicas
        if len(self.accelerators) != self.replicas:
            raise ValueError(
                f"{len(self.accelerators)} accelerators given for {self.replicas} replicas"
            )
        return [on_accelerator(self.engine, a) for a in self.accelerators]

    def prices(self) -> dict[str, float]:
        """The workload's ``prices`` per class (empty: the classes' default prices)."""
        return parse_prices(self.workload.prices)


@dataclass(slots=True)
class StageOutcome:
    offered_qps: float
    by_policy: dict[str, StageMetrics]
    speed: dict[str, dict[str, float]]  # policy -> {sim_s, wall_s, decisions}
    cache_bound: dict[str, float] = field(default_factory=dict)  # pooled / unbounded hit rate


def run_one(
    spec: SweepSpec,
    policy: str,
    requests: Sequence[BenchRequest],
    qps: float,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    if policy == "pooled":
        if spec.accelerators:
            raise ValueError("the pooled bound is defined for homogeneous pools only")
        cfg = pooled_config(spec.engine, spec.replicas)
        engines = [SimReplica(cfg)]
    else:
        cfg = spec.engine
        engines = [SimReplica(c) for c in spec.replica_configs()]
    labels = replica_labels(spec.accelerators, spec.prices()) if spec.accelerators else None
    router = make_router(policy, spec.seed)
    return run_stage(
        requests,
        engines,
        router,
        offered_qps=qps,
        duration=spec.duration,
        config=spec.run,
        costs=step_costs(cfg),
        progress=progress,
        labels=labels if policy != "pooled" else None,
    )


def stage_requests(spec: SweepSpec, qps: float) -> list[BenchRequest]:
    if spec.requests is not None:
        return [r for r in spec.requests if r.arrival < spec.duration]
    return generate(spec.workload, rate=qps, duration=spec.duration, seed=spec.seed)


def run_sweep(
    spec: SweepSpec,
    *,
    on_start: Callable[[float, str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    outcomes = []
    capacity = class_capacity(spec) if spec.workload.prices and spec.accelerators else {}
    for qps in spec.qps:
        requests = stage_requests(spec, qps)
        by_policy: dict[str, StageMetrics] = {}
        speed: dict[str, dict[str, float]] = {}
        for policy in spec.policies:
            if on_start is not None:
                on_start(qps, policy)
            result = run_one(spec, policy, requests, qps, on_progress)
            if capacity and policy != "pooled":
                add_cost(spec, result, capacity)
            by_policy[policy] = result.metrics
            speed[policy] = {
                "sim_s": result.sim_seconds,
                "wall_s": result.wall_seconds,
                "decisions": float(result.decisions),
            }
        outcome = StageOutcome(qps, by_policy, speed, cache_bounds(spec, requests))
        outcomes.append(outcome)
        if on_stage is not None:
            on_stage(outcome)
    return outcomes


def cache_bounds(spec: SweepSpec, requests: Sequence[BenchRequest]) -> dict[str, float]:
    """Prefix hit-rate ceilings for these requests: one LRU cache with the pool's total KV
    blocks, and an unbounded one (see :mod:`kvroute_bench.cache_bound`)."""
    if not spec.engine.prefix_caching:
        return {}
    bs = spec.engine.block_size
    total = sum(c.num_gpu_blocks for c in spec.replica_configs())
    pooled = pooled_cache_hit_rate(requests, capacity_blocks=total, block_size=bs)
    unbounded = pooled_cache_hit_rate(requests, capacity_blocks=None, block_size=bs)
    return {"pooled_cache": pooled.hit_rate, "unbounded_cache": unbounded.hit_rate}


def class_capacity(spec: SweepSpec) -> dict[str, float]:
    """Saturated output tokens/s of one replica of each class in the pool, on this workload
    (:func:`saturation_probe`): the denominator of the ``work`` cost (:mod:`kvroute_bench.cost`)."""
    out: dict[str, float] = {}
    for a in spec.accelerators:
        if a not in out:
            cfg = on_accelerator(spec.engine, a)
            out[a] = saturation_probe(spec.workload, cfg, seed=spec.seed).output_tok_s
    return out


def add_cost(spec: SweepSpec, result: RunResult, capacity: dict[str, float]) -> None:
    """Put the run's cost figures and TTFT-SLO attainment into ``result.metrics.extra``."""
    m = result.metrics
    window = (spec.run.warmup, spec.duration)
    m.extra["cost"] = cost_figures(
        accelerators=spec.accelerators,
        prices=spec.prices(),
        capacity_tok_s=capacity,
        replica_tokens=replica_output_tokens(result.records, window, len(spec.accelerators)),
        replica_busy_s=m.extra["replica_busy_s"],
        window_s=m.window_s,
    )
    m.extra["ttft_slo_attainment"] = ttft_attainment(result.records, window, spec.run.slo)


def estimate_saturation(
    workload: WorkloadSpec, engine: EngineConfig, *, seed: int, probe_s: float = 20.0
) -> float:
    """Requests/s one replica completes when overloaded (achieved QPS past the knee)."""
    return saturation_probe(workload, engine, seed=seed, probe_s=probe_s).achieved_qps


def saturation_probe(
    workload: WorkloadSpec, engine: EngineConfig, *, seed: int, probe_s: float = 20.0
) -> StageMetrics:
    """The metrics of one replica's first overloaded probe stage (achieved QPS past the knee).

    Offers a rate that doubles until the achieved rate stops following it (< 85% of offered),
    then reports the achieved rate of that overloaded stage. Multiply by the replica count for
    the pool (round-robin over identical replicas scales linearly well below saturation).

    The probe lasts at least ``probe_s`` and at least 8x the mean unloaded request time (prefill
    plus ``output_len`` single-sequence decode steps), so requests of long outputs or slow
    accelerators finish inside the measured second half.
    """
    rate = 4.0
    probe_s = max(probe_s, 8.0 * unloaded_request_time(workload, engine, seed=seed))
    spec = SweepSpec(
        workload=workload,
        engine=engine,
        replicas=1,
        policies=("round-robin",),
        qps=(),
        duration=probe_s,
        seed=seed,
        run=RunConfig(warmup=probe_s / 2, drain=1.0),
    )
    metrics: StageMetrics | None = None
    for _ in range(12):
        requests = generate(workload, rate=rate, duration=probe_s, seed=seed)
        metrics = run_one(spec, "round-robin", requests, rate).metrics
        if metrics.achieved_qps < 0.85 * rate:
            return metrics
        rate *= 2
    assert metrics is not None
    return metrics


def unloaded_request_time(workload: WorkloadSpec, engine: EngineConfig, *, seed: int) -> float:
    """Mean seconds a sample of the workload's requests takes alone on ``engine``."""
    costs = step_costs(engine)
    sample = generate(workload, rate=20.0, duration=5.0, seed=seed)[:100]
    if not sample:
        return 0.0
    total = 0.0
    for r in sample:
        total += costs.step_time(r.prompt_len, 1, 0)
        total += (r.output_len - 1) * costs.step_time(1, 1, r.prompt_len + r.output_len // 2)
    return total / len(sample)


def pool_saturation(
    workload: WorkloadSpec,
    engine: EngineConfig,
    accelerators: Sequence[str],
    *,
    seed: int,
    probe_s: float = 20.0,
) -> float:
    """Pool saturation QPS of a heterogeneous pool: the sum of each replica's own saturation
    (:func:`estimate_saturation` once per distinct accelerator)."""
    per: dict[str, float] = {}
    for a in accelerators:
        if a not in per:
            cfg = on_accelerator(engine, a)
            per[a] = estimate_saturation(workload, cfg, seed=seed, probe_s=probe_s)
    return sum(per[a] for a in accelerators)


def meta_for(spec: SweepSpec, **extra: Any) -> dict[str, Any]:
    return {
        "replicas": spec.replicas,
        "policies": list(spec.policies),
        "duration_s": spec.duration,
        "warmup_s": spec.run.warmup,
        "drain_s": spec.run.drain,
        "scrape_interval_s": spec.run.scrape_interval,
        "seed": spec.seed,
        "accelerators": list(spec.accelerators),
        "slo": {"ttft_s": spec.run.slo.ttft, "tpot_s": spec.run.slo.tpot},
        "workload_spec": {k: getattr(spec.workload, k) for k in spec.workload.__dataclass_fields__},
        **extra,
    }
