"""``precise-prefix-cache-producer`` against the simulator's real render endpoint and real KV
events on loopback: the graph is built by ``kvroute.wiring.build_epp`` from our own config of
the shape of llm-d-router's ``epp-precise-prefix-cache-config.yaml`` (a ``vllm`` token-producer,
``endpoint-notification-source`` driving one KV-events subscription per endpoint, the producer
and ``prefix-cache-scorer``). Two ``kvroute sim`` servers publish their KV events on
``socketPort + rank`` (data-parallel-rank convention), every request the director routes is
really served by the chosen server over HTTP, and the engine's ``BlockStored`` events are what
make the director keep a shared prefix on the server that cached it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.protocol.openai import parse_request
from kvroute.scheduling.plugins.prefix.precise_producer import PrecisePrefixCacheProducer
from kvroute.wiring import build_epp
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: {modelName: base, vllm: {url: "URL", timeout: 2s}}
- type: endpoint-notification-source
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {blockSize: 64}
    kvEventsConfig: {topicFilter: "kv@", podDiscoveryConfig: {socketPort: PORT}}
    indexerConfig: {kvBlockIndexConfig: {enableMetrics: true}}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: endpoint-notification-source
    extractors: [{pluginRef: precise-prefix-cache-producer}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""

SYSTEM = "You are a careful assistant who answers questions about the weather. " * 40


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (the two servers' KV-event publishers)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):  # up to 10 s
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def _chat(question: str) -> bytes:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return json.dumps({"model": "base", "messages": messages, "max_tokens": 4}).encode()


async def test_engine_kv_events_keep_a_shared_prefix_on_the_server_that_cached_it() -> None:
    port = _free_port_pair()
    engine = {"kv_events": True, "max_model_len": 8192, "num_gpu_blocks": 2048}
    async with SimCluster(
        2, profile="tiny", model="base", kv_events_base_port=port, engine_overrides=engine
    ) as cluster:
        store = Datastore()
        for i, url in enumerate(cluster.urls):
            serving = int(url.rsplit(":", 1)[1])
            store.upsert_endpoint(f"sim-rank-{i}", "127.0.0.1", serving)
            store.update_metrics(f"sim-rank-{i}", EndpointMetrics(updated_at=1e12))
        text = CONFIG.replace("URL", cluster.urls[0]).replace("PORT", str(port))
        graph = build_epp(parse_epp_config(text, "precise.yaml"), store)
        p: Any = graph.setup.plugins["precise-prefix-cache-producer"]
        assert isinstance(p, PrecisePrefixCacheProducer)
        assert p.token_source == "token-producer"
        urls = {f"sim-rank-{i}": url for i, url in enumerate(cluster.urls)}
        async with httpx.AsyncClient(timeout=10) as http, graph.running():
            await _until(lambda: len(p.connected) == 2)  # both subscriptions reach their PUB
            await asyncio.sleep(0.3)  # the SUB's subscription reaches the PUB after connect

            async def serve(i: int, question: str) -> str:
                body = _chat(question)
                parsed = parse_request(body, "/v1/chat/completions")
                decision = await graph.director.handle_request_async(parsed, {}, f"r{i}")
                target = decision.target.name
                answer = await http.post(f"{urls[target]}/v1/chat/completions", content=body)
                assert answer.status_code == 200
                graph.director.handle_response_complete(decision, None)
                return target

            first = await serve(0, "Rain today?")
            key = f"127.0.0.1:{urls[first].rsplit(':', 1)[1]}"
            await _until(lambda: p.index.size(key) > 0)  # the engine's BlockStored events
            others = [await serve(i, q) for i, q in enumerate(("Snow?", "Wind?", "Fog?"), 1)]
            assert others == [first] * 3
            assert p.index_metrics()["kv_cache_index_lookup_hits_total"] > 0
            assert p.index.block_size(key) > 0  # the engine's block size, learned from events
        await graph.aclose()
