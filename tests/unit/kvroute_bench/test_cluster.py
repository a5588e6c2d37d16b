"""The virtual-time harness with real ``kvroute_sim`` engines (the ``tiny`` profile)."""

from __future__ import annotations

import pytest

from kvroute_bench.baselines import GreedyOracle, PowerOfTwoRouter, RoundRobinRouter
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.pool import PoolView
from kvroute_bench.sim_replica import SimReplica, pooled_config, replica_config, step_costs
from kvroute_bench.sweep import SweepSpec, run_sweep
from kvroute_bench.workload import BenchRequest, generate, resolve_spec

TINY = replica_config("tiny")


def _replicas(n: int) -> list[SimReplica]:
    return [SimReplica(TINY) for _ in range(n)]


def test_single_request_timings_match_the_step_model_by_hand() -> None:
    # tiny: no API overhead, T_lin(n) = 1 ms + (n - 1) * 1 ms / 255, nothing else.
    # Step 1 at t=0 prefills 32 tokens and emits token 1; steps 2 and 3 decode one token each.
    req = BenchRequest("a", 0.0, tuple(range(100, 132)), 3)
    res = run_stage(
        [req], _replicas(1), RoundRobinRouter(0), offered_qps=1, duration=1.0, config=RunConfig()
    )
    rec = res.records[0]
    prefill = 1e-3 + 31 * 1e-3 / 255
    assert rec.first_token == pytest.approx(prefill)
    assert rec.finish == pytest.approx(prefill + 2e-3)
    assert rec.output_tokens == 3
    assert rec.tpot() == pytest.approx(1e-3)
    assert res.metrics.completed == 1


def _mixed(seed: int) -> list[BenchRequest]:
    spec = resolve_spec(
        "shared-prefix",
        {
            "num_groups": "4",
            "prompts_per_group": "3",
            "system_prompt_len": "64",
            "question_len": "16",
            "output_len": "12",
        },
    )
    return generate(spec, rate=300, duration=2.0, seed=seed)


@pytest.mark.parametrize(
    "make_router",
    [lambda: PowerOfTwoRouter(7), GreedyOracle],
    ids=["p2c", "oracle"],
)
def test_same_seed_gives_identical_results(make_router: object) -> None:
    def once() -> list[tuple[float | None, float | None, int | None]]:
        res = run_stage(
            _mixed(1),
            _replicas(3),
            make_router(),  # type: ignore[operator]
            offered_qps=300,
            duration=2.0,
            config=RunConfig(),
            costs=step_costs(TINY),
        )
        return [(r.first_token, r.finish, r.replica) for r in res.records]

    first = once()
    assert first == once()
    assert all(f is not None for _t, f, _r in first)  # everything finished


class _Recorder(RoundRobinRouter):
    """Round-robin that records what it was shown at each decision."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ages: list[float] = []
        self.inflight: list[int] = []

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        for ep in pool.endpoints:
            if ep.metrics.updated_at > 0:
                self.ages.append(now - ep.metrics.updated_at)
        self.inflight.append(sum(ep.load.inflight for ep in pool.endpoints))
        return super().pick(request, pool, now)


def test_router_sees_metrics_at_most_one_scrape_old_and_counts_inflight() -> None:
    router = _Recorder()
    engines = _replicas(2)
    res = run_stage(
        _mixed(2),
        engines,
        router,
        offered_qps=300,
        duration=2.0,
        config=RunConfig(scrape_interval=0.1),
    )
    assert router.ages
    assert max(router.ages) <= 0.1 + 1e-9
    assert max(router.ages) > 0.05  # it really is stale between scrapes
    assert max(router.inflight) > 1
    assert res.metrics.completed == len(res.records)


def test_oracle_avoids_the_loaded_replica() -> None:
    # 6 long requests land on replica 0 first (round-robin would alternate); the oracle, which
    # sees true state, then sends a short request to the idle replica 1.
    engines = _replicas(2)
    heavy = [
        BenchRequest(f"h{i}", 0.0, tuple(range(1000 * i, 1000 * i + 200)), 50) for i in range(6)
    ]
    for r in heavy:
        engines[0].add(r, 0.0)
    pool = PoolView([], engines, step_costs(TINY))
    pool.endpoints = [None, None]  # type: ignore[list-item]
    probe = BenchRequest("p", 0.0, tuple(range(9000, 9020)), 5)
    assert GreedyOracle().pick(probe, pool, 0.0) == 1


def test_pooled_bound_config_scales_capacity_and_per_token_costs() -> None:
    pooled = pooled_config(TINY, 4)
    assert pooled.num_gpu_blocks == 4 * TINY.num_gpu_blocks
    assert pooled.max_num_seqs == 4 * TINY.max_num_seqs
    assert pooled.max_num_batched_tokens == 4 * TINY.max_num_batched_tokens
    # a 4x batch on the pooled engine costs what a 1x batch costs on one replica
    one, four = step_costs(TINY), step_costs(pooled)
    assert four.step_time(4 * 200, 4 * 8, 0) == pytest.approx(one.step_time(200, 8, 0))


def test_sweep_runs_every_policy_on_the_same_requests() -> None:
    spec = SweepSpec(
        workload=resolve_spec(
            "sharegpt",
            {"input_mean": "40", "output_mean": "8", "max_input": "200", "max_output": "30"},
        ),
        engine=TINY,
        replicas=3,
        policies=("round-robin", "least-requests", "oracle", "pooled"),
        qps=(50.0, 150.0),
        duration=2.0,
        seed=3,
        run=RunConfig(warmup=0.5),
    )
    stages = run_sweep(spec)
    assert [s.offered_qps for s in stages] == [50.0, 150.0]
    for s in stages:
        assert set(s.by_policy) == set(spec.policies)
        arrived = {m.arrived for m in s.by_policy.values()}
        assert len(arrived) == 1  # identical requests for every policy
        assert all(m.completed == m.arrived for m in s.by_policy.values())
