"""Pool page data: endpoint rows from a datastore snapshot, decisions only while watched."""

from __future__ import annotations

from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.observability.decisions import DecisionLog
from kvroute.observability.pool_page import pool_state


def test_state_rows_and_latencies() -> None:
    m = EndpointMetrics(
        waiting_queue_size=3,
        running_queue_size=2,
        kv_cache_usage=0.5,
        active_models=frozenset({"<b>lora</b>"}),
    )
    ep = Endpoint(
        "b", "10.0.0.2", 8000, metrics=m, load=EndpointLoad(inflight=4, inflight_tokens=99)
    )
    log = DecisionLog(clock=lambda: 100.0)
    log.add_completion("m", 200, ttft_s=0.1, elapsed_s=1.1, completion_tokens=11)
    log.add_completion("m", 200, ttft_s=None, elapsed_s=1.0, completion_tokens=None)
    state = pool_state("p", [ep, Endpoint("a", "10.0.0.1", 8000)], log, now=5.0)
    assert [e["name"] for e in state["endpoints"]] == ["a", "b"]
    b = state["endpoints"][1]
    assert (b["waiting"], b["running"], b["inflight"], b["inflight_tokens"]) == (3, 2, 4, 99)
    assert b["active_adapters"] == ["<b>lora</b>"]  # raw data; the page escapes
    assert state["endpoints"][0]["scraped_ago_s"] is None
    assert b["prefix_blocks"] is None  # no prefix plugin
    log.blocks_held = {"a": 0, "b": 12}.__getitem__
    assert pool_state("p", [ep], log)["endpoints"][0]["prefix_blocks"] == 12
    first, second = state["completions"]
    assert abs(first["tpot_s"] - 0.1) < 1e-9
    assert second["ttft_s"] is None
    assert second["tpot_s"] is None


def test_decisions_are_numbered_newest_first() -> None:
    log = DecisionLog(max_decisions=2)
    assert not log.watched
    for pick in ("a", "b", "c"):
        log.add_decision({"pick": pick})
    assert [d["pick"] for d in log.decisions] == ["c", "b"]
    assert [d["seq"] for d in log.decisions] == [3, 2]
