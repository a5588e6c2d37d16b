"""The /metrics text: exact vLLM/SGLang names and labels, parseable by a real parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kvroute_sim.config import engine_profile
from kvroute_sim.engine import Engine, SimRequest
from kvroute_sim.server.metrics import ServerMetrics, render
from kvroute_sim.virtual import VirtualServer


def _scrape(flavour: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    engine = Engine(engine_profile("tiny", max_loras=2))
    metrics = ServerMetrics()
    vs = VirtualServer(engine, on_step=metrics.on_step)
    ids = list(range(1000, 1040))
    vs.submit(SimRequest("a", prompt_token_ids=ids, max_tokens=5))
    vs.run_until_idle()
    vs.submit(SimRequest("b", prompt_token_ids=ids, max_tokens=5, arrival_time=1.0))
    vs.submit(SimRequest("c", prompt_token_ids=[1, 2, 3], max_tokens=50, lora="l1",
                         arrival_time=1.0))  # fmt: skip
    vs.submit(SimRequest("d", prompt_token_ids=[4, 5], max_tokens=5, lora="l2", arrival_time=1.0))
    vs.submit(SimRequest("e", prompt_token_ids=[6, 7], max_tokens=5, lora="l3", arrival_time=1.0))
    vs.advance(1.0)
    text = render(
        engine.stats(),
        metrics,
        model="m",
        flavour=flavour,  # type: ignore[arg-type]
        timestamp=1234.5,
    )
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_vllm_names_labels_and_values() -> None:
    m = _scrape("vllm")
    assert m["vllm:num_requests_running"] == [({"engine": "0", "model_name": "m"}, 3.0)]
    assert m["vllm:num_requests_waiting"][0][1] == 1.0
    assert 0.0 < m["vllm:kv_cache_usage_perc"][0][1] < 1.0
    assert "vllm:gpu_cache_usage_perc" not in m
    ((labels, value),) = m["vllm:lora_requests_info"]
    assert labels == {
        "max_lora": "2",
        "running_lora_adapters": "l1,l2",
        "waiting_lora_adapters": "l3",
    }
    assert value == 1234.5
    ((labels, value),) = m["vllm:cache_config_info"]
    assert labels["block_size"] == "16"
    assert labels["num_gpu_blocks"] == "64"
    assert m["vllm:prefix_cache_hits_total"][0][1] == 32.0
    assert m["vllm:prefix_cache_queries_total"][0][1] == 40.0 + 40.0 + 3 + 2
    assert m["vllm:num_preemptions_total"][0][1] == 0.0
    assert m["vllm:time_to_first_token_seconds_count"][0][1] == 4.0
    assert m["vllm:e2e_request_latency_seconds_count"][0][1] == 1.0
    assert m["vllm:inter_token_latency_seconds_count"][0][1] == 4.0
    assert m["vllm:request_success_total"] == [
        ({"engine": "0", "model_name": "m", "finished_reason": "length"}, 1.0)
    ]


def test_legacy_flavour_renames_the_kv_gauge() -> None:
    m = _scrape("vllm-legacy")
    assert "vllm:gpu_cache_usage_perc" in m
    assert "vllm:kv_cache_usage_perc" not in m


def test_sglang_flavour_uses_sglang_names() -> None:
    m = _scrape("sglang")
    assert m["sglang:num_running_reqs"][0][1] == 3.0
    assert m["sglang:num_queue_reqs"][0][1] == 1.0
    assert 0.0 < m["sglang:token_usage"][0][1] < 1.0
    ((labels, _),) = m["sglang:cache_config_info"]
    assert labels["page_size"] == "16"
    assert labels["num_pages"] == "64"
    assert not [k for k in m if k.startswith("vllm:")]
