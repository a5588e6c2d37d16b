"""``kvroute serve``'s default transport (``auto`` = lua here) through a real Envoy (issue 19):
no ext_proc at all.

Envoy's Lua filter buffers each request, asks the EPP's route socket in one HTTP/1.1 call and
applies the answer (``kvroute.gateway.request_lua``); the response tap reports each response
as before. Checked with the real director, a real :class:`MiniModelServer` and Envoy's own
counters: one route call and one report per request and no ext_proc stream; the InferenceModel
rewrite ``food-review`` -> ``base`` reaches the server (body replaced) and is restored for the
client, streamed and not; usage lands in the EPP's histograms; flow control's 429 comes with
its dropped-reason header and JSON body; a client that leaves while queued leaves the queue
(Envoy closes the call's connection), one that leaves mid-stream is recorded once as a
disconnect; bodies over the limit get a 413.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from kvroute.extproc import director_backend
from kvroute.extproc.backend import Outcome, Routed
from kvroute.gateway.bootstrap import EPP_CLUSTER, TAP_HTTP_CLUSTER
from kvroute.gateway.gateway import Gateway
from kvroute.gateway.request_lua import ROUTE_CLUSTER
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.integration.test_flow_control_gateway import BODY, _config, _metric
from tests.integration.test_response_tap import CONFIG, LABELS, RESOURCES, Stack, _events, _until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
SERVERS: list[MiniModelServer] = []  # the module stack's server (what it was sent)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("lua")
    resources = tmp / "pool.yaml"
    resources.write_text(RESOURCES)
    outcomes: list[tuple[Routed, Outcome]] = []
    real_complete = director_backend.DirectorBackend.complete

    def complete(self: director_backend.DirectorBackend, routed: Routed, o: Outcome) -> None:
        outcomes.append((routed, o))
        real_complete(self, routed, o)

    server = MiniModelServer("s", token_delay_s=0.01, tokens=6)
    SERVERS[:] = [server]
    mp = pytest.MonkeyPatch()
    mp.setattr(director_backend.DirectorBackend, "complete", complete)
    try:
        async with mini_pool([server]):
            gw = Gateway(
                [server.url],
                resources=[resources],
                config_text=CONFIG,
                log_dir=tmp,
            )  # no transport: the default (auto) picks lua for serve's private sockets
            assert gw.transport == "lua"
            async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                yield Stack(gw, client, outcomes)
    finally:
        mp.undo()


async def _counters(stack: Stack) -> dict[str, int]:
    assert stack.gw.envoy is not None
    async with stack.gw.envoy.admin_client() as admin:
        text = (await admin.get("/stats", params={"filter": "upstream_rq_"})).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def _delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


async def test_config_has_no_ext_proc_filter(stack: Stack) -> None:
    opts = stack.gw.bootstrap_options()
    assert opts.route_uds is not None
    assert stat.S_ISSOCK(os.stat(opts.route_uds).st_mode)
    assert stack.gw.envoy is not None
    async with stack.gw.envoy.admin_client() as admin:
        dump = (await admin.get("/config_dump")).text
    ext_proc = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
    assert ext_proc not in dump  # the filter's config; the extension list names it without
    assert "kvroute.request_route" in dump


@pytest.mark.parametrize("stream", [True, False])
async def test_routed_rewritten_restored_usage_recorded(stack: Stack, stream: bool) -> None:
    await stack.settle()
    before = await _counters(stack)
    tokens_before = await stack.metric("inference_objective_output_tokens_sum", **LABELS)
    body = {"model": "food-review", "prompt": "x" * 40, "max_tokens": 3, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        assert [e["model"] for e in _events(r.text)] == ["food-review"] * 4
    else:
        assert r.json()["model"] == "food-review"
    assert len(stack.outcomes) == 1  # recorded while Envoy held the response's end
    routed, outcome = stack.outcomes[0]
    assert (routed.incoming_model, routed.target_model) == ("food-review", "base")
    assert outcome.via_tap
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (10, 3)
    assert outcome.served_endpoint is not None
    after = await _counters(stack)
    assert _delta(before, after, f"cluster.{ROUTE_CLUSTER}.upstream_rq_200") == 1
    assert _delta(before, after, f"cluster.{TAP_HTTP_CLUSTER}.upstream_rq_200") == 1
    assert _delta(before, after, f"cluster.{EPP_CLUSTER}.upstream_rq_total") == 0  # no ext_proc
    tokens_after = await stack.metric("inference_objective_output_tokens_sum", **LABELS)
    assert tokens_after - tokens_before == 3
    assert stack.inflight() == 0


async def test_server_gets_the_rewritten_model(stack: Stack) -> None:
    """The body the server saw carries the target model (the Lua ``setBytes``)."""
    await stack.settle()
    r = await stack.client.post(
        "/v1/chat/completions",
        json={"model": "food-review", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "food-review"
    assert SERVERS[0].seen_models[-1] == "base"  # parsed whole: content-length was reset


async def test_other_paths_are_404_without_asking_the_epp(stack: Stack) -> None:
    before = await _counters(stack)
    r = await stack.client.get("/v1/models")
    assert r.status_code == 404
    after = await _counters(stack)
    assert _delta(before, after, f"cluster.{ROUTE_CLUSTER}.upstream_rq_total") == 0


async def test_bad_request_answered_by_the_epp(stack: Stack) -> None:
    r = await stack.client.post("/v1/completions", content=b"{not json")
    assert r.status_code == 400, r.text
    assert r.text.startswith("inference error: BadRequest")
    r = await stack.client.post("/v1/completions")  # no body on an inference path
    assert r.status_code == 400, r.text


async def test_body_just_over_the_limit_gets_the_epps_413(stack: Stack) -> None:
    """Envoy buffers a little more than --max-request-body-bytes, so the EPP's own 413 (with
    its message) comes back, at the end of the upload as in ext_proc mode."""
    limit = stack.gw.settings.max_request_body_bytes
    r = await stack.client.post(
        "/v1/completions", content=b'{"model":"base","prompt":"' + b"x" * (limit + 10) + b'"}'
    )
    assert r.status_code == 413, r.text[:200]
    assert "--max-request-body-bytes" in r.text


async def test_disconnect_mid_stream_recorded_once(stack: Stack) -> None:
    await stack.settle()
    before = await _counters(stack)
    body = {"model": "food-review", "prompt": "x", "stream": True, "max_tokens": 50}
    async with (
        httpx.AsyncClient(base_url=stack.gw.url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        first = await anext(r.aiter_bytes())
        assert b'"model": "food-review"' in first
    assert await _until(lambda: len(stack.outcomes) == 1)
    await asyncio.sleep(0.3)  # a second completion would show up here
    assert len(stack.outcomes) == 1
    _, outcome = stack.outcomes[0]
    assert outcome.disconnected
    assert outcome.usage is None
    after = await _counters(stack)
    assert _delta(before, after, f"cluster.{TAP_HTTP_CLUSTER}.upstream_rq_total") == 0
    assert stack.inflight() == 0


# -- flow control: the dropped reason, and a client that leaves while queued -----------------------


def _fc_gateway(server: MiniModelServer, tmp_path: Path, ttl: str) -> Gateway:
    gw = Gateway([server.url], config_text=_config(ttl), log_dir=tmp_path)
    assert gw.transport == "lua"  # the default
    return gw


async def test_ttl_expiry_is_429_with_the_dropped_reason(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    async with (
        mini_pool([server]),
        _fc_gateway(server, tmp_path, "300ms") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        long = asyncio.create_task(c.post("/v1/completions", json={**BODY, "max_tokens": 40}))
        assert await _until(lambda: server.inflight == 1)
        r = await c.post("/v1/completions", json=BODY)
        assert r.status_code == 429, r.text
        assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"
        assert r.headers["content-type"].startswith("application/json")
        assert json.loads(r.text)["error"]["code"] == "rejected-ttl-expired"
        assert (await long).status_code == 200
        assert server.served == 1


async def test_client_leaving_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    async with (
        mini_pool([server]),
        _fc_gateway(server, tmp_path, "60s") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        long = asyncio.create_task(c.post("/v1/completions", json={**BODY, "max_tokens": 60}))
        assert await _until(lambda: server.inflight == 1)
        queue = "llm_d_epp_flow_control_queue_size"
        async with httpx.AsyncClient(base_url=gw.url, timeout=0.5) as impatient:
            waiter = asyncio.create_task(impatient.post("/v1/completions", json=BODY))
            for _ in range(100):
                if await _metric(gw, queue) == 1:
                    break
                await asyncio.sleep(0.01)
            assert await _metric(gw, queue) == 1
            with pytest.raises(httpx.TimeoutException):
                await waiter
        cancelled = "EvictedContextCancelled"
        got = 0.0
        for _ in range(200):
            got = await _metric(gw, "llm_d_epp_flow_control_requests_total", outcome=cancelled)
            if got == 1:
                break
            await asyncio.sleep(0.01)
        assert got == 1
        assert await _metric(gw, queue) == 0
        assert gw.epp.route_shell is not None
        assert gw.epp.route_shell.cancelled == 1
        assert (await long).status_code == 200
        await asyncio.sleep(0.1)
        assert server.served == 1
