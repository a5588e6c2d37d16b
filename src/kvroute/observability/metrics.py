"""The EPP's own Prometheus metrics, with upstream's names (``pkg/epp/metrics/metrics.go``).

Every metric lives in a per-app :class:`~prometheus_client.CollectorRegistry` (no global
registry), so several EPPs in one process (tests, ``kvroute serve`` beside a bench) never clash.
Per-request series are updated by the director backend on completion; pool gauges are refreshed
from the datastore by :meth:`EppMetrics.refresh_pool` on a timer
(``--refresh-prometheus-metrics-interval``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from kvroute import __version__
from kvroute.datastore.endpoint import Endpoint
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

    def __init__(self, pool_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.pool_name = pool_name
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
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds.",
            _MODEL,
            buckets=REQUEST_DURATION_BUCKETS,
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes.",
            _MODEL,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes.",
            _MODEL,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            "Inference objective prompt cached token count distribution for requests.",
            _MODEL,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.ntpot = Histogram(
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
        self.scheduler_e2e = Histogram(
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
        self.plugin_duration = Histogram(
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
        self._known_pods: set[str] = set()
        self._timings: PluginTimings | None = None

    def attach_plugin_timings(self, timings: PluginTimings) -> None:
        """Per-plugin durations the scheduler records; drained into the histogram on refresh."""
        self._timings = timings

    def drain_plugin_timings(self) -> None:
        if self._timings is None:
            return
        for key, samples in self._timings.drain().items():
            child = self.plugin_duration.labels(
                key.extension_point, key.plugin_type, key.plugin_name
            )
            for seconds in samples:
                child.observe(seconds)

    def refresh_pool(self, endpoints: Iterable[Endpoint], ready: int | None = None) -> None:
        """Pool gauges from one datastore snapshot (upstream ``RefreshPrometheusMetrics``).

        ``ready``: how many of them are routable (issue 20 finding 8: a dead server used to
        count as ready); all of them when not given.
        """
        eps = tuple(endpoints)
        name = self.pool_name
        n = len(eps)
        self.pool_ready_pods.labels(name).set(n if ready is None else ready)
        if n:
            self.pool_kv_cache.labels(name).set(sum(e.metrics.kv_cache_usage for e in eps) / n)
            self.pool_queue.labels(name).set(sum(e.metrics.waiting_queue_size for e in eps) / n)
            self.pool_running.labels(name).set(sum(e.metrics.running_queue_size for e in eps) / n)
        else:
            for g in (self.pool_kv_cache, self.pool_queue, self.pool_running):
                g.labels(name).set(0)
        current = {e.name for e in eps}
        for gone in self._known_pods - current:
            self.per_pod_queue.remove(gone, name)
        for e in eps:
            self.per_pod_queue.labels(e.name, name).set(e.metrics.waiting_queue_size)
        self._known_pods = current
        self.drain_plugin_timings()
