"""Failure paths through a real Envoy + EPP: every request gets a response, nothing stays in flight.

* a request body over ``--max-request-body-bytes`` is answered 413 with the EPP's message, whether
  Envoy knows the length up front (``content-length``) or the body is chunked;
* a model server that dies mid-response (streamed or not) or before its first byte: the client
  gets an error or a truncated body from Envoy, and the EPP's in-flight count returns to zero.

The dying server is a few lines of aiohttp here (the shared ``MiniModelServer`` has no mode that
aborts after the headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]

LIMIT = 200_000


def _inflight(gw: Gateway) -> int:
    return sum(e.load.inflight for e in gw.epp.datastore.endpoints())


async def _until(predicate: Callable[[], bool]) -> bool:
    for _ in range(500):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def _settings(url_hostport: tuple[str, int], **kw: Any) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=(url_hostport,),
        secure_serving=False,
        health_checking=True,
        **kw,
    )


async def test_finding8_oversized_body_is_a_413_labelled_as_such(tmp_path: Path) -> None:
    server = MiniModelServer("s")
    async with mini_pool([server]):
        settings = _settings(("127.0.0.1", server.port), max_request_body_bytes=LIMIT)
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            big = json.dumps({"model": "base", "prompt": "x" * (16 << 20)}).encode()
            declared = await c.post("/v1/completions", content=big)

            async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted by bytes
                for i in range(0, len(big), 16384):
                    yield big[i : i + 16384]

            streamed = await c.post("/v1/completions", content=chunked())
            for r in (declared, streamed):
                assert r.status_code == 413, r.text
                assert r.text.startswith("inference error: PayloadTooLarge - request body")
                assert f"limit of {LIMIT} bytes" in r.text
            assert server.served == 0
            ok = await c.post("/v1/completions", json={"model": "base", "prompt": "y" * 1000})
            assert ok.status_code == 200
            assert await _until(lambda: _inflight(gw) == 0)


class DyingServer:
    """Answers like a model server, then drops the connection at a chosen point."""

    def __init__(self, when: str) -> None:
        self.when = when
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _complete(self, req: web.Request) -> web.StreamResponse:
        await req.read()
        assert req.transport is not None
        if self.when == "before-headers":
            req.transport.abort()
            return web.Response(status=500)
        if self.when == "mid-json":
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(req)
            await resp.write(b'{"model":"base","choices":[')
        else:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(req)
            await resp.write(b'data: {"model":"base","choices":[{"text":"a"}]}\n\n')
        await asyncio.sleep(0.2)
        req.transport.abort()
        return resp

    async def _metrics(self, _req: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DyingServer]:
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        try:
            yield self
        finally:
            await self._runner.cleanup()


@pytest.mark.parametrize("when", ["before-headers", "mid-json", "mid-sse"])
async def test_server_dying_mid_response_releases_in_flight(tmp_path: Path, when: str) -> None:
    async with DyingServer(when).running() as server:
        settings = _settings(("127.0.0.1", server.port))
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            body = {"model": "base", "prompt": "x", "stream": when == "mid-sse"}
            if when == "before-headers":
                r = await c.post("/v1/completions", json=body)
                # Envoy retried the reset (same single endpoint), then answered itself.
                assert r.status_code == 503
                assert "reset" in r.text or "disconnect" in r.text
            else:
                statuses: list[int] = []

                async def fetch() -> None:
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        statuses.append(r.status_code)
                        await r.aread()

                with pytest.raises(httpx.HTTPError):  # truncated: never a clean success
                    await fetch()
                assert statuses == [200]
            assert await _until(lambda: _inflight(gw) == 0)


async def test_large_body_falls_back_when_the_first_endpoint_is_dead(tmp_path: Path) -> None:
    """A retry resends the body; Envoy must have kept all of it (it kept 1 MiB by default).

    The live server reports itself saturated so that the picker ranks it second; standard
    priority is never shed, so it still serves."""
    from tests.integration.test_gateway_e2e import FALLBACK_CONFIG

    dead = MiniModelServer("dead", reset_requests=True)
    live = MiniModelServer("live", saturated=True)
    async with mini_pool([dead, live]):
        gw = Gateway([dead.url, live.url], config_text=FALLBACK_CONFIG, log_dir=tmp_path)
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
            await _until(
                lambda: all(e.metrics.updated_at > 0 for e in gw.epp.datastore.endpoints())
            )
            prompt = "x" * (3 << 20)
            r = await c.post("/v1/completions", json={"model": "base", "prompt": prompt})
            assert r.status_code == 200, r.text
            assert r.headers["x-sim-server"] == "live"
            assert r.json()["prompt_len"] == len(prompt)
            assert await _until(lambda: _inflight(gw) == 0)
