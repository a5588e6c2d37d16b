"""llm-d-router's current ``llm_d_epp_*`` metric names (v0.9/v0.10), registered beside the
older ``inference_objective_*``/``inference_pool_*``/``inference_extension_*`` set, since upstream
emits both while dashboards migrate.

Request series carry ``{model_name, target_model_name, fairness_id, priority}``; pool gauges
carry ``name`` (the pool); the scheduler attempt counter names the picked endpoint. Every name
here is listed with its type, labels and meaning in ``docs/metrics.md`` (a test scrapes a live
EPP and compares the two).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from kvroute.observability.fast_histogram import FastHistogram

PREFIX = "llm_d_epp_"
REQUEST_LABELS = ("model_name", "target_model_name", "fairness_id", "priority")
POOL_LABELS = ("name",)
ENDPOINT_LABELS = ("endpoint_name", "namespace", "port")

# Upstream buckets.
LATENCY_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 B ... 1 GiB
RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778,
                         65536)  # fmt: skip
INPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778,
                       65536, 131072, 262144, 524288, 1048576)  # fmt: skip
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0,
                10.0, 30.0, 60.0)  # fmt: skip
FAST_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class LlmdMetrics:
    """The ``llm_d_epp_*`` collectors of one app, in the app's registry."""

    def __init__(self, r: CollectorRegistry) -> None:
        p = PREFIX
        req = REQUEST_LABELS

        def hist(
            name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = req
        ) -> FastHistogram:
            return FastHistogram(p + name, doc, labels, buckets=buckets, registry=r)

        self.request_total = Counter(
            p + "request_total", "Counter of inference objective requests.", req, registry=r
        )
        self.request_error_total = Counter(
            p + "request_error_total",
            "Counter of inference objective request errors, by error code.",
            (*req, "error_code"),
            registry=r,
        )
        self.request_duration = hist(
            "request_duration_seconds", "End-to-end request latency in seconds.", LATENCY_BUCKETS
        )
        self.request_size = hist(
            "request_size_bytes", "Request body size in bytes.", REQUEST_SIZE_BUCKETS
        )
        self.response_size = hist(
            "response_size_bytes", "Response body size in bytes.", RESPONSE_SIZE_BUCKETS
        )
        self.input_tokens = hist(
            "request_input_tokens", "Prompt tokens per request (usage).", INPUT_TOKEN_BUCKETS
        )
        self.output_tokens = hist(
            "request_output_tokens", "Completion tokens per request (usage).", OUTPUT_TOKEN_BUCKETS
        )
        self.cached_tokens = hist(
            "request_cached_tokens",
            "Prompt tokens served from the prefix cache per request (usage).",
            INPUT_TOKEN_BUCKETS,
        )
        self.ntpot = hist(
            "request_ntpot_seconds",
            "Request latency divided by the number of output tokens, in seconds.",
            NTPOT_BUCKETS,
        )
        self.ttft = hist(
            "request_ttft_seconds",
            "Time from the EPP receiving the request to the first response body chunk.",
            TTFT_BUCKETS,
            (*req, "streaming"),
        )
        self.request_running = Gauge(
            p + "request_running", "Requests in flight through the EPP.", req, registry=r
        )
        self.request_processing = FastHistogram(
            p + "request_processing_duration_seconds",
            "EPP time spent on the request path (parse, admission, scheduling, rewrite).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.scheduler_e2e = FastHistogram(
            p + "scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            p + "scheduler_attempts_total",
            "Scheduling attempts by status and picked endpoint.",
            ("status", "target_model_name", *ENDPOINT_LABELS),
            registry=r,
        )
        self.plugin_duration = FastHistogram(
            p + "plugin_duration_seconds",
            "Plugin processing latency in seconds per extension point, plugin type and name.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.info = Gauge(
            p + "info",
            "General information of the current build.",
            ("commit", "build_ref"),
            registry=r,
        )
        gauge = {
            "average_kv_cache_utilization": "Average KV-cache utilization across the pool.",
            "average_queue_size": "Average number of requests waiting in model server queues.",
            "average_running_requests": "Average number of requests running per model server.",
            "std_dev_kv_cache_utilization": "Standard deviation of KV-cache utilization.",
            "std_dev_queue_size": "Standard deviation of model server queue sizes.",
            "std_dev_running_requests": "Standard deviation of running requests per server.",
            "ready_endpoints": "Number of ready endpoints in the pool.",
        }
        self.pool = {k: Gauge(p + k, v, POOL_LABELS, registry=r) for k, v in gauge.items()}
        self.per_endpoint_queue = Gauge(
            p + "per_endpoint_queue_size",
            "Requests waiting in each model server's queue.",
            ("name", "model_server_endpoint"),
            registry=r,
        )
