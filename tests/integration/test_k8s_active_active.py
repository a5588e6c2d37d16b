"""Active-active EPP replicas in the virtual-time harness (kvroute_bench.active_active).

Runs the real EPP scheduling stack (one Director per replica) over simulated engines; only time
is virtual. Checks the design claim behind docs/kubernetes.md: per-replica approximate prefix
indexes lose affinity when requests are spread at random over replicas, and sticky assignment
recovers it.
"""

from __future__ import annotations

import pytest

from kvroute_bench.active_active import ActiveActiveRouter, run
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.sim_replica import SimReplica, replica_config, step_costs
from kvroute_bench.workload import generate, resolve_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_random_spread_loses_prefix_affinity_and_stickiness_recovers_it() -> None:
    common = {
        "workload": "shared-prefix-sglang",
        "qps": 5.0,
        "duration": 15.0,
        "servers": 4,
        "seed": 1,
    }
    spread = dict(run(epp_replicas=[1, 4], assign="random", **common))  # type: ignore[arg-type]
    sticky = dict(run(epp_replicas=[4], assign="session", **common))  # type: ignore[arg-type]
    assert spread[4].prefix_hit_rate < spread[1].prefix_hit_rate
    assert sticky[4].prefix_hit_rate > spread[4].prefix_hit_rate
    for m in (*spread.values(), *sticky.values()):  # below saturation: nothing shed or failed
        assert (m.shed, m.failed) == (0, 0)


def test_requests_are_spread_over_replicas() -> None:
    engine = replica_config("h100-llama3-8b", {})
    requests = generate(resolve_spec("multi-turn"), rate=5.0, duration=5.0, seed=0)
    router = ActiveActiveRouter(3, seed=0)
    result = run_stage(
        requests,
        [SimReplica(engine) for _ in range(2)],
        router,
        offered_qps=5.0,
        duration=5.0,
        config=RunConfig(drain=30.0),
        costs=step_costs(engine),
    )
    assert sum(router.decisions_per_replica) == len(requests) == result.decisions
    assert all(n > 0 for n in router.decisions_per_replica)
    with pytest.raises(ValueError):
        ActiveActiveRouter(2, assign="nope")


def test_replica_sync_recovers_the_affinity_random_spread_loses() -> None:
    """Issue 17: the replicas run the real sync core; messages reach peers 1 ms / 10 ms later."""
    common = {
        "workload": "shared-prefix-sglang",
        "qps": 5.0,
        "duration": 20.0,
        "servers": 4,
        "seed": 1,
        "assign": "random",
    }
    alone = dict(run(epp_replicas=[1, 4], **common))  # type: ignore[arg-type]
    for delay in (0.001, 0.010):
        synced = dict(run(epp_replicas=[4], sync_delay=delay, **common))  # type: ignore[arg-type]
        assert synced[4].prefix_hit_rate > alone[4].prefix_hit_rate
        assert synced[4].prefix_hit_rate >= 0.95 * alone[1].prefix_hit_rate
        assert (synced[4].shed, synced[4].failed) == (0, 0)


def test_sync_messages_flow_between_every_pair() -> None:
    engine = replica_config("h100-llama3-8b", {})
    requests = generate(resolve_spec("shared-prefix-sglang"), rate=5.0, duration=5.0, seed=0)
    router = ActiveActiveRouter(3, seed=0, sync_delay=0.001)
    run_stage(
        requests,
        [SimReplica(engine) for _ in range(2)],
        router,
        offered_qps=5.0,
        duration=5.0,
        config=RunConfig(drain=30.0),
        costs=step_costs(engine),
    )
    assert router.messages > 0
    for sync in router._syncs:
        assert sync.stats.merged > 0
        assert sync.stats.dropped == {}
    with pytest.raises(ValueError):
        ActiveActiveRouter(2, sync_delay=-1.0)
