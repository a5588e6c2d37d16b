"""The sans-IO engine: scheduling, prefix caching, preemption, LoRA slots, KV events."""

from __future__ import annotations

import pytest

from kvroute_sim.config import EngineConfig, engine_profile
from kvroute_sim.engine import FINISHED, Engine, RequestRejected, SimRequest
from kvroute_sim.kvcache import BlockRemoved, BlockStored
from kvroute_sim.tokenizer import block_hashes
from kvroute_sim.virtual import VirtualServer

# tiny: T_lin = 1 ms at 1 token .. 2 ms at 256 tokens, nothing else; no API overhead.


def _tiny(**kw: object) -> EngineConfig:
    return engine_profile("tiny", **kw)


def _ids(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def _run(engine: Engine, reqs: list[SimRequest]) -> VirtualServer:
    vs = VirtualServer(engine, record_tokens=True)
    for r in reqs:
        vs.submit(r)
    vs.run_until_idle()
    return vs


def test_single_request_timeline_follows_the_step_formula() -> None:
    engine = Engine(_tiny())
    req = SimRequest("a", prompt_token_ids=_ids(52), max_tokens=3, arrival_time=0.5)
    vs = _run(engine, [req])
    prefill = 1e-3 + (52 - 1) * (1e-3 / 255)
    decode = 1e-3
    assert req.first_token_time == pytest.approx(0.5 + prefill)
    assert vs.token_times["a"] == pytest.approx(
        [0.5 + prefill, 0.5 + prefill + decode, 0.5 + prefill + 2 * decode]
    )
    assert req.status == FINISHED
    assert req.num_output_tokens == 3
    assert engine.pool.num_used == 0  # every block back in the pool


def test_api_overhead_delays_admission() -> None:
    engine = Engine(_tiny(api_overhead_s=0.25))
    req = SimRequest("a", prompt_token_ids=_ids(10), max_tokens=1, arrival_time=1.0)
    _run(engine, [req])
    assert req.first_scheduled_time == pytest.approx(1.25)


def test_chunked_prefill_splits_a_long_prompt_over_the_token_budget() -> None:
    engine = Engine(_tiny(max_num_batched_tokens=100))
    req = SimRequest("a", prompt_token_ids=_ids(250), max_tokens=1)
    engine.add_request(req)
    sizes = []
    t = 0.0
    while engine.has_work():
        out = engine.step(t)
        sizes.append(out.num_scheduled_tokens)
        t = out.end
    assert sizes == [100, 100, 50]
    assert req.first_token_time == pytest.approx(t)


def test_without_chunking_a_prompt_over_the_remaining_budget_waits_head_of_line() -> None:
    engine = Engine(_tiny(chunked_prefill=False, max_num_batched_tokens=512))
    big = SimRequest("big", prompt_token_ids=_ids(400), max_tokens=1)
    small = SimRequest("small", prompt_token_ids=_ids(200, 5000), max_tokens=1)
    small2 = SimRequest("small2", prompt_token_ids=_ids(20, 9000), max_tokens=1)
    engine.add_request(small)
    engine.add_request(big)
    engine.add_request(small2)
    out = engine.step(0.0)
    # small fits (200); big (400) exceeds the 312 left and blocks small2 behind it.
    assert [r.request_id for r in out.first_token] == ["small"]
    assert engine.num_waiting == 2


def test_max_num_seqs_bounds_the_running_batch() -> None:
    engine = Engine(_tiny(max_num_seqs=3))
    for i in range(5):
        engine.add_request(SimRequest(f"r{i}", prompt_token_ids=_ids(8, 100 * i), max_tokens=4))
    engine.step(0.0)
    assert engine.num_running == 3
    assert engine.num_waiting == 2


def test_prefix_hit_skips_prefill_and_is_counted_in_tokens() -> None:
    engine = Engine(_tiny())
    shared = _ids(64)
    first = SimRequest("a", prompt_token_ids=[*shared, 1, 2, 3], max_tokens=1)
    _run(engine, [first])
    second = SimRequest("b", prompt_token_ids=[*shared, 7, 8], max_tokens=1, arrival_time=1.0)
    engine.add_request(second)
    out = engine.step(1.0)
    assert second.num_cached_tokens == 64
    assert out.num_scheduled_tokens == 2  # only the uncached tail is prefilled
    stats = engine.stats()
    assert stats.prefix_cache_queries == 67 + 66
    assert stats.prefix_cache_hits == 64


@pytest.mark.parametrize(
    ("prompt_len", "expected_hit"),
    [(64, 48), (65, 64), (16, 0), (33, 32)],
    ids=["exact-blocks-keeps-last-token", "one-over", "one-block", "two-blocks-plus-one"],
)
def test_hit_never_covers_the_last_prompt_token(prompt_len: int, expected_hit: int) -> None:
    engine = Engine(_tiny())
    ids = _ids(prompt_len)
    _run(engine, [SimRequest("a", prompt_token_ids=ids, max_tokens=1)])
    again = SimRequest("b", prompt_token_ids=ids, max_tokens=1, arrival_time=1.0)
    _run(engine, [again])
    assert again.num_cached_tokens == expected_hit


def test_prefix_caching_off_never_hits() -> None:
    engine = Engine(_tiny(prefix_caching=False))
    ids = _ids(64)
    _run(engine, [SimRequest("a", prompt_token_ids=ids, max_tokens=1)])
    again = SimRequest("b", prompt_token_ids=ids, max_tokens=1, arrival_time=1.0)
    _run(engine, [again])
    assert again.num_cached_tokens == 0
    assert engine.stats().prefix_cache_hits == 0


def test_lora_requests_do_not_share_base_model_blocks() -> None:
    engine = Engine(_tiny())
    ids = _ids(64)
    _run(engine, [SimRequest("a", prompt_token_ids=ids, max_tokens=1)])
    lora = SimRequest("b", prompt_token_ids=ids, max_tokens=1, lora="ad1", arrival_time=1.0)
    _run(engine, [lora])
    assert lora.num_cached_tokens == 0


def test_generated_blocks_are_cached_for_the_next_turn() -> None:
    engine = Engine(_tiny())
    prompt = _ids(20)
    answer = _ids(30, 7000)
    turn1 = SimRequest("t1", prompt_token_ids=prompt, max_tokens=30, output_token_ids=answer)
    _run(engine, [turn1])
    turn2_ids = [*prompt, *answer, 1, 2, 3, 4, 5]
    turn2 = SimRequest("t2", prompt_token_ids=turn2_ids, max_tokens=1, arrival_time=5.0)
    _run(engine, [turn2])
    # 20 + 30 = 50 tokens of history; the 49 computed ones span 3 full blocks.
    assert turn2.num_cached_tokens == 48


def test_block_hashes_in_requests_match_the_public_function() -> None:
    engine = Engine(_tiny())
    ids = _ids(40)
    hashes = block_hashes(ids, 16)
    by_hash = SimRequest("a", num_prompt_tokens=40, prompt_block_hashes=hashes, max_tokens=1)
    _run(engine, [by_hash])
    by_ids = SimRequest("b", prompt_token_ids=ids, max_tokens=1, arrival_time=1.0)
    _run(engine, [by_ids])
    assert by_ids.num_cached_tokens == 32


def test_preemption_recomputes_the_newest_request_when_blocks_run_out() -> None:
    # 8 blocks of 16 = 128 tokens; two requests each growing to 20 + 60 = 80 tokens.
    engine = Engine(_tiny(num_gpu_blocks=8, max_model_len=128, prefix_caching=False))
    old = SimRequest("old", prompt_token_ids=_ids(20), max_tokens=60)
    new = SimRequest("new", prompt_token_ids=_ids(20, 3000), max_tokens=60)
    preempted: list[str] = []
    vs = VirtualServer(
        engine, on_step=lambda o: preempted.extend(r.request_id for r in o.preempted)
    )
    vs.submit(old)
    vs.submit(new)
    vs.run_until_idle()
    assert preempted
    assert set(preempted) == {"new"}
    assert new.num_preemptions >= 1
    assert old.num_preemptions == 0
    assert old.finish_time is not None
    assert new.finish_time is not None
    assert old.finish_time < new.finish_time
    assert engine.stats().num_preemptions == len(preempted)
    assert new.num_output_tokens == 60  # recompute keeps the tokens already generated


def test_kv_usage_counts_referenced_blocks_only() -> None:
    engine = Engine(_tiny())
    engine.add_request(SimRequest("a", prompt_token_ids=_ids(40), max_tokens=10))
    engine.step(0.0)
    assert engine.kv_usage == pytest.approx(3 / 64)  # ceil(40 / 16) blocks
    vs = VirtualServer(engine)
    vs.run_until_idle()
    assert engine.kv_usage == 0.0
    # Output ids unknown: only the 2 full prompt blocks can be hashed, and they stay cached.
    assert engine.pool.num_cached == 2


def test_max_loras_limits_distinct_adapters_per_batch() -> None:
    engine = Engine(_tiny(max_loras=2))
    reqs = [
        SimRequest("a", prompt_token_ids=_ids(8), max_tokens=5, lora="l1"),
        SimRequest("b", prompt_token_ids=_ids(8, 2000), max_tokens=5, lora="l2"),
        SimRequest("c", prompt_token_ids=_ids(8, 3000), max_tokens=5, lora="l3"),
        SimRequest("d", prompt_token_ids=_ids(8, 4000), max_tokens=5, lora="l1"),
    ]
    for r in reqs:
        engine.add_request(r)
    engine.step(0.0)
    stats = engine.stats()
    assert stats.running_loras == ("l1", "l2")
    assert stats.waiting_loras == ("l3",)
    assert {r.request_id for r in reqs if r.first_scheduled_time is not None} == {"a", "b", "d"}
    VirtualServer(engine).run_until_idle()
    assert reqs[2].finish_time is not None


def test_adapter_load_cost_is_charged_once_while_resident() -> None:
    cfg = _tiny(max_loras=1, lora_cold_load_s=0.5, lora_gpu_load_s=0.1, lora_step_overhead=0.0)
    engine = Engine(cfg)
    first = SimRequest("a", prompt_token_ids=_ids(8), max_tokens=1, lora="l1")
    _run(engine, [first])
    assert first.first_token_time == pytest.approx(0.5 + 1e-3 + 7e-3 / 255)
    second = SimRequest("b", prompt_token_ids=_ids(8, 3000), max_tokens=1, lora="l1")
    second.arrival_time = 10.0
    _run(engine, [second])
    assert second.first_token_time == pytest.approx(10.0 + 1e-3 + 7e-3 / 255)
    other = SimRequest("c", prompt_token_ids=_ids(8, 4000), max_tokens=1, lora="l2")
    other.arrival_time = 20.0
    _run(engine, [other])  # l2 cold
    back = SimRequest("d", prompt_token_ids=_ids(8, 5000), max_tokens=1, lora="l1")
    back.arrival_time = 30.0
    _run(engine, [back])  # l1 evicted from the single GPU slot but still in CPU memory
    assert back.first_token_time == pytest.approx(30.0 + 0.1 + 1e-3 + 7e-3 / 255)
    assert engine.stats().num_adapter_loads == 3


def test_kv_events_report_stored_and_evicted_blocks() -> None:
    engine = Engine(_tiny(kv_events=True, num_gpu_blocks=32))
    events = []
    vs = VirtualServer(engine, on_step=lambda o: events.extend(o.kv_events))
    vs.submit(SimRequest("a", prompt_token_ids=_ids(33), max_tokens=1))
    vs.run_until_idle()
    stored = [e for e in events if isinstance(e, BlockStored)]
    assert stored
    assert stored[0].block_hashes == tuple(block_hashes(_ids(33), 16)[:2])
    assert stored[0].parent_block_hash is None
    assert stored[0].token_ids == tuple(_ids(32))
    # 2 + 3 x 10 blocks fill the 32-block pool; the fourth prompt evicts the oldest (a's).
    for i in range(4):
        vs.submit(SimRequest(f"f{i}", prompt_token_ids=_ids(160, 10_000 * (i + 1)), max_tokens=1))
        vs.run_until_idle()
    removed = [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]
    assert set(block_hashes(_ids(33), 16)[:2]) <= set(removed)


def test_abort_frees_blocks_and_forgets_the_request() -> None:
    engine = Engine(_tiny())
    engine.add_request(SimRequest("a", prompt_token_ids=_ids(40), max_tokens=50))
    engine.step(0.0)
    assert engine.kv_usage > 0
    assert engine.abort("a")
    assert not engine.abort("a")
    assert engine.kv_usage == 0.0
    assert not engine.has_work()


@pytest.mark.parametrize(
    ("prompt", "max_tokens"),
    [(500, 20), (0, 5), (10, 0)],
    ids=["longer-than-model", "empty-prompt", "zero-max-tokens"],
)
def test_impossible_requests_are_rejected(prompt: int, max_tokens: int) -> None:
    engine = Engine(_tiny())
    with pytest.raises(RequestRejected):
        engine.add_request(SimRequest("x", prompt_token_ids=_ids(prompt), max_tokens=max_tokens))


def test_duplicate_request_ids_are_rejected() -> None:
    engine = Engine(_tiny())
    engine.add_request(SimRequest("x", prompt_token_ids=_ids(4), max_tokens=1))
    with pytest.raises(RequestRejected):
        engine.add_request(SimRequest("x", prompt_token_ids=_ids(4), max_tokens=1))


def test_continuous_batching_decodes_together() -> None:
    engine = Engine(_tiny())
    a = SimRequest("a", prompt_token_ids=_ids(10), max_tokens=20)
    b = SimRequest("b", prompt_token_ids=_ids(10, 5000), max_tokens=20, arrival_time=0.005)
    vs = _run(engine, [a, b])
    # b joins a running batch: after b's first token both emit on the same step ends.
    shared = set(vs.token_times["a"]) & set(vs.token_times["b"])
    assert len(shared) >= 10
