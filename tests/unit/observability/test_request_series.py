"""Per-label-set children (``request_series``): each series appears when it is first written,
as with per-call lookups, and both name sets get the same observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.request import Usage
from kvroute.observability.metrics import EppMetrics

LLMD = {"model_name": "m", "target_model_name": "t", "fairness_id": "f", "priority": "0"}
OLD = {"model_name": "m", "target_model_name": "t"}


def _complete(m: EppMetrics, usage: Usage | None, streaming: bool = False) -> None:
    m.record_complete(
        "m", "t", "f", 0, elapsed_s=0.5, status=200, response_bytes=40, usage=usage,
        ttft_s=0.05, streaming=streaming,
    )  # fmt: skip


def test_series_appear_when_first_written_and_both_sets_agree() -> None:
    r = CollectorRegistry()
    m = EppMetrics("pool", r)
    m.record_routed("m", "t", "f", 0, 1200, Endpoint(name="e", address="10.0.0.1", port=80), 1e-4)
    assert r.get_sample_value("llm_d_epp_request_running", LLMD) == 1.0
    assert r.get_sample_value("inference_objective_running_requests", {"model_name": "m"}) == 1.0
    assert r.get_sample_value("llm_d_epp_request_duration_seconds_count", LLMD) is None
    _complete(m, Usage(prompt_tokens=10, completion_tokens=0))
    assert r.get_sample_value("llm_d_epp_request_running", LLMD) == 0.0
    assert r.get_sample_value("llm_d_epp_request_duration_seconds_count", LLMD) == 1.0
    assert r.get_sample_value("inference_objective_request_duration_seconds_count", OLD) == 1.0
    assert r.get_sample_value("llm_d_epp_request_input_tokens_sum", LLMD) == 10.0
    assert r.get_sample_value("inference_objective_input_tokens_sum", OLD) == 10.0
    # no output tokens: no NTPOT series yet, in either set
    assert r.get_sample_value("llm_d_epp_request_ntpot_seconds_count", LLMD) is None
    assert (
        r.get_sample_value(
            "inference_objective_normalized_time_per_output_token_seconds_count", OLD
        )
        is None
    )
    m.record_routed("m", "t", "f", 0, 100, None, 1e-4)
    _complete(m, Usage(prompt_tokens=10, completion_tokens=5), streaming=True)
    assert r.get_sample_value("llm_d_epp_request_ntpot_seconds_sum", LLMD) == 0.1
    ttft = "llm_d_epp_request_ttft_seconds_count"
    assert r.get_sample_value(ttft, {**LLMD, "streaming": "false"}) == 1.0
    assert r.get_sample_value(ttft, {**LLMD, "streaming": "true"}) == 1.0
    assert r.get_sample_value("llm_d_epp_request_total", LLMD) == 2.0


def test_completion_without_routing_touches_only_completion_series() -> None:
    r = CollectorRegistry()
    m = EppMetrics("pool", r)
    _complete(m, None)
    assert r.get_sample_value("llm_d_epp_request_duration_seconds_count", LLMD) == 1.0
    assert r.get_sample_value("llm_d_epp_request_running", LLMD) == -1.0
    assert r.get_sample_value("llm_d_epp_request_total", LLMD) is None
    assert r.get_sample_value("inference_objective_request_sizes_count", OLD) is None
