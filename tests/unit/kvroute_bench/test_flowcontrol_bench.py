"""The harness's hold/release path and the flow-control bench router, on the tiny engine."""

from __future__ import annotations

from kvroute.flowcontrol.queues import BandSettings, FlowControlSettings, FlowQueues
from kvroute.scheduling.request import Criticality
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.flowcontrol import AdmissionRouter, scenario_requests
from kvroute_bench.metrics import Slo
from kvroute_bench.sim_replica import SimReplica, replica_config


def _run(policy: str) -> tuple[list, AdmissionRouter]:  # type: ignore[type-arg]
    engine = replica_config("tiny")
    requests = scenario_requests("overload", 40.0, 5.0, 0)
    router = AdmissionRouter(policy, seed=0, max_concurrency=engine.max_num_seqs)
    res = run_stage(
        requests,
        [SimReplica(engine) for _ in range(2)],
        router,
        offered_qps=0.0,
        duration=5.0,
        config=RunConfig(drain=120.0, slo=Slo()),
    )
    return res.records, router


def test_flow_control_holds_requests_and_releases_every_one() -> None:
    records, router = _run("flow-control")
    assert router.queue is not None
    assert router.queue.count == 0  # nothing left behind
    waited = [w for w in router.waits.values() if w > 0]
    assert waited  # the tiny pool was overloaded: requests really waited
    assert all(r.completed or r.shed or r.failed for r in records)
    assert max(router.waits.values()) <= 60.0 + 0.1
    # strict priority: critical requests waited least
    by = {c: [router.waits.get(r.request.request_id, 0.0) for r in records
              if r.request.criticality is c] for c in Criticality}  # fmt: skip
    mean = {c: sum(v) / len(v) for c, v in by.items() if v}
    assert mean[Criticality.CRITICAL] < mean[Criticality.STANDARD] < mean[Criticality.SHEDDABLE]


def test_legacy_sheds_sheddable_only() -> None:
    records, _ = _run("legacy")
    shed = [r for r in records if r.shed]
    assert shed
    assert all(r.request.criticality is Criticality.SHEDDABLE for r in shed)


def test_every_expired_or_displaced_request_is_answered() -> None:
    """A short TTL and a small band on the overloaded tiny pool: many requests leave the queue
    in the same instant (TTL) or are displaced; each one is answered once, none is left held."""
    engine = replica_config("tiny")
    requests = scenario_requests("noisy", 80.0, 5.0, 0)  # ~3x what the pool serves
    router = AdmissionRouter("flow-control", seed=0, max_concurrency=engine.max_num_seqs)
    router.queue = FlowQueues(
        FlowControlSettings(
            default_band=BandSettings(max_requests=30), request_ttl=0.3, no_endpoint_ttl=0.3
        )
    )
    res = run_stage(
        requests,
        [SimReplica(engine) for _ in range(2)],
        router,
        offered_qps=0.0,
        duration=5.0,
        config=RunConfig(drain=120.0, slo=Slo()),
    )
    assert router.queue.count == 0
    assert not router._held
    assert all(r.completed or r.shed or r.failed for r in res.records)
    reasons = set(router.dropped.values())
    assert {"rejected-ttl-expired", "evicted-queue-pressure"} <= reasons
    shed = {r.request.request_id for r in res.records if r.shed}
    assert shed == set(router.dropped)
    displaced = [rid for rid, why in router.dropped.items() if why == "evicted-queue-pressure"]
    assert all(rid.startswith("noisy-") for rid in displaced)  # only the flooding tenant's
