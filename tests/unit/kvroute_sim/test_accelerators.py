"""Accelerator profiles: spec-sheet factors applied to the calibrated H100 engine."""

from __future__ import annotations

import pytest

from kvroute_sim.accelerators import ACCELERATORS, accelerator, on_accelerator, parse_pool
from kvroute_sim.config import engine_profile
from kvroute_sim.steptime import StepTimeModel

H100 = engine_profile("h100-llama3-8b")


def _step(name: str, tokens: int, seqs: int, ctx: int) -> float:
    return StepTimeModel(on_accelerator(H100, name)).duration(tokens, seqs, ctx, 0.0, 0, 0.0)


def test_h100_is_the_identity() -> None:
    assert on_accelerator(H100, "h100") == H100
    a = accelerator("H100")
    assert (a.mem_factor, a.compute_factor, a.kv_factor) == pytest.approx((1.0, 1.0, 1.0))


def test_weight_bound_steps_scale_with_bandwidth_compute_bound_with_flops() -> None:
    l4 = accelerator("l4")
    # One decode token: the linear floor scales by 3.35/0.3; t_fix and c_seq stay.
    floor = H100.linear_table[0][1]
    expected = floor * l4.mem_factor + H100.t_fix + H100.c_seq
    assert _step("l4", 1, 1, 0) == pytest.approx(expected)
    # The compute part of a 4096-token step scales by 989/121.
    top = H100.linear_table[-1][1]
    cfg = on_accelerator(H100, "l4")
    assert cfg.linear_table[-1][1] == pytest.approx(
        floor * l4.mem_factor + (top - floor) * l4.compute_factor
    )
    assert cfg.c_kv == pytest.approx(H100.c_kv * l4.mem_factor)
    assert cfg.c_att == pytest.approx(H100.c_att * l4.compute_factor)


def test_speed_and_kv_order_follows_the_spec_sheets() -> None:
    decode = {n: _step(n, 64, 64, 64_000) for n in ACCELERATORS}
    assert decode["mi300x"] < decode["h200"] < decode["h100"] < decode["a100"] < decode["l4"]
    prefill = {n: _step(n, 4096, 1, 0) for n in ACCELERATORS}
    # Same FLOPS: the H200 gains only the bandwidth-bound floor on a compute-bound step.
    assert prefill["mi300x"] < prefill["h200"] < prefill["h100"]
    assert prefill["h200"] == pytest.approx(prefill["h100"], rel=0.03)
    assert prefill["h100"] < prefill["a100"] < prefill["l4"]
    blocks = {n: on_accelerator(H100, n).num_gpu_blocks for n in ACCELERATORS}
    assert blocks["a100"] == blocks["h100"] == 27000
    assert blocks["l4"] < blocks["h100"] < blocks["h200"] < blocks["mi300x"]
    # 24 GB minus 16 GB of weights leaves about a tenth of the H100's KV cache.
    assert 2000 < blocks["l4"] < 3000


def test_pool_spec_counts_cycles_and_errors() -> None:
    assert parse_pool("h100:2,l4") == ["h100", "h100", "l4"]
    assert parse_pool(["l4", "H100"], 5) == ["l4", "h100", "l4", "h100", "l4"]
    assert parse_pool("h100:3,a100:3,l4:3", 4) == ["h100", "h100", "h100", "a100"]
    with pytest.raises(ValueError, match="unknown accelerator 'v100'"):
        parse_pool("v100")
    with pytest.raises(ValueError, match="empty"):
        parse_pool(" , ")
