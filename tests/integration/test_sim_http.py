"""The simulated servers over real HTTP on loopback: openai client, SSE, errors, metrics, LoRA."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvroute_sim.cluster import SimCluster
from kvroute_sim.text import HFText, make_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    async with SimCluster(n=2, profile="tiny", base_port=0, loras=["ad-1"]) as c:
        yield c


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_openai_client_non_stream_completion_and_chat(cluster: SimCluster) -> None:
    client = openai.AsyncOpenAI(base_url=f"{cluster.urls[0]}/v1", api_key="x")
    try:
        comp = await client.completions.create(
            model=MODEL, prompt="Hello there world", max_tokens=7
        )
        assert comp.model == MODEL
        assert comp.usage is not None
        assert comp.usage.prompt_tokens == 3
        assert comp.usage.completion_tokens == 7
        assert comp.choices[0].finish_reason == "length"
        assert len(comp.choices[0].text.split()) == 7
        chat = await client.chat.completions.create(
            model="ad-1", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.model == "ad-1"  # the model the request asked for, here an adapter
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage is not None
        assert chat.usage.completion_tokens == 4
    finally:
        await client.close()


async def test_openai_client_streams_tokens_and_final_usage(cluster: SimCluster) -> None:
    client = openai.AsyncOpenAI(base_url=f"{cluster.urls[1]}/v1", api_key="x")
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count please"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        finish = None
        usage = None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        assert len("".join(pieces).split()) == 5
        assert finish == "length"
        assert usage is not None
        assert usage.completion_tokens == 5
    finally:
        await client.close()


async def test_cached_tokens_reported_for_a_repeated_prefix(cluster: SimCluster) -> None:
    prompt = " ".join(f"w{i}" for i in range(40))
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(f"{cluster.urls[0]}/v1/completions", json=body) as r:
                data = await r.json()
                assert r.headers["x-sim-server"] == "sim-0"
        assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
        m = await _metrics(s, cluster.urls[0])
    assert m["vllm:prefix_cache_hits_total"] == 32
    assert m["vllm:prefix_cache_queries_total"] == 80


@pytest.mark.parametrize(
    ("path", "body", "status", "etype"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "NotFoundError"),
        ("/v1/completions", "{not json", 400, "BadRequestError"),
        ("/v1/chat/completions", {"model": MODEL}, 400, "BadRequestError"),
        ("/v1/completions", {"model": MODEL, "prompt": "x " * 600}, 400, "BadRequestError"),
    ],
    ids=["unknown-model", "bad-json", "no-messages", "prompt-too-long"],
)
async def test_errors_use_vllms_json_shape(
    cluster: SimCluster, path: str, body: object, status: int, etype: str
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            cluster.urls[0] + path, data=data, headers={"content-type": "application/json"}
        ) as r,
    ):
        assert r.status == status
        err = (await r.json())["error"]
    assert err["type"] == etype
    assert err["code"] == status
    assert err["message"]


async def test_models_health_and_lora_lifecycle(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/health") as r:
            assert r.status == 200
        async with s.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": "ad-2", "lora_path": "/a/b"}
        ) as r:
            assert r.status == 200
        async with s.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": "ad-2", "lora_path": "/a/b"}
        ) as r:
            assert r.status == 400
        async with s.get(f"{url}/v1/models") as r:
            models = {m["id"]: m for m in (await r.json())["data"]}
        assert set(models) == {MODEL, "ad-1", "ad-2"}
        assert models["ad-2"]["parent"] == MODEL
        assert models["ad-2"]["root"] == "/a/b"
        async with s.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad-2"}) as r:
            assert r.status == 200
        async with s.post(
            f"{url}/v1/completions", json={"model": "ad-2", "prompt": "x", "max_tokens": 1}
        ) as r:
            assert r.status == 404
        async with s.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad-2"}) as r:
            assert r.status == 404


async def test_metrics_reflect_finished_work(cluster: SimCluster) -> None:
    url = cluster.urls[1]
    async with aiohttp.ClientSession() as s:
        for model in (MODEL, "ad-1"):
            async with s.post(
                f"{url}/v1/completions", json={"model": model, "prompt": "a b c", "max_tokens": 3}
            ) as r:
                assert r.status == 200
        m = await _metrics(s, url)
    assert m["vllm:num_requests_running"] == 0
    assert m["vllm:num_requests_waiting"] == 0
    assert m["vllm:generation_tokens_total"] == 6
    assert m["vllm:time_to_first_token_seconds_count"] == 2
    assert m["vllm:cache_config_info"] == 1
    assert "sim:steps_late_total" in m


async def test_configured_hf_tokenizer_counts_prompt_tokens(tmp_path: Path) -> None:
    tok_dir = make_tokenizer(tmp_path / "tok", vocab_size=600)
    prompt = "system prompt 7 w1 w2 question"
    expected = len(HFText(tok_dir).encode(prompt))
    async with (
        SimCluster(n=1, profile="tiny", tokenizer=str(tok_dir)) as c,
        aiohttp.ClientSession() as s,
        s.post(
            f"{c.urls[0]}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 4}
        ) as r,
    ):
        data = await r.json()
    assert data["usage"]["prompt_tokens"] == expected
    assert len(HFText(tok_dir).encode(data["choices"][0]["text"])) == 4


async def test_yaml_config_file_selects_sglang_metrics_and_adapters(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "profile: tiny\nmodel: my-model\nloras: [x1]\nmetrics_flavour: sglang\n"
        "engine:\n  num_gpu_blocks: 100\n"
    )
    async with SimCluster(n=2, config_file=path) as c, aiohttp.ClientSession() as s:
        assert len(set(c.urls)) == 2
        async with s.post(
            f"{c.urls[1]}/v1/completions", json={"model": "x1", "prompt": "a", "max_tokens": 2}
        ) as r:
            assert r.status == 200
            assert r.headers["x-sim-server"] == "sim-1"
        async with s.get(f"{c.urls[1]}/metrics") as r:
            text = await r.text()
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage"} <= names
    assert 'num_pages="100"' in text
    assert "vllm:" not in text
