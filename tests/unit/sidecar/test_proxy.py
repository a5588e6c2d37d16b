"""The sidecar over real loopback HTTP, between simulated prefill and decode servers.

Real parts: two ``kvroute_sim`` servers (roles ``prefill`` and ``decode``, profile ``tiny``) and
the sidecar's aiohttp app on OS-chosen ports; an aiohttp client. The "malformed" prefill server
is a tiny aiohttp app returning a broken ``kv_transfer_params``: no real server sends that.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kvroute.sidecar.proxy import Sidecar, SidecarOptions
from kvroute_sim.config import load_server_config
from kvroute_sim.server.app import SimServer

PROMPT = "the quick brown fox jumps over the lazy dog " * 8
BODY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": PROMPT, "max_tokens": 6}


async def _sim(role: str, name: str) -> SimServer:
    server = SimServer(load_server_config(profile="tiny", role=role), name=name)
    await server.start()
    return server


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


class Rig:
    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.servers: list[SimServer] = []

    async def start(self, prefill_timeout_s: float = 5.0) -> None:
        self.prefill = await _sim("prefill", "pre")
        self.decode = await _sim("decode", "dec")
        self.servers += [self.prefill, self.decode]
        self.sidecar = Sidecar(
            SidecarOptions(model_server=self.decode.url, prefill_timeout_s=prefill_timeout_s)
        )
        runner, port = await _serve(self.sidecar.app())
        self.runners.append(runner)
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()
        for s in self.servers:
            await s.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    await r.start()
    yield r
    await r.close()


async def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/completions", json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


def _text(raw: bytes) -> str:
    return str(json.loads(raw)["choices"][0]["text"])


async def test_tagged_request_is_prefilled_remotely_and_decoded_locally(rig: Rig) -> None:
    tag = {"x-prefiller-host-port": f"127.0.0.1:{rig.prefill.port}"}
    status, raw = await _post(rig.url, BODY, tag)
    assert status == 200
    assert json.loads(raw)["usage"]["completion_tokens"] == 6
    assert rig.prefill.transfers.sent == 1
    assert rig.prefill.transfers.phases["prefill-only"] == 1
    assert rig.decode.transfers.received == 1
    assert rig.decode.transfers.received_bytes == (
        json.loads(raw)["usage"]["prompt_tokens"] * 128 * 1024
    )
    m = rig.sidecar.metrics
    assert m.value(m.requests, "disaggregated") == 1

    # Untagged: passes straight through, served whole by the decode server.
    status, raw2 = await _post(rig.url, BODY, {})
    assert status == 200
    assert rig.decode.transfers.phases["whole"] == 1
    assert m.value(m.requests, "passthrough") == 1
    assert len(_text(raw2)) > 0


async def test_streamed_answer_is_unchanged(rig: Rig) -> None:
    tag = {"x-prefiller-host-port": f"127.0.0.1:{rig.prefill.port}"}
    body = {**BODY, "stream": True}
    _, split = await _post(rig.url, body, tag)
    # A fresh aggregated server answering the same request first gives the same stream.
    ref = await _sim("both", "dec")
    rig.servers.append(ref)
    _, whole = await _post(ref.url, body, {})

    def events(raw: bytes) -> list[Any]:
        out = []
        for line in raw.decode().split("\n\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                doc = json.loads(line[6:])
                doc.pop("created", None)
                out.append(doc)
        return out

    assert events(split) == events(whole)
    assert len(events(split)) == 6


async def test_dead_prefill_server_falls_back_to_local_prefill(rig: Rig) -> None:
    await rig.prefill.kill()
    tag = {"x-prefiller-host-port": f"127.0.0.1:{rig.prefill.port}"}
    status, raw = await _post(rig.url, BODY, tag)
    assert status == 200
    assert json.loads(raw)["usage"]["completion_tokens"] == 6
    m = rig.sidecar.metrics
    assert m.value(m.fallbacks, "error") == 1
    assert rig.decode.transfers.received == 0
    assert rig.decode.transfers.phases["whole"] == 1


async def test_malformed_params_and_timeouts_fall_back_and_count() -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"choices": [], "kv_transfer_params": {"remote_port": "x"}})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    rig = Rig()
    await rig.start(prefill_timeout_s=0.3)
    try:
        for handler, reason in ((broken, "malformed"), (slow, "timeout")):
            app = web.Application()
            app.router.add_post("/v1/completions", handler)
            runner, port = await _serve(app)
            rig.runners.append(runner)
            tag = {"x-prefiller-host-port": f"127.0.0.1:{port}"}
            status, raw = await _post(rig.url, BODY, tag)
            assert status == 200
            assert json.loads(raw)["usage"]["completion_tokens"] == 6
            m = rig.sidecar.metrics
            assert m.value(m.fallbacks, reason) == 1
        assert m.value(m.requests, "fallback") == 2
        assert rig.decode.transfers.received == 0
        async with aiohttp.ClientSession() as s, s.get(rig.url + "/sidecar/metrics") as resp:
            text = await resp.text()
        assert 'kvroute_sidecar_prefill_fallbacks_total{reason="malformed"} 1.0' in text
        # The model server's own /metrics passes through (what the EPP scrapes).
        async with aiohttp.ClientSession() as s, s.get(rig.url + "/metrics") as resp:
            role = 'model_name="meta-llama/Llama-3.1-8B-Instruct",role="decode"'
            assert f"kvroute_sim:role_info{{{role}}} 1" in await resp.text()
    finally:
        await rig.close()


async def test_data_parallel_header_reaches_that_ranks_port() -> None:
    """Two simulated servers on consecutive ports stand for two DP ranks of one pod."""
    ranks: list[SimServer] = []
    try:
        first = await _sim("both", "rank0")
        ranks.append(first)
        second = SimServer(load_server_config(profile="tiny"), name="rank1", port=first.port + 1)
        try:
            await second.start()
        except OSError:
            pytest.skip("the port after the first rank is taken")
        ranks.append(second)
        sidecar = Sidecar(
            SidecarOptions(model_server=first.url, data_parallel_size=2, listen_port=9000)
        )
        runner, port = await _serve(sidecar.app())
        try:
            url = f"http://127.0.0.1:{port}"
            status, raw = await _post(url, BODY, {"x-data-parallel-host-port": "10.0.0.7:9001"})
            assert status == 200
            assert json.loads(raw)["id"].endswith("rank1-1")
            status, raw = await _post(url, BODY, {})
            assert json.loads(raw)["id"].endswith("rank0-1")
        finally:
            await runner.cleanup()
    finally:
        for s in ranks:
            await s.stop()
