"""Prometheus text exposition with vLLM's (or SGLang's) exact metric names: pure code.

``ServerMetrics`` accumulates the latency histograms and token counters from engine steps;
``render(...)`` writes the text format from that plus an ``EngineStats`` snapshot. Written by
hand rather than with ``prometheus_client`` because ``vllm:lora_requests_info`` changes its
label set on every scrape (its value is a timestamp) and because the flavour switch renames
families; the output is checked against ``prometheus_client``'s parser in the tests.

vLLM names (v0.11, V1 engine; labels ``engine``, ``model_name``): ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` in the
``vllm-legacy`` flavour), ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total``,
``vllm:num_preemptions_total``, ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:request_success_total{finished_reason}``, ``vllm:cache_config_info{block_size,
num_gpu_blocks}``, ``vllm:lora_requests_info{max_lora,running_lora_adapters,
waiting_lora_adapters}`` and histograms ``vllm:time_to_first_token_seconds``,
``vllm:inter_token_latency_seconds``, ``vllm:e2e_request_latency_seconds``,
``vllm:request_queue_time_seconds``. SGLang flavour: ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``, ``sglang:token_usage``, ``sglang:cache_config_info{page_size,
num_pages}``, ``sglang:cache_hit_rate`` and the same histograms under ``sglang:``. Both add the
simulator's own ``sim:step_lag_seconds_max``, ``sim:step_lag_seconds_mean`` and
``sim:steps_late_total`` (falling behind real time).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from kvroute_sim.config import MetricsFlavour
from kvroute_sim.engine import EngineStats, StepOutcome

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class Histogram:
    """Cumulative-on-render bucket counts (one increment per observation)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.count += 1
        self.total += v

    def render(self, name: str, labels: str, out: list[str]) -> None:
        out.append(f"# TYPE {name} histogram")
        acc = 0
        sep = "," if labels else ""
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.count}")


class ServerMetrics:
    """Latency histograms and token counters fed from engine steps (``on_step``)."""

    def __init__(self) -> None:
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.queue = Histogram(E2E_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = 0

    def on_step(self, out: StepOutcome) -> None:
        end = out.end
        itl = self.itl
        for req in out.emitted:
            prev = req.prev_token_time
            if prev is not None:
                itl.observe(end - prev)
        self.generation_tokens += len(out.emitted)
        for req in out.first_token:
            self.ttft.observe(end - req.arrival_time)
            self.prompt_tokens += req.num_prompt_tokens
            if req.first_scheduled_time is not None:
                self.queue.observe(req.first_scheduled_time - req.arrival_time)
        for req in out.finished:
            self.e2e.observe(end - req.arrival_time)
            self.success += 1


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(
    stats: EngineStats,
    metrics: ServerMetrics,
    *,
    model: str,
    flavour: MetricsFlavour,
    timestamp: float,
    lag_max_s: float = 0.0,
    lag_mean_s: float = 0.0,
    steps_late: int = 0,
) -> str:
    """The ``/metrics`` body for one server."""
    out: list[str] = []
    if flavour == "sglang":
        lab = f'model_name="{_esc(model)}"'
        p = "sglang:"
        _gauge(out, f"{p}num_running_reqs", lab, stats.num_running)
        _gauge(out, f"{p}num_queue_reqs", lab, stats.num_waiting)
        _gauge(out, f"{p}token_usage", lab, stats.kv_usage)
        hit_rate = (
            stats.prefix_cache_hits / stats.prefix_cache_queries
            if stats.prefix_cache_queries
            else 0.0
        )
        _gauge(out, f"{p}cache_hit_rate", lab, hit_rate)
        info = f'{lab},page_size="{stats.block_size}",num_pages="{stats.num_gpu_blocks}"'
        _gauge(out, f"{p}cache_config_info", info, 1)
        _counter(out, f"{p}prompt_tokens_total", lab, metrics.prompt_tokens)
        _counter(out, f"{p}generation_tokens_total", lab, metrics.generation_tokens)
        _counter(out, f"{p}num_requests_total", lab, metrics.success)
        metrics.ttft.render(f"{p}time_to_first_token_seconds", lab, out)
        metrics.itl.render(f"{p}inter_token_latency_seconds", lab, out)
        metrics.e2e.render(f"{p}e2e_request_latency_seconds", lab, out)
    else:
        lab = f'engine="0",model_name="{_esc(model)}"'
        p = "vllm:"
        _gauge(out, f"{p}num_requests_running", lab, stats.num_running)
        _gauge(out, f"{p}num_requests_waiting", lab, stats.num_waiting)
        usage_name = "gpu_cache_usage_perc" if flavour == "vllm-legacy" else "kv_cache_usage_perc"
        _gauge(out, p + usage_name, lab, stats.kv_usage)
        lora = (
            f'max_lora="{stats.max_loras}",'
            f'running_lora_adapters="{_esc(",".join(stats.running_loras))}",'
            f'waiting_lora_adapters="{_esc(",".join(stats.waiting_loras))}"'
        )
        _gauge(out, f"{p}lora_requests_info", lora, timestamp)
        info = f'block_size="{stats.block_size}",num_gpu_blocks="{stats.num_gpu_blocks}"'
        _gauge(out, f"{p}cache_config_info", f"{lab},{info}", 1)
        _counter(out, f"{p}prefix_cache_queries_total", lab, stats.prefix_cache_queries)
        _counter(out, f"{p}prefix_cache_hits_total", lab, stats.prefix_cache_hits)
        _counter(out, f"{p}num_preemptions_total", lab, stats.num_preemptions)
        if stats.encoder_cache_queries:  # vision profiles (kvroute_sim.vision)
            _counter(out, f"{p}encoder_cache_queries_total", lab, stats.encoder_cache_queries)
            _counter(out, f"{p}encoder_cache_hits_total", lab, stats.encoder_cache_hits)
        _counter(out, f"{p}prompt_tokens_total", lab, metrics.prompt_tokens)
        _counter(out, f"{p}generation_tokens_total", lab, metrics.generation_tokens)
        _counter(
            out, f"{p}request_success_total", f'{lab},finished_reason="length"', metrics.success
        )
        metrics.ttft.render(f"{p}time_to_first_token_seconds", lab, out)
        metrics.itl.render(f"{p}inter_token_latency_seconds", lab, out)
        metrics.e2e.render(f"{p}e2e_request_latency_seconds", lab, out)
        metrics.queue.render(f"{p}request_queue_time_seconds", lab, out)
    _gauge(out, "sim:step_lag_seconds_max", "", lag_max_s)
    _gauge(out, "sim:step_lag_seconds_mean", "", lag_mean_s)
    _counter(out, "sim:steps_late_total", "", steps_late)
    out.append("")
    return "\n".join(out)


def _gauge(out: list[str], name: str, labels: str, value: float) -> None:
    out.append(f"# TYPE {name} gauge")
    out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")


def _counter(out: list[str], name: str, labels: str, value: float) -> None:
    out.append(f"# TYPE {name} counter")
    out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
