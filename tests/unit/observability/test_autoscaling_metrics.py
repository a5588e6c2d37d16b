"""kvroute_pool_* gauges: per accelerator class, from a datastore snapshot and the EPP ledger."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from prometheus_client import generate_latest

from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.framework.accelerator import ACCELERATOR_LABEL, COST_LABEL
from kvroute.observability.metrics import EppMetrics


def _ep(name: str, cls: str | None, waiting: int, kv: float, inflight_tokens: int = 0) -> Endpoint:
    labels = {} if cls is None else {ACCELERATOR_LABEL: cls}
    m = EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, running_queue_size=1)
    load = EndpointLoad(inflight=2, inflight_tokens=inflight_tokens)
    return Endpoint(name, "10.0.0.1", 8000, labels=MappingProxyType(labels), metrics=m, load=load)


def _v(m: EppMetrics, name: str, cls: str) -> float | None:
    return m.registry.get_sample_value("kvroute_pool_" + name, {"name": "p", "accelerator": cls})


def test_gauges_split_the_pool_by_accelerator_class() -> None:
    m = EppMetrics("p")
    m.refresh_pool(
        [
            _ep("h-0", "h100", 4, 0.2, 100),
            _ep("h-1", "h100", 0, 0.6, 300),
            _ep("l-0", "l4", 6, 0.9, 50),
        ]
    )
    assert _v(m, "ready_endpoints", "h100") == 2
    assert _v(m, "ready_endpoints", "l4") == 1
    assert _v(m, "average_queue_size", "h100") == 2
    assert _v(m, "average_queue_size", "l4") == 6
    assert _v(m, "average_kv_cache_utilization", "h100") == pytest.approx(0.4)
    assert _v(m, "inflight_tokens", "h100") == 400
    assert _v(m, "inflight_requests", "l4") == 2
    assert _v(m, "cost_per_hour", "h100") == pytest.approx(8.0)
    # The pool-wide upstream gauge still averages everything.
    pool_queue = m.registry.get_sample_value("inference_pool_average_queue_size", {"name": "p"})
    assert pool_queue == pytest.approx(10 / 3)


def test_a_class_that_leaves_loses_its_series() -> None:
    m = EppMetrics("p")
    m.refresh_pool([_ep("h-0", "h100", 1, 0.1), _ep("l-0", "l4", 1, 0.1)])
    m.refresh_pool([_ep("h-0", "h100", 1, 0.1)])
    assert _v(m, "ready_endpoints", "l4") is None
    assert _v(m, "ready_endpoints", "h100") == 1


def test_unknown_class_and_bad_cost_count_as_the_default_class() -> None:
    m = EppMetrics("p")
    bad = Endpoint(
        "x-0",
        "10.0.0.2",
        8000,
        labels=MappingProxyType({ACCELERATOR_LABEL: "warp-drive", COST_LABEL: "cheap"}),
    )
    m.refresh_pool([bad, _ep("h-0", None, 0, 0.0)])
    assert _v(m, "ready_endpoints", "h100") == 2
    assert _v(m, "cost_per_hour", "h100") == pytest.approx(8.0)


def test_pending_signals_are_absent_until_a_provider_is_attached() -> None:
    m = EppMetrics("p")
    m.refresh_pool([_ep("h-0", "h100", 0, 0.0)])
    text = generate_latest(m.registry).decode()
    assert "kvroute_pool_admission_queue_length" not in text
    m.autoscaling.attach_signal(
        "admission_queue_length", lambda classes: dict.fromkeys(classes, 7.0)
    )
    m.refresh_pool([_ep("h-0", "h100", 0, 0.0)])
    assert _v(m, "admission_queue_length", "h100") == 7
    with pytest.raises(ValueError, match="already has a provider"):
        m.autoscaling.attach_signal("admission_queue_length", lambda _: {})
    with pytest.raises(ValueError, match="unknown autoscaling signal"):
        m.autoscaling.attach_signal("gpu_busy", lambda _: {})


def test_flow_control_queue_signals_from_the_real_queues() -> None:
    """Length and oldest wait of the flow controller's queues, the same for every class present;
    a class that leaves the pool loses its series."""
    from kvroute.flowcontrol.item import QueueItem
    from kvroute.flowcontrol.queues import FlowQueues
    from kvroute.observability.autoscaling_metrics import flow_control_providers

    now = [100.0]
    queues = FlowQueues()
    m = EppMetrics("p")
    for signal, provider in flow_control_providers(queues, lambda: now[0]).items():
        m.autoscaling.attach_signal(signal, provider)
    pool = [_ep("h-0", "h100", 0, 0.0), _ep("l-0", "l4", 0, 0.0)]
    m.refresh_pool(pool)
    assert _v(m, "admission_queue_length", "h100") == 0
    assert _v(m, "admission_queue_oldest_wait_seconds", "l4") == 0
    for i, at in enumerate((90.0, 97.5)):
        assert queues.enqueue(QueueItem(f"r{i}", 0, "tenant", 10, enqueued_at=at)) is None
    m.refresh_pool(pool)
    assert _v(m, "admission_queue_length", "l4") == 2
    assert _v(m, "admission_queue_oldest_wait_seconds", "h100") == pytest.approx(10.0)
    m.refresh_pool(pool[:1])
    assert _v(m, "admission_queue_length", "l4") is None
    assert _v(m, "admission_queue_length", "h100") == 2
