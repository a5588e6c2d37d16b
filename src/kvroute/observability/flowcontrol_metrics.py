"""Flow-control metrics with upstream's names (llm-d-router ``pkg/epp/metrics``, §5).

``llm_d_epp_flow_control_*``, and the ``inference_extension_flow_control_*`` twins upstream
still emits for the queue duration, size and bytes:

* ``request_queue_duration_seconds{fairness_id,priority,outcome,inference_pool,model_name,
  target_model_name}`` (histogram): time from enqueue to the end of the wait, every outcome;
* ``queue_size`` / ``queue_bytes{fairness_id,priority,inference_pool}`` (gauges) per flow;
* ``requests_total{outcome,priority,inference_pool}`` (counter);
* ``capacity_utilization_requests`` / ``capacity_utilization_bytes{priority,inference_pool}``
  (gauges, 0..1 of the band's ``maxRequests`` / ``maxBytes``).

A flow that empties is reported 0 once, then its series is removed, and fairness IDs and model
names are bounded labels (:mod:`kvroute.observability.label_limit`, shared with the request
metrics), so arbitrary client values do not grow the registry without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from kvroute.flowcontrol.item import QueueItem
from kvroute.flowcontrol.queues import FlowQueues
from kvroute.observability.fast_histogram import FastHistogram
from kvroute.observability.label_limit import LabelLimit, fairness_limit

PREFIXES = ("llm_d_epp_flow_control_", "inference_extension_flow_control_")
QUEUE_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class FlowControlMetrics:
    """The :class:`~kvroute.flowcontrol.runtime.FlowObserver` that feeds Prometheus."""

    def __init__(
        self,
        registry: CollectorRegistry,
        pool: str,
        *,
        model_labels: LabelLimit | None = None,
        fairness_labels: LabelLimit | None = None,
    ) -> None:
        self.pool = pool
        self._model = model_labels or LabelLimit("model name")
        self._fairness = fairness_labels or fairness_limit()
        self._duration = [
            FastHistogram(
                f"{p}request_queue_duration_seconds",
                "Time requests spent in the flow-control queue, by outcome",
                ["fairness_id", "priority", "outcome", "inference_pool", "model_name",
                 "target_model_name"],
                buckets=QUEUE_BUCKETS,
                registry=registry,
            )
            for p in PREFIXES
        ]  # fmt: skip
        flow_labels = ["fairness_id", "priority", "inference_pool"]
        self._size = [
            Gauge(f"{p}queue_size", "Requests in the flow-control queue", flow_labels,
                  registry=registry)
            for p in PREFIXES
        ]  # fmt: skip
        self._bytes = [
            Gauge(f"{p}queue_bytes", "Bytes in the flow-control queue", flow_labels,
                  registry=registry)
            for p in PREFIXES
        ]  # fmt: skip
        self.requests = Counter(
            "llm_d_epp_flow_control_requests_total",
            "Flow-control requests by final outcome",
            ["outcome", "priority", "inference_pool"],
            registry=registry,
        )
        band = ["priority", "inference_pool"]
        self.util_requests = Gauge(
            "llm_d_epp_flow_control_capacity_utilization_requests",
            "Queued requests / band maxRequests",
            band,
            registry=registry,
        )
        self.util_bytes = Gauge(
            "llm_d_epp_flow_control_capacity_utilization_bytes",
            "Queued bytes / band maxBytes",
            band,
            registry=registry,
        )
        self.pool_saturation = Gauge(
            "llm_d_epp_flow_control_pool_saturation",
            "The saturation detector's verdict over the pool at scrape time (unclamped; 1.0 is "
            "the dispatch gate)",
            ["inference_pool", "stage"],
            registry=registry,
        )
        self._flows: dict[tuple[str, str], tuple[int, int]] = {}
        self._zeroed: set[tuple[str, str]] = set()

    def watch_saturation(self, saturation: Callable[[], float]) -> None:
        """Read the controller's saturation when Prometheus scrapes (one pool: stage ``all``)."""
        self.pool_saturation.labels(self.pool, "all").set_function(saturation)

    def finished(self, item: QueueItem, waited_s: float) -> None:
        outcome = item.outcome.label if item.outcome is not None else "RejectedOther"
        prio = str(item.priority)
        self.requests.labels(outcome, prio, self.pool).inc()
        if waited_s > 0.0 or outcome != "Dispatched":  # the fast path never queued
            model = self._model
            labels = (
                self._fairness(item.fairness_id), prio, outcome, self.pool,
                model(item.model_name), model(item.target_model_name),
            )  # fmt: skip
            for h in self._duration:
                h.labels(*labels).observe(waited_s)

    def refresh(self, queues: FlowQueues) -> None:
        pool = self.pool
        current: dict[tuple[str, str], tuple[int, int]] = {}
        fairness = self._fairness
        for prio, fid, count, size in queues.flow_stats_bytes():
            key = (fairness(fid), str(prio))  # flows past the label limit add up in "other"
            seen = current.get(key, (0, 0))
            current[key] = (seen[0] + count, seen[1] + size)
        for key in self._zeroed - current.keys():  # reported 0 last time: drop the series
            for g in (*self._size, *self._bytes):
                g.remove(key[0], key[1], pool)
        self._zeroed = set()
        for key in self._flows.keys() - current.keys():
            current_zero = (0, 0)
            self._set(key, current_zero)
            self._zeroed.add(key)
        for key, value in current.items():
            self._set(key, value)
        self._flows = current
        for prio, count, size, settings in queues.band_stats():
            self.util_requests.labels(str(prio), pool).set(count / settings.max_requests)
            self.util_bytes.labels(str(prio), pool).set(size / settings.max_bytes)

    def _set(self, key: tuple[str, str], value: tuple[int, int]) -> None:
        for g in self._size:
            g.labels(key[0], key[1], self.pool).set(value[0])
        for g in self._bytes:
            g.labels(key[0], key[1], self.pool).set(value[1])
