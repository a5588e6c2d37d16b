"""The sans-IO flow-control core: strict priority, fairness, ordering, capacity, TTL."""

from __future__ import annotations

import math
import random

import pytest

from kvroute.flowcontrol.item import QueueItem, QueueOutcome
from kvroute.flowcontrol.policies import (
    EdfOrdering,
    ProgramAwareFairness,
    ProgramAwareParams,
    RoundRobinFairness,
    SloDeadlineOrdering,
    StaticUsageLimit,
    StaticUsageLimitParams,
)
from kvroute.flowcontrol.queues import BandSettings, FlowControlSettings, FlowQueues


def item(rid: str, priority: int = 0, flow: str = "default-flow", **kw: object) -> QueueItem:
    fields: dict[str, object] = {"size_bytes": 100, "enqueued_at": 0.0, **kw}
    return QueueItem(request_id=rid, priority=priority, fairness_id=flow, **fields)  # type: ignore[arg-type]


def drain_ids(q: FlowQueues, saturation: float = 0.0, now: float = 1.0) -> list[str]:
    out = []
    while (nxt := q.next_dispatch(saturation, now)) is not None:
        out.append(nxt.request_id)
    return out


def test_strict_priority_then_fcfs() -> None:
    q = FlowQueues()
    for rid, prio in [("s1", -1), ("a1", 0), ("c1", 10), ("a2", 0), ("c2", 10), ("s2", -1)]:
        assert q.enqueue(item(rid, prio)) is None
    assert drain_ids(q) == ["c1", "c2", "a1", "a2", "s1", "s2"]
    assert q.count == 0
    assert q.bytes == 0


def test_saturated_pool_blocks_head_of_line_and_lower_bands_never_overtake() -> None:
    limit = StaticUsageLimit(params=StaticUsageLimitParams(threshold=0.9))
    q = FlowQueues(FlowControlSettings(usage_limit=limit))
    q.enqueue(item("critical", 5))
    q.enqueue(item("sheddable", -1))
    assert q.next_dispatch(0.95, 1.0) is None
    assert q.blocked_band(0.95) == 5
    assert drain_ids(q, saturation=0.5) == ["critical", "sheddable"]


def test_round_robin_alternates_flows() -> None:
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(fairness=RoundRobinFairness())))
    for i in range(4):
        q.enqueue(item(f"a{i}", flow="A"))
    q.enqueue(item("b0", flow="B"))
    q.enqueue(item("b1", flow="B"))
    assert drain_ids(q) == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_program_aware_prefers_least_attained_service() -> None:
    las = ProgramAwareFairness()
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(fairness=las)))
    # A has been served a lot already; B never.
    las.on_dispatch(item("old", flow="A", prompt_tokens=10_000, output_tokens=1000), now=0.0)
    for i in range(3):
        q.enqueue(item(f"a{i}", flow="A", prompt_tokens=100))
    q.enqueue(item("b0", flow="B", prompt_tokens=100))
    assert drain_ids(q, now=1.0)[0] == "b0"
    # Decay: after many half-lives the old service is forgotten.
    assert las.attained("A", 3600.0) < 1.0


def test_program_aware_decay_survives_long_uptime_and_forgets_idle_ids() -> None:
    las = ProgramAwareFairness(
        params=ProgramAwareParams(lasHalfLifeSeconds=1.0, evictionTtlSeconds=3600.0)  # type: ignore[call-arg]
    )
    las.on_dispatch(item("a-old", flow="A", prompt_tokens=1000), now=0.0)
    assert las.attained("A", 1.0) == pytest.approx(500.0)  # one half-life
    # 500 half-lives later: the scale epoch has moved (no overflow), old service is gone.
    las.on_dispatch(item("a-new", flow="A", prompt_tokens=1), now=500.0)
    las.on_dispatch(item("b", flow="B", prompt_tokens=2), now=500.0)
    assert las.attained("A", 500.0) == pytest.approx(1.0)
    assert las.attained("B", 500.0) == pytest.approx(2.0)
    flows = [_FlowStub("B", 500.0), _FlowStub("A", 500.0)]
    assert las.select_flow(flows, EdfOrdering(), 500.0).fairness_id == "A"
    # An ID idle for longer than evictionTtlSeconds is forgotten at the next sweep.
    las.on_dispatch(item("b2", flow="B", prompt_tokens=2), now=5000.0)
    assert las.attained("A", 5000.0) == 0.0
    assert math.isfinite(las.attained("B", 5000.0))


class _FlowStub:
    def __init__(self, fairness_id: str, enqueued_at: float) -> None:
        self.fairness_id = fairness_id
        self._head = item(f"{fairness_id}-head", flow=fairness_id, enqueued_at=enqueued_at)

    def head(self) -> QueueItem:
        return self._head


def test_fast_path_dispatches_count_as_attained_service() -> None:
    """A flow served inline while nothing was queued is not favoured once contention starts."""
    las = ProgramAwareFairness()
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(fairness=las)))
    for i in range(5):
        fast = item(f"fast{i}", flow="A", prompt_tokens=1000)
        q.dispatched_inline(fast, now=0.0)
        assert fast.outcome is QueueOutcome.DISPATCHED
    assert q.count == 0
    assert las.attained("A", 0.0) == pytest.approx(5000.0)
    q.enqueue(item("a0", flow="A", prompt_tokens=100))
    q.enqueue(item("b0", flow="B", prompt_tokens=100))
    assert drain_ids(q, now=0.0) == ["b0", "a0"]


def test_slo_deadline_ordering_puts_requests_without_slo_last() -> None:
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(ordering=SloDeadlineOrdering())))
    q.enqueue(item("none"))
    q.enqueue(item("late", slo_deadline=5.0))
    q.enqueue(item("soon", slo_deadline=1.0))
    assert drain_ids(q) == ["soon", "late", "none"]


def test_edf_orders_by_ttl_deadline() -> None:
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(ordering=EdfOrdering())))
    q.enqueue(item("x", expires_at=9.0))
    q.enqueue(item("y", expires_at=3.0))
    assert drain_ids(q) == ["y", "x"]


def test_band_capacity_rejects_with_saturated_or_no_endpoints() -> None:
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(max_requests=2, max_bytes=250)))
    assert q.enqueue(item("1")) is None
    assert q.enqueue(item("2")) is None
    assert q.enqueue(item("3")) is QueueOutcome.REJECTED_CAPACITY
    assert q.enqueue(item("4"), pool_empty=True) is QueueOutcome.REJECTED_NO_ENDPOINTS
    # bytes: a 300-byte request alone exceeds the 250-byte band
    assert q.enqueue(item("big", 1, size_bytes=300)) is QueueOutcome.REJECTED_CAPACITY
    assert QueueOutcome.REJECTED_CAPACITY.http_status == 429
    assert QueueOutcome.REJECTED_CAPACITY.dropped_reason == "rejected-saturated"


def test_a_full_band_displaces_the_largest_flows_newest_not_a_quiet_arrival() -> None:
    q = FlowQueues(FlowControlSettings(default_band=BandSettings(max_requests=4)))
    for i in range(4):
        assert q.enqueue(item(f"n{i}", flow="noisy", enqueued_at=float(i))) is None
    # The noisy flow fills the band: its own next request is refused, as plain tail drop.
    assert q.enqueue(item("n4", flow="noisy")) is QueueOutcome.REJECTED_CAPACITY
    assert q.take_displaced() == []
    # A quiet tenant's request gets in by displacing the noisy flow's newest queued request.
    assert q.enqueue(item("q0", flow="quiet")) is None
    (gone,) = q.take_displaced()
    assert gone.request_id == "n3"
    assert gone.outcome is QueueOutcome.EVICTED_QUEUE_PRESSURE
    assert gone.outcome.http_status == 429
    assert gone.outcome.dropped_reason == "evicted-queue-pressure"
    assert q.count == 4
    assert q.enqueue(item("q1", flow="quiet")) is None  # noisy 3 > quiet 1 + 1
    assert [d.request_id for d in q.take_displaced()] == ["n2"]
    # Now noisy 2, quiet 2: displacing would just swap roles, so the arrival is refused.
    assert q.enqueue(item("q2", flow="quiet")) is QueueOutcome.REJECTED_CAPACITY
    assert q.take_displaced() == []
    assert sorted(drain_ids(q)) == ["n0", "n1", "q0", "q1"]
    assert q.count == 0
    assert q.bytes == 0


def test_displacement_by_bytes_frees_enough_and_keeps_order() -> None:
    band = BandSettings(max_requests=100, max_bytes=1000, fairness=RoundRobinFairness())
    q = FlowQueues(FlowControlSettings(default_band=band))
    for i in range(10):
        assert q.enqueue(item(f"n{i}", flow="noisy", size_bytes=100)) is None
    assert q.enqueue(item("big", flow="quiet", size_bytes=250)) is None
    assert [d.request_id for d in q.take_displaced()] == ["n9", "n8", "n7"]
    assert q.bytes == 950
    assert drain_ids(q)[:3] == ["n0", "big", "n1"]


def test_global_byte_cap_spans_bands() -> None:
    q = FlowQueues(FlowControlSettings(max_bytes=250))
    assert q.enqueue(item("a", 1)) is None
    assert q.enqueue(item("b", 2)) is None
    assert q.enqueue(item("c", 3)) is QueueOutcome.REJECTED_CAPACITY


def test_ttl_expiry_and_zero_ttl_means_none() -> None:
    q = FlowQueues(FlowControlSettings(request_ttl=2.0))
    q.enqueue(item("old", enqueued_at=0.0))
    q.enqueue(item("new", enqueued_at=1.5))
    assert q.next_expiry() == 2.0
    expired = q.expire(2.0)
    assert [i.request_id for i in expired] == ["old"]
    assert expired[0].outcome is QueueOutcome.EVICTED_TTL
    assert expired[0].outcome.dropped_reason == "rejected-ttl-expired"
    assert drain_ids(q) == ["new"]
    forever = FlowQueues(FlowControlSettings(request_ttl=0.0))
    forever.enqueue(item("x"))
    assert forever.next_expiry() == math.inf
    assert forever.expire(1e9) == []


def test_remove_cancelled_and_drain_on_shutdown() -> None:
    q = FlowQueues()
    a, b, c = item("a"), item("b", 3), item("c", flow="other")
    for i in (a, b, c):
        q.enqueue(i)
    assert q.remove(a, QueueOutcome.EVICTED_CONTEXT_CANCELLED)
    assert not q.remove(a, QueueOutcome.EVICTED_CONTEXT_CANCELLED)  # already gone
    drained = q.drain(QueueOutcome.EVICTED_SHUTDOWN)
    assert {i.request_id for i in drained} == {"b", "c"}
    assert all(i.outcome is QueueOutcome.EVICTED_SHUTDOWN for i in drained)
    assert QueueOutcome.EVICTED_SHUTDOWN.dropped_reason == "rejected-shutting-down"
    assert q.count == 0
    assert q.bytes == 0
    assert q.flow_stats() == []


def test_unknown_priority_and_fairness_id_are_their_own_band_and_flow() -> None:
    q = FlowQueues(FlowControlSettings(default_negative_band=BandSettings(max_requests=1)))
    assert q.enqueue(item("x", 12345, flow="never-seen-before")) is None
    assert q.enqueue(item("s1", -7)) is None
    assert q.enqueue(item("s2", -7)) is QueueOutcome.REJECTED_CAPACITY  # negative band: 1
    assert (12345, "never-seen-before", 1) in q.flow_stats()


@pytest.mark.parametrize("seed", range(20))
def test_property_random_operations_keep_counts_and_priority_order(seed: int) -> None:
    """Seeded random enqueue/dispatch/remove/expire sequences (property-style, no extra deps):
    counters always equal the live items, every item leaves exactly once, and each dispatch is
    from the highest non-empty band at that moment."""
    rng = random.Random(seed)
    fairness = rng.choice([RoundRobinFairness(), ProgramAwareFairness(), None])
    cap = rng.choice([6, 50])  # 6: full bands, displacement on most enqueues
    band = BandSettings(cap) if fairness is None else BandSettings(cap, fairness=fairness)
    q = FlowQueues(FlowControlSettings(default_band=band, request_ttl=5.0))
    live: list[QueueItem] = []
    left: list[QueueItem] = []
    now = 0.0
    for n in range(400):
        now += rng.random() * 0.1
        op = rng.random()
        if op < 0.5:
            it = item(f"r{n}", rng.choice([-1, 0, 0, 3]), f"f{rng.randrange(4)}", enqueued_at=now)
            sizes = {f: sum(1 for i in live if (i.priority, i.fairness_id) == f) for f in
                     {(i.priority, i.fairness_id) for i in live}}  # fmt: skip
            if q.enqueue(it) is None:
                live.append(it)
            for d in q.take_displaced():  # only from a strictly larger flow of the same band
                assert d.outcome is QueueOutcome.EVICTED_QUEUE_PRESSURE
                assert d.priority == it.priority
                assert (
                    sizes[(d.priority, d.fairness_id)]
                    > sizes.get((it.priority, it.fairness_id), 0) + 1
                )
                live.remove(d)
                left.append(d)
        elif op < 0.8:
            best = max((i.priority for i in live), default=None)
            got = q.next_dispatch(0.0, now)
            assert (got is None) == (best is None)
            if got is not None:
                assert got.priority == best
                live.remove(got)
                left.append(got)
        elif op < 0.9 and live:
            victim = rng.choice(live)
            assert q.remove(victim, QueueOutcome.EVICTED_CONTEXT_CANCELLED)
            live.remove(victim)
            left.append(victim)
        else:
            for gone in q.expire(now):
                live.remove(gone)
                left.append(gone)
        assert q.count == len(live)
        assert q.bytes == sum(i.size_bytes for i in live)
        assert all(i.queued for i in live)
        assert not any(i.queued for i in left)
    assert len({id(i) for i in left}) == len(left)
