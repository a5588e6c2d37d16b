"""Datastore semantics: endpoint set, cached snapshot tuple, metric swaps, in-flight counters."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _store_with(*names: str) -> Datastore:
    store = Datastore(clock=FakeClock())
    for i, name in enumerate(names):
        store.upsert_endpoint(name, f"10.0.0.{i + 1}", 8000, {"app": "vllm"})
    return store


def test_endpoints_tuple_is_cached_until_something_changes() -> None:
    store = _store_with("a", "b")
    first = store.endpoints()
    assert [e.name for e in first] == ["a", "b"]
    assert store.endpoints() is first  # O(1): same object, nothing rebuilt
    store.update_metrics("a", EndpointMetrics(waiting_queue_size=3, updated_at=1.0))
    second = store.endpoints()
    assert second is not first
    assert second[0].metrics.waiting_queue_size == 3
    assert store.endpoints() is second


@pytest.mark.parametrize(
    ("change", "expect_new_tuple"),
    [
        (lambda s: s.upsert_endpoint("c", "10.0.0.9", 8000, {}), True),
        (lambda s: s.remove_endpoint("a"), True),
        (lambda s: s.upsert_endpoint("a", "10.0.0.1", 8000, {"app": "vllm"}), False),
        (lambda s: s.upsert_endpoint("a", "10.0.0.1", 8000, {"app": "sglang"}), True),
        (lambda s: s.remove_endpoint("nope"), False),
        (lambda s: s.on_request_sent("a"), False),
        (lambda s: s.update_metrics("nope", EndpointMetrics()), False),
    ],
    ids=[
        "add",
        "remove",
        "identical-upsert",
        "labels-change",
        "remove-unknown",
        "request-sent-mutates-load-only",
        "metrics-for-unknown",
    ],
)
def test_snapshot_invalidation(
    change: Callable[[Datastore], object], expect_new_tuple: bool
) -> None:
    store = _store_with("a", "b")
    before = store.endpoints()
    change(store)
    assert (store.endpoints() is not before) is expect_new_tuple


def test_labels_change_keeps_metrics_and_load() -> None:
    store = _store_with("a")
    store.update_metrics("a", EndpointMetrics(kv_cache_usage=0.5, updated_at=5.0))
    store.on_request_sent("a", tokens=10)
    load_before = store.get("a").load  # type: ignore[union-attr]
    updated = store.upsert_endpoint("a", "10.0.0.1", 8000, {"app": "vllm", "tier": "gold"})
    assert updated.labels["tier"] == "gold"
    assert updated.metrics.kv_cache_usage == 0.5
    assert updated.load is load_before
    assert updated.load.inflight == 1


def test_node_address_change_keeps_metrics_and_load() -> None:
    store = _store_with("a")
    store.update_metrics("a", EndpointMetrics(kv_cache_usage=0.5, updated_at=5.0))
    labels = dict(store.get("a").labels)  # type: ignore[union-attr]
    updated = store.upsert_endpoint("a", "10.0.0.1", 8000, labels, node_address="192.168.0.7")
    assert updated.node_address == "192.168.0.7"
    assert updated.metrics.kv_cache_usage == 0.5
    same = store.upsert_endpoint("a", "10.0.0.1", 8000, labels, node_address="192.168.0.7")
    assert same is updated


def test_address_change_is_a_new_server_with_fresh_state() -> None:
    store = _store_with("a")
    events: list[EndpointEvent] = []
    store.subscribe(events.append)
    store.update_metrics("a", EndpointMetrics(waiting_queue_size=7, updated_at=5.0))
    store.on_request_sent("a")
    moved = store.upsert_endpoint("a", "10.0.0.77", 8000, {"app": "vllm"})
    assert [e.kind for e in events] == [EndpointEventKind.REMOVED, EndpointEventKind.ADDED]
    assert moved.metrics == EndpointMetrics()
    assert moved.load.inflight == 0
    assert store.by_hostport("10.0.0.1:8000") is None
    assert store.by_hostport("10.0.0.77:8000") is moved


def test_request_finishing_after_its_endpoint_was_replaced_leaves_new_counters_alone() -> None:
    store = _store_with("a")
    old = store.get("a")
    assert old is not None
    store.on_request_sent("a")  # counted on the old server
    moved = store.upsert_endpoint("a", "10.0.0.77", 8000, {"app": "vllm"})
    store.on_request_sent("a")  # a new request on the new server
    store.on_request_finished("a", load=old.load)  # the old one finishes late
    assert moved.load.inflight == 1
    store.on_request_finished("a", load=moved.load)
    assert moved.load.inflight == 0


def test_update_metrics_swaps_snapshot_keeps_load_object_and_resets_sent_since_scrape() -> None:
    store = _store_with("a")
    load = store.get("a").load  # type: ignore[union-attr]
    store.on_request_sent("a")
    store.on_request_sent("a")
    assert (load.inflight, load.sent_since_scrape) == (2, 2)
    new = store.update_metrics("a", EndpointMetrics(running_queue_size=4, updated_at=9.0))
    assert new is not None
    assert new.load is load
    assert (load.inflight, load.sent_since_scrape) == (2, 0)
    assert new.metrics.running_queue_size == 4
    assert store.get("a") is new


def test_update_metrics_stamps_missing_update_time_with_clock() -> None:
    clock = FakeClock(42.5)
    store = Datastore(clock=clock)
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    stamped = store.update_metrics("a", EndpointMetrics(waiting_queue_size=1))
    assert stamped is not None
    assert stamped.metrics.updated_at == 42.5
    kept = store.update_metrics("a", EndpointMetrics(updated_at=7.0))
    assert kept is not None
    assert kept.metrics.updated_at == 7.0


@pytest.mark.parametrize(
    ("ops", "inflight", "tokens", "sent"),
    [
        ([("sent", 5), ("sent", 7)], 2, 12, 2),
        ([("sent", 5), ("finished", 5)], 0, 0, 1),
        ([("finished", 3)], 0, 0, 0),
        ([("sent", 5), ("finished", 9), ("finished", 9)], 0, 0, 1),
        ([("sent", -4)], 1, 0, 1),
    ],
    ids=["two-sent", "sent-then-finished", "finish-without-send", "double-finish", "negative"],
)
def test_inflight_accounting_never_negative(
    ops: list[tuple[str, int]], inflight: int, tokens: int, sent: int
) -> None:
    store = _store_with("a")
    for op, n in ops:
        if op == "sent":
            store.on_request_sent("a", tokens=n)
        else:
            store.on_request_finished("a", tokens=n)
    load = store.load_of("a")
    assert load is not None
    assert (load.inflight, load.inflight_tokens, load.sent_since_scrape) == (inflight, tokens, sent)


def test_prefill_ledger_released_at_first_token_or_at_completion() -> None:
    store = _store_with("a")
    load = store.load_of("a")
    assert load is not None
    store.on_request_sent("a", tokens=300)  # nothing cached: all 300 to compute
    store.on_request_sent("a", tokens=500, prefill_tokens=50)  # 450 of 500 cached there
    assert (load.inflight_tokens, load.prefill_tokens) == (800, 350)
    store.on_first_token("a", 300)  # the first request streams: its prompt is done
    assert (load.inflight_tokens, load.prefill_tokens) == (800, 50)
    store.on_request_finished("a", tokens=300, prefill_tokens=0)  # already released
    assert (load.inflight, load.inflight_tokens, load.prefill_tokens) == (1, 500, 50)
    store.on_request_finished("a", tokens=500, prefill_tokens=50)  # no first token seen
    assert (load.inflight, load.inflight_tokens, load.prefill_tokens) == (0, 0, 0)
    store.on_request_sent("a", tokens=70)
    store.on_request_finished("a", tokens=70)  # default: the whole charge
    assert load.prefill_tokens == 0
    store.on_first_token("a", 999)  # late or duplicate report: floor at zero
    store.on_first_token("ghost", 5)  # unknown endpoint: no-op
    assert load.prefill_tokens == 0


def test_first_token_after_endpoint_replaced_leaves_new_ledger_alone() -> None:
    store = _store_with("a")
    old = store.get("a")
    assert old is not None
    store.on_request_sent("a", tokens=100)
    moved = store.upsert_endpoint("a", "10.0.0.77", 8000, {"app": "vllm"})
    store.on_request_sent("a", tokens=40)
    store.on_first_token("a", 100, load=old.load)
    assert moved.load.prefill_tokens == 40


def test_accounting_on_unknown_endpoint_is_a_noop() -> None:
    store = _store_with("a")
    store.on_request_sent("ghost")
    store.on_request_finished("ghost")
    assert store.load_of("ghost") is None
    assert store.load_of("a").inflight == 0  # type: ignore[union-attr]


def test_lookup_by_name_and_hostport_including_ipv6() -> None:
    store = Datastore()
    v4 = store.upsert_endpoint("v4", "10.1.2.3", 8000)
    v6 = store.upsert_endpoint("v6", "fd00::1", 8001)
    assert store.get("v4") is v4
    assert store.by_hostport("10.1.2.3:8000") is v4
    assert store.by_hostport("[fd00::1]:8001") is v6
    assert store.by_hostport("10.1.2.3:9999") is None
    assert len(store) == 2
    assert "v6" in store
    store.remove_endpoint("v6")
    assert store.by_hostport("[fd00::1]:8001") is None


def test_subscribe_reports_add_label_change_and_remove_then_unsubscribes() -> None:
    store = Datastore()
    events: list[tuple[EndpointEventKind, str, str]] = []

    def listener(event: EndpointEvent) -> None:
        # the store has already changed when a listener runs
        present = "present" if event.endpoint.name in store else "absent"
        events.append((event.kind, event.endpoint.name, present))

    unsubscribe = store.subscribe(listener)
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    store.upsert_endpoint("a", "10.0.0.1", 8000, {"x": "y"})
    store.remove_endpoint("a")
    unsubscribe()
    unsubscribe()  # idempotent
    store.upsert_endpoint("b", "10.0.0.2", 8000)
    assert events == [
        (EndpointEventKind.ADDED, "a", "present"),
        (EndpointEventKind.LABELS_CHANGED, "a", "present"),
        (EndpointEventKind.REMOVED, "a", "absent"),
    ]


def test_labels_are_read_only_copies() -> None:
    store = Datastore()
    labels = {"k": "v"}
    endpoint = store.upsert_endpoint("a", "10.0.0.1", 8000, labels)
    labels["k"] = "changed"
    assert endpoint.labels["k"] == "v"
    with pytest.raises(TypeError):
        endpoint.labels["k"] = "x"  # type: ignore[index]


def test_set_attributes_merges_removes_and_keeps_metrics_and_load() -> None:
    store = Datastore()
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    store.on_request_sent("a", 10)
    store.update_metrics("a", EndpointMetrics(waiting_queue_size=3, updated_at=1.0))
    before = store.endpoints()
    new = store.set_attributes("a", {"GPUUtilization": 0.5, "Topology": {"zone": "z1"}})
    assert new is not None
    assert dict(new.attributes) == {
        "GPUUtilization": 0.5,
        "Topology": {"zone": "z1"},
    }
    assert new.metrics.waiting_queue_size == 3
    assert new.load.inflight == 1
    assert store.endpoints() is not before  # the snapshot is rebuilt
    again = store.set_attributes("a", {"GPUUtilization": None})
    assert again is not None
    assert dict(again.attributes) == {"Topology": {"zone": "z1"}}
    assert store.set_attributes("a", {"GPUUtilization": None}) is again  # no change, same value
    assert store.set_attributes("missing", {"x": 1}) is None
    relabelled = store.upsert_endpoint("a", "10.0.0.1", 8000, {"role": "decode"})
    assert dict(relabelled.attributes) == {"Topology": {"zone": "z1"}}
    moved = store.upsert_endpoint("a", "10.0.0.2", 8000)
    assert dict(moved.attributes) == {}
