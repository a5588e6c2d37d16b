"""The sidecar's sans-IO protocol: legs, transfer-parameter validation, pass-through rules."""

from __future__ import annotations

import json

import pytest

from kvroute.sidecar import core

GOOD = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_engine_id": "e1",
    "remote_block_ids": [0, 1, 2],
    "remote_host": "10.0.0.5",
    "remote_port": 5600,
}


def test_plan_only_splits_tagged_generation_posts() -> None:
    body = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
    tagged = {"X-Prefiller-Host-Port": "10.0.0.9:8000"}
    split = core.plan("POST", "/v1/completions", tagged, body)
    assert split == core.Split("10.0.0.9:8000", "/v1/completions", json.loads(body))
    assert core.plan("POST", "/v1/completions", {}, body) is None
    assert core.plan("GET", "/v1/completions", tagged, body) is None
    assert core.plan("POST", "/v1/embeddings", tagged, body) is None
    assert core.plan("POST", "/v1/completions", tagged, b"{not json") is None
    assert "x-prefiller-host-port" not in {k.lower() for k in core.forward_headers(tagged)}


def test_prefill_leg_is_one_token_non_streaming_with_remote_decode() -> None:
    leg = json.loads(
        core.prefill_body(
            {
                "model": "m",
                "messages": [],
                "stream": True,
                "stream_options": {"a": 1},
                "max_tokens": 200,
                "max_completion_tokens": 200,
            }
        )
    )
    assert leg["max_tokens"] == leg["max_completion_tokens"] == 1
    assert leg["stream"] is False
    assert "stream_options" not in leg
    assert leg["kv_transfer_params"]["do_remote_decode"] is True
    assert leg["kv_transfer_params"]["do_remote_prefill"] is False


def test_decode_leg_carries_the_params_with_remote_prefill() -> None:
    params = core.parse_transfer_params(json.dumps({"kv_transfer_params": GOOD}).encode())
    out = json.loads(core.decode_body({"model": "m", "max_tokens": 7}, params))
    assert out["max_tokens"] == 7
    assert out["kv_transfer_params"] == GOOD


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"<html>", "not JSON"),
        (b"{}", "no kv_transfer_params"),
        (json.dumps({"kv_transfer_params": {**GOOD, "remote_engine_id": 3}}), "engine_id"),
        (json.dumps({"kv_transfer_params": {**GOOD, "remote_block_ids": ["a"]}}), "block_ids"),
        (json.dumps({"kv_transfer_params": {**GOOD, "remote_host": ""}}), "remote_host"),
        (json.dumps({"kv_transfer_params": {**GOOD, "remote_port": 70000}}), "remote_port"),
    ],
)
def test_malformed_transfer_params_are_rejected(answer: bytes | str, match: str) -> None:
    raw = answer.encode() if isinstance(answer, str) else answer
    with pytest.raises(core.MalformedTransferParams, match=match):
        core.parse_transfer_params(raw)


@pytest.mark.parametrize(
    ("value", "rank"),
    [("10.0.0.7:8002", 2), ("10.0.0.7:8000", 0), ("10.0.0.7:8009", 0), ("junk", 0), ("", 0)],
)
def test_data_parallel_rank_from_the_header(value: str, rank: int) -> None:
    headers = {"X-Data-Parallel-Host-Port": value} if value else {}
    assert core.data_parallel_rank(headers, 8000, 4) == rank
    assert core.data_parallel_rank(headers, 8000, 1) == 0
