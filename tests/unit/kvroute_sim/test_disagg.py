"""kvroute_sim P/D: KV bytes per token, link transfer time, and the engine skipping prefill."""

from __future__ import annotations

import pytest

from kvroute_sim import disagg
from kvroute_sim.config import engine_profile
from kvroute_sim.engine import Engine, SimRequest


def test_llama3_8b_kv_is_128_kib_per_token() -> None:
    assert disagg.KVShape().bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131072


def test_link_presets_order_and_formula() -> None:
    one_gib = 1 << 30
    t = {name: disagg.link(name).transfer_seconds(one_gib) for name in ("nvlink", "rdma", "tcp")}
    assert t["nvlink"] < t["rdma"] < t["tcp"]
    rdma = disagg.link("rdma")
    assert t["rdma"] == pytest.approx(rdma.latency_s + one_gib / rdma.bandwidth_bps)
    with pytest.raises(ValueError, match="unknown KV link"):
        disagg.link("carrier-pigeon")


def _first_token(req: SimRequest) -> tuple[float, int]:
    engine = Engine(engine_profile("h100-llama3-8b", api_overhead_s=0.0))
    engine.add_request(req)
    now, steps = 0.0, 0
    while req.first_token_time is None:
        t = engine.next_step_time(now)
        assert t is not None
        out = engine.step(t)
        now = out.end
        steps += 1
    assert req.first_token_time is not None
    return req.first_token_time, steps


def test_remote_kv_skips_prefill_but_waits_for_the_transfer() -> None:
    local, local_steps = _first_token(SimRequest("a", num_prompt_tokens=3000, max_tokens=4))
    transfer = disagg.link("rdma").transfer_seconds(3000 * disagg.KVShape().bytes_per_token)
    remote, remote_steps = _first_token(
        SimRequest("b", num_prompt_tokens=3000, max_tokens=4, remote_kv=True, transfer_s=transfer)
    )
    assert remote_steps == 1  # one token computed, the prompt's KV pulled
    assert remote > transfer
    assert remote - transfer < 0.02 < local  # a decode-sized step after the transfer
    assert local_steps == 1
