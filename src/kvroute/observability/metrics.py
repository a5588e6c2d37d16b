"""The EPP's own Prometheus metrics, with upstream's names (``pkg/epp/metrics/metrics.go``).

Every metric lives in a per-app :class:`~prometheus_client.CollectorRegistry` (no global
registry), so several EPPs in one process (tests, ``kvroute serve`` beside a bench) never clash.
Per-request series are updated by the director backend through the ``record_*`` methods, which
write both the older names and llm-d-router's ``llm_d_epp_*`` twins
(:mod:`kvroute.observability.llmd_metrics`); pool gauges are refreshed from the datastore by
:meth:`EppMetrics.refresh_pool` on a timer (``--refresh-prometheus-metrics-interval``). Every
exported name is documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info

from kvroute import __version__
from kvroute.datastore.endpoint import Endpoint
from kvroute.observability.autoscaling_metrics import AutoscalingMetrics
from kvroute.observability.decisions import DecisionLog
from kvroute.observability.fast_histogram import FastHistogram
from kvroute.observability.label_limit import DEFAULT_LABEL_LIMIT, LabelLimit, fairness_limit
from kvroute.observability.llmd_metrics import LlmdMetrics
from kvroute.observability.request_series import CompletedSeries, Labels, RoutedSeries
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.timing import PluginTimings

_MODEL = ("model_name", "target_model_name")

# Upstream buckets (5 ms ... 3600 s for request duration).
REQUEST_DURATION_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536,
                 131072, 262144, 524288, 1048576)  # fmt: skip
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3,
                 0.4, 0.5, 0.6, 0.8, 1, 1.5, 2, 3, 4.5, 6, 12, 18, 24, 30, 36, 48, 60, 120, 180,
                 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)  # fmt: skip
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144,
                524288, 1048576, 2097152, 4194304, 8388608, 16777216)  # fmt: skip
SCHED_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
PLUGIN_BUCKETS = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)


class EppMetrics:
    """All EPP metrics for one app, registered in ``self.registry``."""

    def __init__(
        self,
        pool_name: str,
        registry: CollectorRegistry | None = None,
        *,
        fairness_label_limit: int = DEFAULT_LABEL_LIMIT,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.pool_name = pool_name
        # Request-derived labels, bounded (label_limit.py): the body's model names and the
        # client's fairness IDs (``--fairness-id-metric-label-limit``).
        self.model_labels = LabelLimit("model name")
        self.fairness_labels = fairness_limit(fairness_label_limit)
        r = self.registry
        self.request_total = Counter(
            "inference_objective_request_total",
            "Counter of inference objective requests.",
            [*_MODEL, "priority"],
            registry=r,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors.",
            [*_MODEL, "error_code"],
            registry=r,
        )
        self.request_duration = FastHistogram(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds.",
            _MODEL,
            buckets=REQUEST_DURATION_BUCKETS,
            registry=r,
        )
        self.request_sizes = FastHistogram(
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes.",
            _MODEL,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = FastHistogram(
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes.",
            _MODEL,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = FastHistogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = FastHistogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = FastHistogram(
            "inference_objective_prompt_cached_tokens",
            "Inference objective prompt cached token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.ntpot = FastHistogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Inference objective latency divided by number of output tokens in seconds.",
            _MODEL,
            buckets=NTPOT_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            ["model_name"],
            registry=r,
        )
        self.pool_kv_cache = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool.",
            ["name"],
            registry=r,
        )
        self.pool_queue = Gauge(
            "inference_pool_average_queue_size",
            "The average number of requests pending in the model server queue.",
            ["name"],
            registry=r,
        )
        self.pool_running = Gauge(
            "inference_pool_average_running_requests",
            "The average number of running requests across the pool.",
            ["name"],
            registry=r,
        )
        self.pool_ready_pods = Gauge(
            "inference_pool_ready_pods",
            "The number of ready pods in the inference server pool.",
            ["name"],
            registry=r,
        )
        self.per_pod_queue = Gauge(
            "inference_pool_per_pod_queue_size",
            "The total number of requests pending in the model server queue for each pod.",
            ["model_server_pod", "name"],
            registry=r,
        )
        self.scheduler_e2e = FastHistogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            buckets=SCHED_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts_total",
            "Total number of scheduling attempts.",
            ["status", "target_model_name"],
            registry=r,
        )
        self.plugin_duration = FastHistogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point.",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=PLUGIN_BUCKETS,
            registry=r,
        )
        self.info = Info(
            "inference_extension",
            "General information of the current build of Inference Extension.",
            registry=r,
        )
        self.info.info({"commit": "unknown", "build_ref": f"kvroute-{__version__}"})
        self.llmd = LlmdMetrics(r)
        self.llmd.info.labels("unknown", f"kvroute-{__version__}").set(1)
        self.autoscaling = AutoscalingMetrics(r, pool_name)  # kvroute_pool_*{name, accelerator}
        # The ``namespace`` label of llm_d_epp_scheduler_attempts_total (upstream: the pod's).
        self.namespace = os.environ.get("NAMESPACE", "default")
        # Recent decisions and completions for the live pool page (observability state too).
        self.recent = DecisionLog()
        self._known_pods: set[str] = set()
        self._timings: PluginTimings | None = None
        # Per-request label children, looked up once (issue 19: ``labels()`` was about a third
        # of the EPP's own per-request Python). Request series are never removed, so a child
        # stays valid; the cache grows with the same label sets the metrics themselves hold.
        self._children: dict[tuple[object, ...], Any] = {}
        # The same for the children of one request label set (request_series.py).
        self._routed: dict[Labels, RoutedSeries] = {}
        self._completed: dict[Labels, CompletedSeries] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def attach_plugin_timings(self, timings: PluginTimings) -> None:
        """Per-plugin durations the scheduler records; drained into the histogram on refresh."""
        self._timings = timings

    def drain_plugin_timings(self) -> None:
        if self._timings is None:
            return
        for key, samples in self._timings.drain().items():
            labels = (key.extension_point, key.plugin_type, key.plugin_name)
            child = self.plugin_duration.labels(*labels)
            twin = self.llmd.plugin_duration.labels(*labels)
            for seconds in samples:
                child.observe(seconds)
                twin.observe(seconds)

    # -- per-request recording (both name sets) ------------------------------------------------

    def _labels(self, model: str, target: str, fairness_id: str, priority: int) -> Labels:
        """The request labels, bounded. The target too: a client header
        (``x-llm-d-model-name-rewrite``) can set it."""
        m = self.model_labels
        bounded = m(model)
        t = bounded if target == model else m(target)
        return bounded, t, self.fairness_labels(fairness_id), str(priority)

    def record_scheduled(self, seconds: float) -> None:
        self.scheduler_e2e.observe(seconds)
        self.llmd.scheduler_e2e.observe(seconds)

    def record_routed(
        self,
        model: str,
        target: str,
        fairness_id: str,
        priority: int,
        request_bytes: int,
        endpoint: Endpoint | None,
        processing_s: float,
    ) -> None:
        """A request was scheduled and is about to be forwarded."""
        labels = self._labels(model, target, fairness_id, priority)
        s = self._routed.get(labels)
        if s is None:
            s = self._routed[labels] = RoutedSeries(self, labels)
        s.request_total.inc()
        s.request_sizes.observe(request_bytes)
        s.total.inc()
        s.size.observe(request_bytes)
        bounded_target = labels[1]
        self._child(self.scheduler_attempts, "success", bounded_target).inc()
        x = self.llmd
        ep = ("", "", "") if endpoint is None else (endpoint.name, self.namespace, endpoint.port)
        self._child(x.scheduler_attempts, "success", bounded_target, *ep).inc()
        x.request_processing.observe(processing_s)
        # Last: record_complete() undoes these.
        s.running.inc()
        s.llmd_running.inc()

    def record_complete(
        self,
        model: str,
        target: str,
        fairness_id: str,
        priority: int,
        *,
        elapsed_s: float,
        status: int | None,
        response_bytes: int,
        usage: Usage | None,
        ttft_s: float | None,
        streaming: bool,
    ) -> None:
        """A routed request finished (or its stream ended)."""
        labels = self._labels(model, target, fairness_id, priority)
        routed = self._routed.get(labels)
        if routed is not None:
            routed.running.dec()
            routed.llmd_running.dec()
        else:  # completed without record_routed (not on the director's path)
            self._child(self.running_requests, labels[0]).dec()
            self._child(self.llmd.request_running, *labels).dec()
        if status is not None and status >= 400:
            self._child(self.request_error_total, *labels[:2], "ModelServerError").inc()
            self._child(self.llmd.request_error_total, *labels, "ModelServerError").inc()
        s = self._completed.get(labels)
        if s is None:
            s = self._completed[labels] = CompletedSeries(self, labels)
        s.duration.observe(elapsed_s)
        s.llmd_duration.observe(elapsed_s)
        s.response_sizes.observe(response_bytes)
        s.response_size.observe(response_bytes)
        if ttft_s is not None:
            s.ttft(streaming).observe(ttft_s)
        tokens = None if usage is None else usage.completion_tokens
        self.recent.add_completion(model, status, ttft_s, elapsed_s, tokens)
        if usage is None:
            return
        inp, out, cached, x_inp, x_out, x_cached = s.tokens()
        inp.observe(usage.prompt_tokens)
        out.observe(usage.completion_tokens)
        cached.observe(usage.cached_tokens)
        x_inp.observe(usage.prompt_tokens)
        x_out.observe(usage.completion_tokens)
        x_cached.observe(usage.cached_tokens)
        if usage.completion_tokens > 0:
            ntpot, x_ntpot = s.ntpot()
            ntpot.observe(elapsed_s / usage.completion_tokens)
            x_ntpot.observe(elapsed_s / usage.completion_tokens)

    def record_error(
        self,
        model: str,
        target: str,
        fairness_id: str,
        priority: int,
        code: str,
        *,
        scheduling_failure: bool,
    ) -> None:
        """A request was rejected by the EPP (``code``: the error's upstream code name)."""
        labels = self._labels(model, target, fairness_id, priority)
        self.request_error_total.labels(*labels[:2], code).inc()
        self.llmd.request_error_total.labels(*labels, code).inc()
        if scheduling_failure:
            self.scheduler_attempts.labels("failure", labels[1]).inc()
            self.llmd.scheduler_attempts.labels("failure", labels[1], "", "", "").inc()

    def refresh_pool(self, endpoints: Iterable[Endpoint], ready: int | None = None) -> None:
        """Pool gauges from one datastore snapshot (upstream ``RefreshPrometheusMetrics``).

        ``ready``: how many of them are routable (issue 20 finding 8: a dead server used to
        count as ready); all of them when not given.
        """
        eps = tuple(endpoints)
        name = self.pool_name
        pool = self.llmd.pool
        n = len(eps)
        n_ready = n if ready is None else ready
        self.pool_ready_pods.labels(name).set(n_ready)
        pool["ready_endpoints"].labels(name).set(n_ready)
        series = {
            "kv_cache_utilization": [e.metrics.kv_cache_usage for e in eps],
            "queue_size": [float(e.metrics.waiting_queue_size) for e in eps],
            "running_requests": [float(e.metrics.running_queue_size) for e in eps],
        }
        legacy = {
            "kv_cache_utilization": self.pool_kv_cache,
            "queue_size": self.pool_queue,
            "running_requests": self.pool_running,
        }
        for key, values in series.items():
            mean = statistics.fmean(values) if values else 0.0
            legacy[key].labels(name).set(mean)
            pool[f"average_{key}"].labels(name).set(mean)
            pool[f"std_dev_{key}"].labels(name).set(statistics.pstdev(values) if values else 0.0)
        current = {e.name for e in eps}
        for gone in self._known_pods - current:
            self.per_pod_queue.remove(gone, name)
            self.llmd.per_endpoint_queue.remove(name, gone)
        for e in eps:
            self.per_pod_queue.labels(e.name, name).set(e.metrics.waiting_queue_size)
            self.llmd.per_endpoint_queue.labels(name, e.name).set(e.metrics.waiting_queue_size)
        self._known_pods = current
        self.autoscaling.refresh(eps)
        self.drain_plugin_timings()
