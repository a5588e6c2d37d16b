"""kvroute's real Director + scheduler as a router in the virtual-time harness."""

from __future__ import annotations

from pathlib import Path

from kvroute.scheduling.request import Criticality
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.epp_router import EppRouter
from kvroute_bench.sim_replica import SimReplica, replica_config
from kvroute_bench.workload import BenchRequest, generate, resolve_spec

TINY = replica_config("tiny")


def _requests() -> list[BenchRequest]:
    spec = resolve_spec(
        "sharegpt",
        {"input_mean": "40", "output_mean": "10", "max_input": "200", "max_output": "30"},
    )
    return generate(spec, rate=200, duration=2.0, seed=4)


def test_default_profile_routes_everything_and_is_deterministic() -> None:
    def once() -> list[int | None]:
        res = run_stage(
            _requests(),
            [SimReplica(TINY) for _ in range(3)],
            EppRouter("kvroute", "default", seed=1),
            offered_qps=200,
            duration=2.0,
            config=RunConfig(),
        )
        assert res.metrics.shed == 0
        assert res.metrics.completed == res.metrics.arrived
        assert res.metrics.decision_us_p50 > 0
        return [r.replica for r in res.records]

    picks = once()
    assert len(set(picks)) == 3  # the load is spread over the pool
    assert picks == once()


def test_sheddable_requests_are_shed_when_the_pool_is_saturated() -> None:
    # One replica, flooded: the saturation detector (queue > 5) sheds sheddable requests with
    # 429 while critical ones are always admitted.
    reqs = [
        BenchRequest(
            f"r{i}",
            i * 0.001,
            tuple(range(1000 * i, 1000 * i + 100)),
            20,
            criticality=Criticality.SHEDDABLE if i % 2 else Criticality.CRITICAL,
        )
        for i in range(200)
    ]
    res = run_stage(
        reqs,
        [SimReplica(TINY)],
        EppRouter("kvroute", "default", seed=0),
        offered_qps=1000,
        duration=0.2,
        config=RunConfig(scrape_interval=0.01),
    )
    by = res.metrics.by_criticality
    assert by["Critical"].shed == 0
    assert by["Sheddable"].shed > 0


def test_any_endpoint_picker_config_file_can_be_benchmarked(tmp_path: Path) -> None:
    cfg = tmp_path / "epp.yaml"
    cfg.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 1}\n  - {pluginRef: max-score-picker}\n"
    )
    res = run_stage(
        _requests(),
        [SimReplica(TINY) for _ in range(2)],
        EppRouter(f"config:{cfg}", str(cfg), seed=0),
        offered_qps=200,
        duration=2.0,
        config=RunConfig(),
    )
    assert res.metrics.policy == f"config:{cfg}"
    assert res.metrics.completed == res.metrics.arrived


def test_first_tokens_empty_the_prefill_ledger_while_requests_still_decode() -> None:
    """The harness's first-token events reach the director: a request that streams no longer
    counts as prefill work on its replica, though it stays in flight until it completes."""
    router = EppRouter("kvroute", "default", seed=1)
    seen: list[tuple[int, int]] = []  # (prefill tokens, in-flight tokens) after each first token
    original = router.on_first_token

    def spy(request: BenchRequest, replica: int, now: float) -> None:
        original(request, replica, now)
        load = router.datastore.load_of(f"replica-{replica}")
        assert load is not None
        seen.append((load.prefill_tokens, load.inflight_tokens))

    router.on_first_token = spy  # type: ignore[method-assign]
    res = run_stage(
        _requests(),
        [SimReplica(TINY) for _ in range(3)],
        router,
        offered_qps=200,
        duration=2.0,
        config=RunConfig(),
    )
    assert len(seen) == res.metrics.completed > 0
    assert any(p < t for p, t in seen)  # prompts left the ledger before their requests ended
    loads = [e.load for e in router.datastore.endpoints()]
    assert all(x.prefill_tokens == 0 and x.inflight_tokens == 0 for x in loads)
