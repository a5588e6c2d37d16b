"""Fault injection over real HTTP: 500s, hangs, mid-stream closes, bad /metrics, death."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from kvroute_sim.cluster import SimCluster
from kvroute_sim.config import FaultConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = {"model": MODEL, "prompt": "a b c", "max_tokens": 6}


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    async with SimCluster(n=1, profile="tiny", base_port=0) as c:
        yield c


async def _set(session: aiohttp.ClientSession, url: str, **faults: object) -> None:
    async with session.post(f"{url}/admin/faults", json=faults) as r:
        assert r.status == 200
        assert (await r.json()).items() >= faults.items()


async def test_error_rate_one_answers_500_in_vllm_shape(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with aiohttp.ClientSession() as s:
        await _set(s, url, error_rate=1.0)
        async with s.post(f"{url}/v1/completions", json=BODY) as r:
            assert r.status == 500
            assert (await r.json())["error"]["type"] == "InternalServerError"
        await _set(s, url, error_rate=0.0)
        async with s.post(f"{url}/v1/completions", json=BODY) as r:
            assert r.status == 200


async def test_hang_never_answers(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with aiohttp.ClientSession() as s:
        await _set(s, url, hang=True)
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(
                f"{url}/v1/completions", json=BODY, timeout=aiohttp.ClientTimeout(total=0.3)
            ) as r:
                await r.read()


async def test_close_mid_stream_drops_the_connection(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with aiohttp.ClientSession() as s:
        await _set(s, url, close_mid_stream_after=2)
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            await _read_stream(s, f"{url}/v1/completions", received)
        assert received.count(b"data: ") == 2
        assert b"[DONE]" not in received


async def _read_stream(s: aiohttp.ClientSession, url: str, into: bytearray) -> None:
    async with s.post(url, json={**BODY, "stream": True}) as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            into += chunk


async def test_metrics_garbage_and_delay(cluster: SimCluster) -> None:
    url = cluster.urls[0]
    async with aiohttp.ClientSession() as s:
        await _set(s, url, metrics_garbage=True)
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert "# TYPE" not in text
        await _set(s, url, metrics_garbage=False, metrics_delay_s=5.0)
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=0.2)) as r:
                await r.read()


async def test_death_refuses_connections_until_revived(cluster: SimCluster) -> None:
    server = cluster.servers[0]
    url = server.url
    async with aiohttp.ClientSession() as s:
        await _set(s, url, dead=True)
        for _ in range(50):
            if server.faults.dead and server._runner is None:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.get(f"{url}/health") as r:
                await r.read()
        await server.revive()
        async with s.get(f"{url}/health") as r:
            assert r.status == 200


async def test_faults_from_config_apply_at_start() -> None:
    async with (
        SimCluster(n=1, profile="tiny", faults=FaultConfig(error_rate=1.0)) as c,
        aiohttp.ClientSession() as s,
        s.post(f"{c.urls[0]}/v1/completions", json=BODY) as r,
    ):
        assert r.status == 500
