"""Virtual-time smoke runs of the scheduler-v2 presets and heterogeneous pools (short, cheap):
real ``kvroute_sim`` engines on the calibrated profile, every new baseline and the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute.cli import main
from kvroute_bench.baselines import GreedyOracle, RoundRobinRouter
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.sim_replica import SimReplica, replica_config, step_costs
from kvroute_bench.sweep import SweepSpec, make_router, pool_saturation, run_sweep
from kvroute_bench.workload import BenchRequest, generate, resolve_spec
from kvroute_sim.accelerators import on_accelerator, parse_pool

H100 = replica_config("h100-llama3-8b")
POLICIES = ("round-robin", "sglang-cache-aware", "llm-d-token-aware", "oracle")


@pytest.mark.parametrize(
    "preset",
    [
        "heterogeneous",
        "heterogeneous-datacenter",
        "sharegpt-heavy",
        "agent-sessions",
        "code-generation",
        "reasoning",
    ],
)
def test_new_preset_runs_every_new_baseline_to_completion(preset: str) -> None:
    workload = resolve_spec(preset)
    accs = tuple(parse_pool(workload.pool, 3)) if workload.pool else ()
    spec = SweepSpec(
        workload=workload,
        engine=H100,
        replicas=3,
        policies=POLICIES,
        qps=(6.0,),
        duration=2.0,
        seed=1,
        run=RunConfig(drain=120.0),
        accelerators=accs,
    )
    (stage,) = run_sweep(spec)
    n = len(generate(workload, rate=6.0, duration=2.0, seed=1))
    assert n > 5
    for policy in POLICIES:
        m = stage.by_policy[policy]
        assert m.completed + m.failed == n, policy
        assert m.failed == 0, policy
    # The same seed gives the same run: the presets and baselines are deterministic.
    again = run_sweep(spec)[0]
    for policy in POLICIES:
        assert again.by_policy[policy].ttft_p90 == stage.by_policy[policy].ttft_p90


def test_heterogeneous_pool_oracle_uses_each_replica_cost_model() -> None:
    slow, fast = on_accelerator(H100, "l4"), H100
    req = BenchRequest("a", 0.0, tuple(range(1000, 3000)), 64)
    engines = [SimReplica(slow), SimReplica(fast)]
    res = run_stage(
        [req], engines, GreedyOracle(), offered_qps=1, duration=1.0, config=RunConfig(),
        costs=step_costs(slow),
    )  # fmt: skip
    assert res.records[0].replica == 1
    # and the L4 really is slower on the same request
    rr = run_stage(
        [req], [SimReplica(slow)], RoundRobinRouter(0), offered_qps=1, duration=1.0,
        config=RunConfig(), costs=step_costs(slow),
    )  # fmt: skip
    assert rr.records[0].e2e(rr.sim_seconds) > 5 * res.records[0].e2e(res.sim_seconds)


def test_pool_saturation_sums_per_accelerator_probes() -> None:
    w = resolve_spec("sharegpt", {"input_mean": "100", "output_mean": "50"})
    fast = pool_saturation(w, H100, ["h100"], seed=0, probe_s=4.0)
    mixed = pool_saturation(w, H100, ["h100", "l4"], seed=0, probe_s=4.0)
    assert fast < mixed < 2 * fast


def test_pooled_bound_refuses_a_heterogeneous_pool() -> None:
    spec = SweepSpec(
        workload=resolve_spec("sharegpt"),
        engine=H100,
        replicas=2,
        policies=("pooled",),
        qps=(1.0,),
        duration=0.5,
        accelerators=("h100", "l4"),
    )
    with pytest.raises(ValueError, match="homogeneous"):
        run_sweep(spec)


def test_upstream_default_is_available_by_name() -> None:
    assert make_router("upstream-default", 0).name == "upstream-default"


def test_cli_preset_and_accelerators(tmp_path: Path) -> None:
    out = tmp_path / "het"
    rc = main(
        [
            "bench", "cluster", "--preset", "sharegpt",
            "--param", "input_mean=40", "--param", "output_mean=8",
            "--accelerator", "l4", "--accelerator", "h100", "--replicas", "3",
            "--qps-sweep", "5", "--duration", "1", "--drain", "20", "--seed", "2",
            "--policies", "round-robin,sglang-cache-aware,llm-d-token-aware", "--quiet",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["accelerators"] == ["l4", "h100", "l4"]
    assert "--accelerator l4 --accelerator h100" in meta["command"]


class _Recorder(RoundRobinRouter):
    def __init__(self) -> None:
        super().__init__(0)
        self.events: list[tuple[str, str, float]] = []

    def on_first_token(self, request: BenchRequest, replica: int, now: float) -> None:
        self.events.append(("first", request.request_id, now))

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        self.events.append(("done", request.request_id, now))


def test_harness_reports_first_tokens_before_completions() -> None:
    tiny = replica_config("tiny")
    reqs = [
        BenchRequest(f"r{i}", 0.01 * i, tuple(range(100 * i, 100 * i + 40)), 5) for i in range(6)
    ]
    router = _Recorder()
    res = run_stage(
        reqs, [SimReplica(tiny), SimReplica(tiny)], router, offered_qps=1, duration=1.0,
        config=RunConfig(),
    )  # fmt: skip
    firsts = {rid: t for kind, rid, t in router.events if kind == "first"}
    assert firsts == {r.request.request_id: r.first_token for r in res.records}
    for rid in firsts:
        kinds = [k for k, x, _t in router.events if x == rid]
        assert kinds == ["first", "done"]
