"""``token-producer``'s ``vllm`` backend against the simulator's real render endpoints on loopback.

The EPP graph is built by ``kvroute.wiring.build_epp`` from our own config of the shape of
llm-d-router's ``sim-epp-tokenizer-vllm-http-config.yaml`` (a ``vllm`` token producer feeding
``approx-prefix-cache-producer``); ``kvroute sim`` answers ``/v1/completions/render`` and
``/v1/chat/completions/render`` with the token ids its engine would compute. Requests go
through the director's serving entry point (``handle_request_async``), which runs the render
call in a worker thread before the scheduling cycle.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.protocol.openai import parse_request
from kvroute.scheduling.plugins.prefix.hashing import token_block_hashes, token_root_hash
from kvroute.scheduling.plugins.prefix.render import RenderTokenProducer
from kvroute.wiring import build_epp
from kvroute_sim.cluster import SimCluster
from kvroute_sim.tokenizer import render_chat, tokenize

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: {modelName: base, vllm: {url: "URL", timeout: 2s}}
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""

SYSTEM = "You are a careful assistant who answers questions about the weather. " * 40


def _graph(url: str) -> Any:
    store = Datastore()
    for i in range(3):
        store.upsert_endpoint(f"e{i}", f"10.0.0.{i + 1}", 8000)
        store.update_metrics(f"e{i}", EndpointMetrics(updated_at=1e12))
    return build_epp(parse_epp_config(CONFIG.replace("URL", url), "render.yaml"), store)


def _chat(question: str) -> bytes:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return json.dumps({"model": "base", "messages": messages, "max_tokens": 4}).encode()


async def test_rendered_engine_tokens_are_what_the_producer_hashes() -> None:
    async with SimCluster(1, profile="tiny", model="base") as cluster:
        graph = _graph(cluster.urls[0])
        tokens = graph.setup.plugins["token-producer"]
        producer = graph.setup.plugins["approx-prefix-cache-producer"]
        assert isinstance(tokens, RenderTokenProducer)
        assert producer.token_source == "token-producer"
        targets = set()
        for i, q in enumerate(("Rain today?", "Snow tomorrow?", "Wind tonight?")):
            parsed = parse_request(_chat(q), "/v1/chat/completions")
            decision = await graph.director.handle_request_async(parsed, {}, f"r{i}")
            targets.add(decision.target.name)
            graph.director.handle_response_complete(decision, None)
        assert len(targets) == 1  # the shared system prompt: one endpoint
        assert tokens.rendered == 3
        assert tokens.failures == 0
        assert cluster.servers[0].rendered == 3
        # the index holds the hashes of the engine's own token ids (level 2, 64-token blocks)
        ids = tokenize(
            render_chat(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Rain today?"}]
            )
        )
        expected = token_block_hashes(ids, block_size=64, root=token_root_hash("base"))
        assert expected
        matched = producer.index.match_longest_prefix(expected)
        assert matched.get(targets.pop()) == len(expected)
        # completions render too (a list answer)
        parsed = parse_request(
            json.dumps({"model": "base", "prompt": SYSTEM, "max_tokens": 2}).encode(),
            "/v1/completions",
        )
        decision = await graph.director.handle_request_async(parsed, {}, "c1")
        graph.director.handle_response_complete(decision, None)
        assert tokens.rendered == 4
        await graph.aclose()  # closes the plugins: the render client's keep-alive connection


async def test_render_failure_falls_back_to_the_estimate_and_is_counted() -> None:
    async with SimCluster(1, profile="tiny", model="base") as cluster:
        dead = cluster.urls[0]
    graph = _graph(dead)  # the server is gone: connection refused
    tokens = graph.setup.plugins["token-producer"]
    producer = graph.setup.plugins["approx-prefix-cache-producer"]
    parsed = parse_request(_chat("Rain today?"), "/v1/chat/completions")
    decision = await graph.director.handle_request_async(parsed, {}, "r0")
    graph.director.handle_response_complete(decision, None)  # routed all the same
    assert tokens.failures == 1
    assert tokens.rendered == 0
    assert producer.blocks_held(decision.target.name) > 0  # hashed from the text estimate
    await graph.aclose()


async def test_render_outcomes_are_a_counter_family() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kvroute.observability.render_metrics import register_render_metrics

    graph = _graph("http://127.0.0.1:9")
    tokens = graph.setup.plugins["token-producer"]
    tokens.rendered, tokens.failures = 3, 1
    registry = CollectorRegistry()
    assert register_render_metrics(registry, list(graph.setup.plugins.values()))
    text = generate_latest(registry).decode()
    assert 'kvroute_token_render_total{outcome="rendered",plugin_name="token-producer"} 3.0' in text
    assert 'kvroute_token_render_total{outcome="failed",plugin_name="token-producer"} 1.0' in text
    assert not register_render_metrics(CollectorRegistry(), [])
