"""The tap report over the EPP's HTTP/1.1 report socket (issue 19), through a real Envoy.

``kvroute serve``'s default gateway reaches the EPP over a private Unix socket; the Lua filter
then POSTs each response's report to the EPP's second socket (``kvroute.extproc.tap_http``)
instead of making a unary gRPC call. Checked with Envoy's own counters: every response that
ends normally (streamed and non-streamed) costs exactly one ext_proc stream and one HTTP report,
no gRPC report; the client still sees its model name, the usage is recorded with the
completion, and a client that leaves mid-stream sends no report and is recorded once, as a
disconnect. (The gRPC report stays for EPPs on TCP or with TLS: ``test_response_tap_replicas``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from kvroute.extproc import director_backend
from kvroute.extproc.backend import Outcome, Routed
from kvroute.gateway.bootstrap import EPP_CLUSTER, TAP_HTTP_CLUSTER
from kvroute.gateway.gateway import Gateway
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.integration.test_response_tap import CONFIG, RESOURCES, Stack, _events, _until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("tap-http")
    resources = tmp / "pool.yaml"
    resources.write_text(RESOURCES)
    outcomes: list[tuple[Routed, Outcome]] = []
    real_complete = director_backend.DirectorBackend.complete

    def complete(self: director_backend.DirectorBackend, routed: Routed, o: Outcome) -> None:
        outcomes.append((routed, o))
        real_complete(self, routed, o)

    server = MiniModelServer("s", token_delay_s=0.01, tokens=6)
    mp = pytest.MonkeyPatch()
    mp.setattr(director_backend.DirectorBackend, "complete", complete)
    try:
        async with mini_pool([server]):
            gw = Gateway(
                [server.url], resources=[resources], config_text=CONFIG, log_dir=tmp,
                transport="ext_proc",  # this file is about the ext_proc stream + HTTP report
            )  # fmt: skip
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


async def test_default_gateway_reports_over_http(stack: Stack) -> None:
    assert stack.gw.epp.tap_http_socket is not None
    assert stack.gw.epp.tap_http_socket.is_socket()
    assert stack.gw.bootstrap_options().tap_http_uds == str(stack.gw.epp.tap_http_socket)


@pytest.mark.parametrize("stream", [True, False])
async def test_one_stream_one_http_report_usage_recorded(stack: Stack, stream: bool) -> None:
    await stack.settle()
    before = await _counters(stack)
    body = {"model": "food-review", "prompt": "x" * 40, "max_tokens": 3, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = await stack.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        assert [e["model"] for e in _events(r.text)] == ["food-review"] * 4
    else:
        assert r.json()["model"] == "food-review"
    # The report is made while Envoy holds the response's end: recorded before the client
    # had it, so no waiting here.
    assert len(stack.outcomes) == 1
    _, outcome = stack.outcomes[0]
    assert outcome.via_tap
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (10, 3)
    after = await _counters(stack)
    assert _delta(before, after, f"cluster.{TAP_HTTP_CLUSTER}.upstream_rq_200") == 1
    assert _delta(before, after, f"cluster.{EPP_CLUSTER}.upstream_rq_total") == 1  # no gRPC one
    assert stack.inflight() == 0


async def test_disconnect_sends_no_report_recorded_once(stack: Stack) -> None:
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
