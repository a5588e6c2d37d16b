"""EPP metrics: upstream names, pool gauges from a datastore snapshot, per-app registries."""

from __future__ import annotations

from prometheus_client import generate_latest

from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.observability.metrics import EppMetrics
from kvroute.scheduling.timing import PluginTimings


def _ep(name: str, waiting: int, kv: float, running: int = 0) -> Endpoint:
    m = EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, running_queue_size=running)
    return Endpoint(name, "10.0.0.1", 8000, metrics=m)


def _value(m: EppMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_pool_gauges_average_the_snapshot() -> None:
    m = EppMetrics("pool-a")
    m.refresh_pool([_ep("a-rank-0", 4, 0.2, 2), _ep("b-rank-0", 0, 0.6, 4)])
    pool = {"name": "pool-a"}
    assert _value(m, "inference_pool_ready_pods", pool) == 2
    assert _value(m, "inference_pool_average_queue_size", pool) == 2
    assert abs((_value(m, "inference_pool_average_kv_cache_utilization", pool) or 0) - 0.4) < 1e-9
    assert _value(m, "inference_pool_average_running_requests", pool) == 3
    labels = {"model_server_pod": "a-rank-0", "name": "pool-a"}
    assert _value(m, "inference_pool_per_pod_queue_size", labels) == 4


def test_removed_pod_series_disappears() -> None:
    m = EppMetrics("p")
    m.refresh_pool([_ep("a", 1, 0.1), _ep("b", 2, 0.1)])
    m.refresh_pool([_ep("a", 1, 0.1)])
    assert (
        _value(m, "inference_pool_per_pod_queue_size", {"model_server_pod": "b", "name": "p"})
        is None
    )
    assert _value(m, "inference_pool_ready_pods", {"name": "p"}) == 1


def test_empty_pool_reports_zero() -> None:
    m = EppMetrics("p")
    m.refresh_pool([])
    assert _value(m, "inference_pool_ready_pods", {"name": "p"}) == 0
    assert _value(m, "inference_pool_average_queue_size", {"name": "p"}) == 0


def test_two_apps_do_not_share_a_registry() -> None:
    a, b = EppMetrics("a"), EppMetrics("b")
    a.request_total.labels("m", "t", "0").inc()
    assert (
        _value(
            a,
            "inference_objective_request_total",
            {"model_name": "m", "target_model_name": "t", "priority": "0"},
        )
        == 1
    )
    assert b"inference_objective_request_total{" not in generate_latest(b.registry)


def test_plugin_timings_drain_into_histogram() -> None:
    m = EppMetrics("p")
    t = PluginTimings()
    m.attach_plugin_timings(t)
    t.series("Scorer", "queue-scorer", "queue-scorer").extend([0.0001, 0.0002])
    m.refresh_pool([])
    labels = {
        "extension_point": "Scorer",
        "plugin_type": "queue-scorer",
        "plugin_name": "queue-scorer",
    }
    assert _value(m, "inference_extension_plugin_duration_seconds_count", labels) == 2
    m.refresh_pool([])  # drained: not counted twice
    assert _value(m, "inference_extension_plugin_duration_seconds_count", labels) == 2


def test_upstream_metric_names_are_exposed() -> None:
    text = generate_latest(EppMetrics("p").registry).decode()
    for name in (
        "inference_objective_request_total",
        "inference_objective_request_error_total",
        "inference_objective_request_duration_seconds",
        "inference_objective_input_tokens",
        "inference_objective_output_tokens",
        "inference_objective_normalized_time_per_output_token_seconds",
        "inference_objective_running_requests",
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
        "inference_pool_ready_pods",
        "inference_pool_per_pod_queue_size",
        "inference_extension_scheduler_e2e_duration_seconds",
        "inference_extension_plugin_duration_seconds",
        "inference_extension_info",
    ):
        assert f"# TYPE {name} " in text, name


def test_llmd_twins_and_spread_gauges() -> None:
    m = EppMetrics("p")
    m.refresh_pool([_ep("a", 4, 0.2), _ep("b", 0, 0.6)])
    assert _value(m, "llm_d_epp_ready_endpoints", {"name": "p"}) == 2
    assert _value(m, "llm_d_epp_average_queue_size", {"name": "p"}) == 2
    assert _value(m, "llm_d_epp_std_dev_queue_size", {"name": "p"}) == 2
    kv_sd = _value(m, "llm_d_epp_std_dev_kv_cache_utilization", {"name": "p"}) or 0
    assert abs(kv_sd - 0.2) < 1e-9
    q = {"name": "p", "model_server_endpoint": "a"}
    assert _value(m, "llm_d_epp_per_endpoint_queue_size", q) == 4
    m.refresh_pool([_ep("b", 0, 0.6)])
    assert _value(m, "llm_d_epp_per_endpoint_queue_size", q) is None


def test_request_recorded_under_both_names() -> None:
    m = EppMetrics("p")
    ep = _ep("a", 0, 0.0)
    m.record_routed("m", "t", "tenant-1", 2, 100, ep, 0.001)
    labels = {"model_name": "m", "target_model_name": "t", "fairness_id": "tenant-1"}
    assert _value(m, "llm_d_epp_request_total", {**labels, "priority": "2"}) == 1
    assert _value(m, "llm_d_epp_request_running", {**labels, "priority": "2"}) == 1
    attempt = {"status": "success", "target_model_name": "t", "endpoint_name": "a",
               "namespace": m.namespace, "port": "8000"}  # fmt: skip
    assert _value(m, "llm_d_epp_scheduler_attempts_total", attempt) == 1
    m.record_complete(
        "m", "t", "tenant-1", 2, elapsed_s=0.5, status=503, response_bytes=10, usage=None,
        ttft_s=0.1, streaming=True,
    )  # fmt: skip
    assert _value(m, "llm_d_epp_request_running", {**labels, "priority": "2"}) == 0
    err = {**labels, "priority": "2", "error_code": "ModelServerError"}
    assert _value(m, "llm_d_epp_request_error_total", err) == 1
    ttft = {**labels, "priority": "2", "streaming": "true"}
    assert _value(m, "llm_d_epp_request_ttft_seconds_count", ttft) == 1
    legacy = {"model_name": "m", "target_model_name": "t", "error_code": "ModelServerError"}
    assert _value(m, "inference_objective_request_error_total", legacy) == 1
