"""Flow control through a real Envoy + EPP + model server on loopback.

The pool is one :class:`MiniModelServer` and the saturation detector is ``concurrency-detector``
with ``maxConcurrency: 1``, so the second concurrent request is held by the EPP
deterministically (no dependence on scrape timing):

* a burst waits in the EPP and every request succeeds; the server never sees two at once;
* past the TTL the client gets 429 with ``x-llm-d-request-dropped-reason: rejected-ttl-expired``
  and an OpenAI error JSON body;
* a client that hangs up while queued leaves the queue at once (queue gauge back to 0,
  ``EvictedContextCancelled`` counted), and the held request never reaches the server;
* EPP shutdown answers every queued request 503 ``rejected-shutting-down``;
* a full band displaces the newest request of the tenant holding it (429
  ``evicted-queue-pressure``) for a quiet tenant's arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]


def _config(ttl: str, band: str = "{}") -> str:
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
- {{type: concurrency-detector, parameters: {{maxConcurrency: 1}}}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
flowControl:
  defaultRequestTTL: {ttl}
  defaultPriorityBand: {band}
  saturationDetector: {{pluginRef: concurrency-detector}}
"""


async def _until(predicate: Callable[[], bool], tries: int = 500) -> bool:
    for _ in range(tries):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def _metric(gw: Gateway, name: str, **labels: str) -> float:
    """Sum of ``name`` samples whose labels include ``labels`` (from the real /metrics)."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{gw.epp.ports.metrics}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


BODY = {"model": "base", "prompt": "hello", "max_tokens": 4}


def _gateway(server: MiniModelServer, tmp_path: Path, ttl: str, band: str = "{}") -> Gateway:
    return Gateway([server.url], config_text=_config(ttl, band), log_dir=tmp_path)


async def test_a_burst_waits_in_the_epp_and_succeeds(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.02)
    peak = 0

    async with mini_pool([server]), _gateway(server, tmp_path, "30s") as gw:

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.inflight)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json=BODY) for _ in range(8)))
        watcher.cancel()
        assert [r.status_code for r in rs] == [200] * 8, [r.text for r in rs]
        assert server.served == 8
        assert peak == 1  # the EPP held the rest: one at a time reached the server
        assert await _metric(gw, "llm_d_epp_flow_control_requests_total", outcome="Dispatched") == 8
        queued = await _metric(
            gw, "llm_d_epp_flow_control_request_queue_duration_seconds_count", outcome="Dispatched"
        )
        assert queued >= 1  # some of them really waited in the queue
        assert await _metric(gw, "inference_extension_flow_control_queue_size") == 0


async def test_past_the_ttl_the_client_gets_429_with_the_reason(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    async with (
        mini_pool([server]),
        _gateway(server, tmp_path, "300ms") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        long = asyncio.create_task(c.post("/v1/completions", json={**BODY, "max_tokens": 40}))
        assert await _until(lambda: server.inflight == 1)
        r = await c.post("/v1/completions", json=BODY)
        assert r.status_code == 429, r.text
        assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == "rejected-ttl-expired"
        assert err["message"] == "inference error: ResourceExhausted - request timed out in queue"
        assert (await long).status_code == 200
        assert server.served == 1
        assert await _metric(gw, "llm_d_epp_flow_control_requests_total", outcome="EvictedTTL") == 1


async def test_a_full_band_displaces_the_noisy_tenants_newest_not_the_quiet_one(
    tmp_path: Path,
) -> None:
    """Band of 2: a tenant holding both places loses its newest (429 ``evicted-queue-pressure``,
    JSON error) to a quiet tenant's arrival, which waits and succeeds."""
    server = MiniModelServer("s", token_delay_s=0.05)
    fid = "x-llm-d-inference-fairness-id"
    async with (
        mini_pool([server]),
        _gateway(server, tmp_path, "60s", "{maxRequests: 2}") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        noisy = {fid: "noisy"}
        # 3 s of tokens: the queue steps below must happen while it runs, also on a loaded box.
        long = asyncio.create_task(
            c.post("/v1/completions", json={**BODY, "max_tokens": 60}, headers=noisy)
        )
        assert await _until(lambda: server.inflight == 1)
        queue = "llm_d_epp_flow_control_queue_size"

        async def queued(n: int) -> float:
            for _ in range(200):
                if await _metric(gw, queue) == n:
                    break
                await asyncio.sleep(0.01)
            return await _metric(gw, queue)

        first = asyncio.create_task(c.post("/v1/completions", json=BODY, headers=noisy))
        assert await queued(1) == 1  # queued before the second: the second is the newest
        second = asyncio.create_task(c.post("/v1/completions", json=BODY, headers=noisy))
        assert await queued(2) == 2
        quiet = asyncio.create_task(c.post("/v1/completions", json=BODY, headers={fid: "quiet"}))
        r = await asyncio.wait_for(second, 10)
        assert r.status_code == 429, r.text
        assert r.headers["x-llm-d-request-dropped-reason"] == "evicted-queue-pressure"
        assert r.json()["error"]["code"] == "evicted-queue-pressure"
        assert (await quiet).status_code == 200
        assert (await first).status_code == 200
        assert (await long).status_code == 200
        assert server.served == 3
        assert await _metric(gw, queue) == 0
        assert (
            await _metric(gw, "llm_d_epp_flow_control_requests_total", outcome="EvictedOther") == 1
        )


async def test_a_client_that_hangs_up_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    async with (
        mini_pool([server]),
        _gateway(server, tmp_path, "60s") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        long = asyncio.create_task(c.post("/v1/completions", json={**BODY, "max_tokens": 60}))
        assert await _until(lambda: server.inflight == 1)
        async with httpx.AsyncClient(base_url=gw.url, timeout=0.5) as impatient:
            waiter = asyncio.create_task(impatient.post("/v1/completions", json=BODY))
            queue = "llm_d_epp_flow_control_queue_size"
            for _ in range(100):
                if await _metric(gw, queue) == 1:
                    break
                await asyncio.sleep(0.01)
            assert await _metric(gw, queue) == 1
            with pytest.raises(httpx.TimeoutException):
                await waiter  # the client gives up and closes its connection
        cancelled = "EvictedContextCancelled"
        for _ in range(200):
            got = await _metric(gw, "llm_d_epp_flow_control_requests_total", outcome=cancelled)
            if got == 1:
                break
            await asyncio.sleep(0.01)
        assert got == 1
        assert await _metric(gw, queue) == 0
        assert await _metric(gw, "inference_extension_flow_control_queue_size") == 0
        assert (await long).status_code == 200
        await asyncio.sleep(0.1)
        assert server.served == 1  # the abandoned request never reached the server


async def test_epp_shutdown_answers_every_queued_request_503(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    async with mini_pool([server]):
        gw = _gateway(server, tmp_path, "60s")
        await gw.__aenter__()
        try:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                long = asyncio.create_task(
                    c.post("/v1/completions", json={**BODY, "max_tokens": 40})
                )
                assert await _until(lambda: server.inflight == 1)
                queued = [
                    asyncio.create_task(c.post("/v1/completions", json=BODY)) for _ in range(3)
                ]
                for _ in range(100):
                    if await _metric(gw, "llm_d_epp_flow_control_queue_size") == 3:
                        break
                    await asyncio.sleep(0.01)
                assert await _metric(gw, "llm_d_epp_flow_control_queue_size") == 3
                # The EPP shuts down while Envoy is still up: every held request is answered.
                await gw.epp.__aexit__(None, None, None)
                answers = await asyncio.wait_for(asyncio.gather(*queued), 10)
                for r in answers:
                    assert r.status_code == 503, r.text
                    assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-shutting-down"
                    assert r.json()["error"]["code"] == "rejected-shutting-down"
                with contextlib.suppress(httpx.HTTPError):
                    await long
        finally:
            await gw.__aexit__(None, None, None)
        assert server.served == 1
