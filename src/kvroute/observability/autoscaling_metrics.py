"""Pool gauges for autoscalers, per accelerator class (``kvroute_pool_*``).

Upstream's pool gauges (``inference_pool_average_kv_cache_utilization``,
``inference_pool_average_queue_size``, ``inference_pool_ready_pods`` and their ``llm_d_epp_*``
twins, :mod:`kvroute.observability.metrics`) average over the whole pool. A HorizontalPodAutoscaler
scales one Deployment, and a mixed pool runs one Deployment per accelerator class, so the gauges
here carry ``{name, accelerator}``: ``name`` is the pool, ``accelerator`` the class from the
endpoint's ``kvroute.dev/accelerator`` label (:mod:`kvroute.framework.accelerator`). They add
what upstream has no name for: the EPP's own in-flight ledger (requests and estimated prompt
tokens sent and not finished; ahead of the next scrape) and the cost of the serving replicas.

Three more come from other modules through :meth:`AutoscalingMetrics.attach_signal` (a provider
called on each refresh with the classes present, returning per-class values; a signal without a
provider is not registered at all, so nothing fake is exported): flow control's queue length and
oldest wait (:func:`flow_control_providers`, attached by the app whenever flow control is on;
the queue is the pool's, so every class of the pool carries the same value: a request waiting in
the EPP waits for any of them) and the predicted-TTFT headroom (attached when the profile has a
``predicted-latency-producer``; per class of the picked endpoints, from requests that carry a
TTFT SLO header).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from kvroute.flowcontrol.queues import FlowQueues
from kvroute.framework.accelerator import endpoint_hardware
from kvroute.framework.endpoint import Endpoint

PREFIX = "kvroute_pool_"
LABELS = ("name", "accelerator")

# Signals another module provides: name -> help text. Only these may be attached.
PENDING_SIGNALS: Mapping[str, str] = {
    "admission_queue_length": "Requests held by flow control, per accelerator class's pool.",
    "admission_queue_oldest_wait_seconds": "Age of the oldest request held by flow control.",
    "predicted_ttft_headroom_seconds": (
        "Mean over recent requests of (TTFT SLO - predicted TTFT) on the picked endpoints; "
        "negative: the pool is predicted to miss its SLOs."
    ),
}

# A provider gets the accelerator classes present and returns class -> value, once per refresh;
# a class it leaves out has no sample this time (its series is removed).
SignalProvider = Callable[[Collection[str]], Mapping[str, float]]


def flow_control_providers(
    queues: FlowQueues, clock: Callable[[], float]
) -> dict[str, SignalProvider]:
    """``admission_queue_length`` and ``admission_queue_oldest_wait_seconds`` of a flow
    controller's queues (``clock`` is the controller's), the same value for every class."""

    def length(classes: Collection[str]) -> Mapping[str, float]:
        n = float(sum(count for _, count, _, _ in queues.band_stats()))
        return dict.fromkeys(classes, n)

    def oldest_wait(classes: Collection[str]) -> Mapping[str, float]:
        oldest = min((item.enqueued_at for item in queues.items()), default=None)
        wait = 0.0 if oldest is None else max(0.0, clock() - oldest)
        return dict.fromkeys(classes, wait)

    return {
        "admission_queue_length": length,
        "admission_queue_oldest_wait_seconds": oldest_wait,
    }


@dataclass(frozen=True, slots=True)
class ClassSnapshot:
    """Aggregates over one accelerator class's endpoints."""

    ready: int
    kv_cache: float
    queue: float
    running: float
    inflight: int
    inflight_tokens: int
    cost_per_hour: float


def snapshot_by_class(endpoints: Iterable[Endpoint]) -> dict[str, ClassSnapshot]:
    """Per accelerator class: counts, means of the scraped gauges, sums of the EPP ledger."""
    groups: dict[str, list[Endpoint]] = defaultdict(list)
    costs: dict[str, float] = defaultdict(float)
    for e in endpoints:
        hw = endpoint_hardware(e.labels)
        groups[hw.name].append(e)
        costs[hw.name] += hw.cost_per_hour
    out = {}
    for cls, eps in groups.items():
        out[cls] = ClassSnapshot(
            ready=len(eps),
            kv_cache=statistics.fmean(e.metrics.kv_cache_usage for e in eps),
            queue=statistics.fmean(e.metrics.waiting_queue_size for e in eps),
            running=statistics.fmean(e.metrics.running_queue_size for e in eps),
            inflight=sum(e.load.inflight for e in eps),
            inflight_tokens=sum(e.load.inflight_tokens for e in eps),
            cost_per_hour=costs[cls],
        )
    return out


class AutoscalingMetrics:
    """The ``kvroute_pool_*`` gauges of one app, refreshed from a datastore snapshot."""

    def __init__(self, registry: CollectorRegistry, pool_name: str) -> None:
        self._registry = registry
        self.pool_name = pool_name
        p, r = PREFIX, registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(p + name, doc, LABELS, registry=r)

        self.ready = gauge("ready_endpoints", "Ready endpoints of each accelerator class.")
        self.kv_cache = gauge(
            "average_kv_cache_utilization", "Mean KV-cache use (0..1) of the class's endpoints."
        )
        self.queue = gauge(
            "average_queue_size", "Mean waiting requests per model server of the class."
        )
        self.running = gauge(
            "average_running_requests", "Mean running requests per model server of the class."
        )
        self.inflight = gauge(
            "inflight_requests", "Requests the EPP sent to the class and has not seen finish."
        )
        self.inflight_tokens = gauge(
            "inflight_tokens", "Estimated prompt tokens of the class's in-flight requests."
        )
        self.cost = gauge("cost_per_hour", "Summed cost per hour of the class's ready endpoints.")
        self._all = (
            self.ready,
            self.kv_cache,
            self.queue,
            self.running,
            self.inflight,
            self.inflight_tokens,
            self.cost,
        )
        self._signals: dict[str, tuple[Gauge, SignalProvider]] = {}
        self._signal_classes: dict[str, set[str]] = {}
        self._known: set[str] = set()

    def attach_signal(self, signal: str, provider: SignalProvider) -> None:
        """Export ``kvroute_pool_<signal>{name, accelerator}`` from ``provider`` on refresh.

        ``signal`` is one of :data:`PENDING_SIGNALS` (flow control's queue, the latency
        predictor's headroom); anything else is a programming error.
        """
        if signal not in PENDING_SIGNALS:
            raise ValueError(
                f"unknown autoscaling signal {signal!r}; known: {list(PENDING_SIGNALS)}"
            )
        if signal in self._signals:
            raise ValueError(f"autoscaling signal {signal!r} already has a provider")
        g = Gauge(PREFIX + signal, PENDING_SIGNALS[signal], LABELS, registry=self._registry)
        self._signals[signal] = (g, provider)
        self._signal_classes[signal] = set()

    def refresh(self, endpoints: Iterable[Endpoint]) -> None:
        name = self.pool_name
        snaps = snapshot_by_class(endpoints)
        for gone in self._known - set(snaps):
            for g in self._all:
                g.remove(name, gone)
        for cls, s in snaps.items():
            self.ready.labels(name, cls).set(s.ready)
            self.kv_cache.labels(name, cls).set(s.kv_cache)
            self.queue.labels(name, cls).set(s.queue)
            self.running.labels(name, cls).set(s.running)
            self.inflight.labels(name, cls).set(s.inflight)
            self.inflight_tokens.labels(name, cls).set(s.inflight_tokens)
            self.cost.labels(name, cls).set(s.cost_per_hour)
        self._known = set(snaps)
        for signal, (g, provider) in self._signals.items():
            values = provider(set(snaps))
            for gone in self._signal_classes[signal] - values.keys():
                g.remove(name, gone)
            for cls, value in values.items():
                g.labels(name, cls).set(value)
            self._signal_classes[signal] = set(values)
