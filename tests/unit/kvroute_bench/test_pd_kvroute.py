"""kvroute's P/D scheduler driving the virtual-time P/D bench (real plugins, virtual clock)."""

from __future__ import annotations

from kvroute_bench import pd
from kvroute_bench.pd_kvroute import KvrouteRouter
from kvroute_sim.config import engine_profile

ENGINE = engine_profile("h100-llama3-8b", max_model_len=16384)


def test_auto_decider_on_short_chat_is_within_3_percent_of_aggregated() -> None:
    arr = pd.workload("chat", 40.0, 20.0, seed=3)
    agg = pd.run(arr, 0, 4, pd.threshold_policy(1 << 30), engine=ENGINE)
    kv = KvrouteRouter(["both"] * 4, "auto", seed=3)
    auto = pd.run(arr, 0, 4, pd.threshold_policy(0), engine=ENGINE, router=kv)
    assert auto.completed == agg.completed == len(arr)
    assert auto.goodput >= 0.97 * agg.goodput
    assert auto.split_share < 0.1  # exploration only


def test_auto_decider_on_uniform_long_prompts_splits_a_share_and_beats_both_fixed_modes() -> None:
    """Every prompt 8000 tokens at 12 QPS in a 2:2 pool (one length bucket): the learner splits
    while the prefill side's queue is not longer than the decode pick's, so about 70% split;
    that beats aggregated serving's goodput with a fraction of its inter-token latency, and
    the fixed threshold (everything splits, the two prefill engines fall behind). Virtual
    time: deterministic for the seed."""
    arr = pd.workload("long", 12.0, 30.0, seed=1)
    roles = ["prefill", "prefill", "decode", "decode"]
    agg = pd.run(arr, 0, 4, pd.threshold_policy(1 << 30), engine=ENGINE)
    fixed = pd.run(
        arr, 2, 2, pd.threshold_policy(0), engine=ENGINE, router=KvrouteRouter(roles, "2048")
    )
    auto = pd.run(
        arr, 2, 2, pd.threshold_policy(0), engine=ENGINE, router=KvrouteRouter(roles, "auto")
    )
    assert auto.completed == fixed.completed == agg.completed == len(arr)
    assert fixed.split_share == 1.0
    assert 0.5 < auto.split_share < 0.9
    assert auto.goodput > agg.goodput
    assert auto.goodput > 2 * fixed.goodput
    assert auto.itl_p90 < 0.2 * agg.itl_p90


def test_fixed_threshold_splits_long_prompts_to_the_prefill_engine() -> None:
    arr = [(0.0, 8000, 20), (0.5, 100, 20)]
    kv = KvrouteRouter(["prefill", "decode"], "1024")
    res = pd.run(arr, 1, 1, pd.threshold_policy(0), engine=ENGINE, router=kv)
    assert res.completed == 2
    assert res.split_share == 0.5
    assert kv.setup.scheduler.handler.decision_counts() == {
        (kv_model(), "prefill-decode"): 1,
        (kv_model(), "decode-only"): 1,
    }


def kv_model() -> str:
    from kvroute_bench.pd_kvroute import MODEL

    return MODEL


def test_stall_charge_keeps_splitting_long_prompts_at_light_load() -> None:
    """8192-token prompts at 2 QPS in a 2:2 pool: splitting is 23% cheaper for the system
    (the decode stalls it spares the other streams) though not for the request itself. With
    ``autoChargeStalls`` the learner keeps splitting (>85%) at about the always-split cost."""
    arr = pd.workload("long", 2.0, 300.0, seed=7, prompt=8192)
    roles = ["prefill", "prefill", "decode", "decode"]
    always = pd.run(
        arr, 2, 2, pd.threshold_policy(0), engine=ENGINE, router=KvrouteRouter(roles, "1")
    )
    never = pd.run(
        arr, 2, 2, pd.threshold_policy(0), engine=ENGINE, router=KvrouteRouter(roles, "0")
    )
    kv = KvrouteRouter(roles, "auto", seed=1, charge_stalls=True)
    charged = pd.run(arr, 2, 2, pd.threshold_policy(0), engine=ENGINE, router=kv)
    assert always.cost < 0.85 * never.cost
    assert charged.split_share > 0.85
    assert charged.cost < 1.03 * always.cost
    assert kv.decider.auto.prefill_rate > 0
