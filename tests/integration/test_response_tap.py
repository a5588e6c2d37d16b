"""``tap`` response processing (the gateway's default) through a real Envoy (issue 19).

The response body does not travel through the EPP; Envoy's Lua filter restores the model name
and reports usage once per response. Checked here end to end, with an InferenceModel that
rewrites ``food-review`` to ``base`` (the server answers ``"model": "base"``): the client sees
its own name in every event and in the JSON document, the EPP's token histograms and NTPOT get
the server's usage, in-flight counts return to zero, and a client that leaves mid-stream is
recorded once, as a disconnect, without usage. Runs with both upstream load-balancer shapes of
the generated config (``override_host``, ``original_dst``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.extproc import director_backend
from kvroute.extproc.backend import Outcome, Routed
from kvroute.gateway.gateway import Gateway
from kvroute.gateway.response_tap import EDGE_CAP
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

RESOURCES = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: tap-pool}
spec:
  selector: {matchLabels: {app: tap}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: tap-epp, port: {number: 9002}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: food-review}
spec:
  modelName: food-review
  targetModels: [{name: base, weight: 1}]
  poolRef: {name: tap-pool}
"""
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
flowControl: {enabled: false}
"""


@dataclass
class Stack:
    gw: Gateway
    client: httpx.AsyncClient
    outcomes: list[tuple[Routed, Outcome]]

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{self.gw.epp.ports.metrics}/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def inflight(self) -> int:
        return sum(e.load.inflight for e in self.gw.epp.datastore.endpoints())

    async def settle(self) -> None:
        """Earlier requests are complete (their completions recorded), then forget them."""
        assert await _until(lambda: self.inflight() == 0)
        await asyncio.sleep(0.05)
        self.outcomes.clear()


LABELS = {"model_name": "food-review", "target_model_name": "base"}


async def _until(predicate: Callable[[], bool]) -> bool:
    for _ in range(500):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=["override_host", "original_dst"]
)
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("tap")
    resources = tmp / "pool.yaml"
    resources.write_text(RESOURCES)
    outcomes: list[tuple[Routed, Outcome]] = []
    real_complete = director_backend.DirectorBackend.complete

    def complete(self: director_backend.DirectorBackend, routed: Routed, o: Outcome) -> None:
        outcomes.append((routed, o))  # what the stream recorded, as the backend got it
        real_complete(self, routed, o)

    server = MiniModelServer("s", token_delay_s=0.01, tokens=6)
    mp = pytest.MonkeyPatch()
    mp.setattr(director_backend.DirectorBackend, "complete", complete)
    try:
        async with mini_pool([server]):
            gw = Gateway(
                [server.url],
                resources=[resources],
                config_text=CONFIG,  # response processing: the default, tap
                upstream_lb=request.param,
                log_dir=tmp,
            )
            async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                yield Stack(gw, client, outcomes)
    finally:
        mp.undo()


def _events(text: str) -> list[dict[str, object]]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            out.append(json.loads(block[len("data: ") :]))
    return out


async def test_streamed_model_restored_usage_recorded(stack: Stack) -> None:
    assert stack.gw.settings.response_processing is ResponseProcessing.TAP  # the default
    before = await stack.metric("inference_objective_output_tokens_sum", **LABELS)
    ntpot_before = await stack.metric(
        "inference_objective_normalized_time_per_output_token_seconds_count", **LABELS
    )
    await stack.settle()
    body = {
        "model": "food-review",
        "prompt": "a prompt of some length",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    events = _events(r.text)
    assert len(events) == 7  # 6 tokens + the usage event
    assert all(e["model"] == "food-review" for e in events)
    assert r.text.endswith("data: [DONE]\n\n")
    assert await _until(lambda: len(stack.outcomes) == 1)
    routed, outcome = stack.outcomes[0]
    assert (routed.incoming_model, routed.target_model) == ("food-review", "base")
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert outcome.usage.completion_tokens == 6
    assert outcome.response_bytes == len(r.content.replace(b"food-review", b"base"))
    assert outcome.first_chunk_at is not None
    assert outcome.via_tap
    after = await stack.metric("inference_objective_output_tokens_sum", **LABELS)
    assert after - before == 6
    ntpot = await stack.metric(
        "inference_objective_normalized_time_per_output_token_seconds_count", **LABELS
    )
    assert ntpot - ntpot_before == 1
    assert stack.inflight() == 0


async def test_long_stream_usage_read_from_its_edges(stack: Stack) -> None:
    """Past ``2 * EDGE_CAP`` bytes the Lua filter keeps only the stream's first and last bytes."""
    await stack.settle()
    body = {
        "model": "food-review",
        "prompt": "p",
        "stream": True,
        "max_tokens": 200,
        "stream_options": {"include_usage": True},
    }
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200
    assert len(r.content) > 2 * EDGE_CAP
    assert [e["model"] for e in _events(r.text)] == ["food-review"] * 201
    assert await _until(lambda: len(stack.outcomes) == 1)
    _, outcome = stack.outcomes[0]
    assert outcome.usage is not None
    assert outcome.usage.completion_tokens == 200
    assert not outcome.disconnected


async def test_json_model_restored_usage_recorded(stack: Stack) -> None:
    before = await stack.metric("inference_objective_input_tokens_count", **LABELS)
    await stack.settle()
    body = {"model": "food-review", "prompt": "x" * 40, "max_tokens": 3}
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "food-review"
    assert await _until(lambda: len(stack.outcomes) == 1)
    _, outcome = stack.outcomes[0]
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (10, 3)
    after = await stack.metric("inference_objective_input_tokens_count", **LABELS)
    assert after - before == 1
    assert stack.inflight() == 0


async def test_model_split_across_chunks_restored(stack: Stack) -> None:
    """Many back-to-back requests: whatever Envoy's reads cut, every event has the client's
    name (the Lua filter holds a tail that may start a ``"model"`` field)."""
    body = {"model": "food-review", "prompt": "p", "stream": True}
    rs = await asyncio.gather(*(stack.client.post("/v1/completions", json=body) for _ in range(8)))
    for r in rs:
        assert r.status_code == 200
        assert "base" not in r.text
        assert [e["model"] for e in _events(r.text)] == ["food-review"] * 6


async def test_client_disconnect_mid_stream_recorded_once(stack: Stack) -> None:
    await stack.settle()
    body = {"model": "food-review", "prompt": "x", "stream": True, "max_tokens": 50}
    async with (
        httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        first = await anext(r.aiter_bytes())
        assert b'"model": "food-review"' in first
        assert stack.inflight() == 1
    # leaving the block closed the connection mid-stream
    assert await _until(lambda: stack.inflight() == 0)
    assert await _until(lambda: len(stack.outcomes) == 1)
    await asyncio.sleep(0.3)  # a second completion would show up here
    assert len(stack.outcomes) == 1
    _, outcome = stack.outcomes[0]
    assert outcome.disconnected
    assert outcome.usage is None
    # The next request is accounted normally.
    r2 = await stack.client.post("/v1/completions", json={"model": "base", "prompt": "y"})
    assert r2.status_code == 200
    assert await _until(lambda: stack.inflight() == 0)


async def test_model_not_rewritten_usage_recorded(stack: Stack) -> None:
    """No rewrite: the body passes byte for byte, usage is still read."""
    await stack.settle()
    body = {
        "model": "base",
        "prompt": "z",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200
    assert [e["model"] for e in _events(r.text)] == ["base"] * 7
    assert await _until(lambda: len(stack.outcomes) == 1)
    routed, outcome = stack.outcomes[0]
    assert routed.incoming_model == routed.target_model == "base"
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert outcome.usage.completion_tokens == 6
    assert outcome.response_bytes == len(r.content)


async def test_events_arriving_with_the_headers_are_all_restored(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A server that writes its first events together with the headers (no delay): the Lua
    filter rewrites them while ext_proc may still hold the headers. Regression: a rewrite then
    set ``content-length`` to the first chunk's length and the client saw one event only."""
    tmp = tmp_path_factory.mktemp("tap-burst")
    resources = tmp / "pool.yaml"
    resources.write_text(RESOURCES)
    server = MiniModelServer("burst", token_delay_s=0.0, tokens=30)
    async with mini_pool([server]):
        gw = Gateway(
            [server.url],
            resources=[resources],
            config_text=CONFIG,
            response_processing=ResponseProcessing.TAP,
            log_dir=tmp,
        )
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            for stream in (True, False):
                body = {"model": "food-review", "prompt": "p", "stream": stream}
                for _ in range(5):
                    r = await client.post("/v1/completions", json=body)
                    assert r.status_code == 200
                    assert "content-length" not in r.headers or not stream
                    if stream:
                        assert [e["model"] for e in _events(r.text)] == ["food-review"] * 30
                        assert r.text.endswith("data: [DONE]\n\n")
                    else:
                        assert r.json()["model"] == "food-review"
