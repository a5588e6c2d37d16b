"""Through real Envoy: the non-OpenAI request parsers and the new header names.

A real Envoy, kvroute's EPP (real director, scheduler with the prefix-cache scorer, scraper)
and three simulated model servers (``kvroute_sim`` serving ``/v1/messages`` and
``/v1/responses``), on loopback. The EPP's config lists its parsers explicitly
(``requestHandler.parsers``: openai, anthropic; no passthrough), as upstream allows.
Usage is checked where the EPP records it: its own ``inference_objective_*`` token metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from kvroute.app import EppApp
from kvroute.gateway.edge import EdgeOptions
from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

RESOURCES = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: proto-pool}
spec:
  selector: {matchLabels: {app: proto}}
  targetPorts: [{number: 8000}]
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: premium}
spec: {priority: 10, poolRef: {name: proto-pool}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: claude-alias}
spec:
  poolRef: {name: proto-pool}
  rules:
  - matches: [{model: {value: claude-sim}}]
    targets: [{modelRewrite: base}]
  - matches: [{model: {value: responses-sim}}]
    targets: [{modelRewrite: base}]
"""

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
- type: max-score-picker
- type: anthropic-parser
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: prefix-cache-scorer, weight: 10}
  - {pluginRef: max-score-picker}
requestHandler:
  parsers: [{pluginRef: openai-parser}, {pluginRef: anthropic-parser}]
"""

LONG = "You are a careful assistant who answers questions about the weather. " * 12


@dataclass
class Stack:
    epp: EppApp
    client: httpx.AsyncClient

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the EPP's metrics (0 when absent)."""
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{self.epp.ports.metrics}/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    cluster = SimCluster(
        3,
        profile="tiny",
        model="base",
        engine_overrides={"max_model_len": 4096, "num_gpu_blocks": 1024},
    )
    async with cluster, contextlib.AsyncExitStack() as stack_:
        tmp: Path = tmp_path_factory.mktemp("proto")
        resources = tmp / "pool.yaml"
        resources.write_text(RESOURCES)
        gw = await stack_.enter_async_context(
            Gateway(
                cluster.urls,
                resources=[resources],
                config_text=CONFIG,
                log_dir=tmp,
                # header aliases and parser selection are under test: the operator trusts the
                # client's routing headers and exposes the extra paths to the EPP
                edge=EdgeOptions(
                    trust_client_routing_headers=True,
                    extra_path_prefixes=("/v1/rerank", "/v1/messages/count_tokens"),
                ),
            )
        )
        client = await stack_.enter_async_context(httpx.AsyncClient(base_url=gw.url, timeout=60))
        for _ in range(100):
            if all(e.metrics.updated_at > 0 for e in gw.epp.datastore.endpoints()):
                break
            await asyncio.sleep(0.02)
        yield Stack(gw.epp, client)


def _events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


def _messages(question: str, stream: bool) -> dict[str, Any]:
    return {
        "model": "claude-sim",
        "max_tokens": 6,
        "system": [{"type": "text", "text": LONG}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
        "stream": stream,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_anthropic_messages_routed_with_prefix_affinity_usage_and_model_restored(
    stack: Stack, stream: bool
) -> None:
    labels = {"model_name": "claude-sim", "target_model_name": "base"}
    before = await stack.metric("inference_objective_output_tokens_sum", **labels)
    first = await stack.client.post("/v1/messages", json=_messages("Rain today?", stream))
    # The simulator serves only "base": a 200 proves the rewrite reached the server.
    assert first.status_code == 200, first.text
    if stream:
        events = _events(first.text)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "message_start"
        assert kinds[-1] == "message_stop"
        assert events[0]["message"]["model"] == "claude-sim"  # restored in the event stream
        assert "base" not in first.text
    else:
        assert first.json()["model"] == "claude-sim"
        assert first.json()["usage"]["output_tokens"] == 6
    # Same system prompt, other questions: the prefix scorer keeps them on the same server
    # (ties between idle servers are broken at random: 5 follow-ups all landing there by
    # chance has p = 1/243).
    servers = {first.headers["x-sim-server"]}
    questions = ("Snow tomorrow?", "Wind tonight?", "Fog?", "Hail?", "Sun?")
    for question in questions:
        r = await stack.client.post("/v1/messages", json=_messages(question, stream))
        assert r.status_code == 200
        servers.add(r.headers["x-sim-server"])
    assert len(servers) == 1, servers
    after = await stack.metric("inference_objective_output_tokens_sum", **labels)
    assert after - before == 6 * 6  # usage read from the body or message_delta events


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_responses_api_routed_usage_counted_and_model_restored(
    stack: Stack, stream: bool
) -> None:
    labels = {"model_name": "responses-sim", "target_model_name": "base"}
    before = await stack.metric("inference_objective_output_tokens_sum", **labels)
    body = {
        "model": "responses-sim",
        "instructions": LONG,
        "input": "Is it sunny?",
        "max_output_tokens": 5,
        "stream": stream,
    }
    r = await stack.client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    if stream:
        events = _events(r.text)
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["model"] == "responses-sim"
        assert events[-1]["response"]["usage"]["output_tokens"] == 5
    else:
        assert r.json()["model"] == "responses-sim"
    after = await stack.metric("inference_objective_output_tokens_sum", **labels)
    assert after - before == 5


@pytest.mark.parametrize(
    ("model", "objective", "rewrite"),
    [
        ("hdr-new", "x-llm-d-inference-objective", "x-llm-d-model-name-rewrite"),
        ("hdr-old", "x-gateway-inference-objective", "x-gateway-model-name-rewrite"),
    ],
    ids=["new-names", "old-names"],
)
async def test_new_and_old_header_names_behave_the_same(
    stack: Stack, model: str, objective: str, rewrite: str
) -> None:
    body = {"model": model, "prompt": "headers", "max_tokens": 3}
    r = await stack.client.post(
        "/v1/completions", json=body, headers={objective: "premium", rewrite: "base"}
    )
    assert r.status_code == 200, r.text  # sent as "base", the only model served
    assert r.json()["model"] == model  # restored
    # The objective's priority (10) reached the director; the request counts under it.
    assert (
        await stack.metric(
            "inference_objective_request_total",
            model_name=model,
            target_model_name="base",
            priority="10",
        )
        == 1
    )


async def test_conflicting_names_resolve_to_the_new_one(stack: Stack) -> None:
    body = {"model": "hdr-both", "prompt": "headers", "max_tokens": 3}
    r = await stack.client.post(
        "/v1/completions",
        json=body,
        headers={"x-llm-d-model-name-rewrite": "base", "x-gateway-model-name-rewrite": "nope"},
    )
    assert r.status_code == 200, r.text  # "nope" would be a 404 from the simulator


async def test_unclaimed_path_is_400_naming_path_and_parsers(stack: Stack) -> None:
    r = await stack.client.post("/v1/rerank", json={"model": "base", "query": "x"})
    assert r.status_code == 400
    assert r.text == (
        "inference error: BadRequest - no parser matches path '/v1/rerank' "
        "(parsers tried: openai-parser, anthropic-parser)"
    )


async def test_count_tokens_is_forwarded_raw(stack: Stack) -> None:
    # The simulator has no count_tokens endpoint: its 404 proves the EPP forwarded the request
    # (unparsed, routed by load) rather than rejecting it.
    r = await stack.client.post("/v1/messages/count_tokens", content=b"not json at all")
    assert r.status_code == 404
    assert r.headers["x-sim-server"].startswith("sim-")
