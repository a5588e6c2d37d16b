"""The P/D virtual-time bench: splitting removes prefill interference; short chat never splits."""

from __future__ import annotations

from kvroute_bench import pd
from kvroute_sim.config import engine_profile

ENGINE = engine_profile("h100-llama3-8b", max_model_len=16384)


def test_long_prompts_split_3_1_cut_inter_token_latency_near_saturation() -> None:
    arr = pd.workload("long", 12.0, 20.0, seed=1)
    agg = pd.run(arr, 0, 4, pd.threshold_policy(1 << 30), engine=ENGINE)
    split = pd.run(arr, 3, 1, pd.threshold_policy(2048), engine=ENGINE)
    assert agg.split_share == 0.0
    assert split.split_share == 1.0
    assert split.completed == agg.completed == len(arr)
    assert split.itl_p90 < agg.itl_p90 / 3


def test_short_chat_is_never_split_and_flex_equals_aggregated() -> None:
    arr = pd.workload("chat", 40.0, 10.0, seed=2)
    agg = pd.run(arr, 0, 4, pd.threshold_policy(1 << 30), engine=ENGINE)
    flex = pd.run(arr, 0, 4, pd.threshold_policy(2048), engine=ENGINE)
    assert flex.split_share == 0.0
    assert flex == agg


def test_split_requests_pay_the_transfer() -> None:
    arr = [(0.0, 8000, 10)]
    fast = pd.run(arr, 1, 1, pd.threshold_policy(0), engine=ENGINE, link_name="nvlink")
    slow = pd.run(arr, 1, 1, pd.threshold_policy(0), engine=ENGINE, link_name="tcp")
    # 8000 tokens x 128 KiB = 1.05 GB: ~3 ms over NVLink, ~176 ms over TCP.
    assert 0.15 < slow.ttft_p50 - fast.ttft_p50 < 0.2
