"""In-flight accounting through real Envoy: completion is recorded once, at the right moment.

``full`` response processing sees the body's end of stream; ``light`` learns completion from
Envoy closing the ext_proc stream when the HTTP exchange ends (its filter config keeps response
trailers SEND so that Envoy does not close the stream at the response headers). A client that
disconnects mid-stream must also bring the in-flight count back to zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.gateway.gateway import Gateway
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]


def _inflight(gw: Gateway) -> int:
    return sum(e.load.inflight for e in gw.epp.datastore.endpoints())


async def _until(predicate: Callable[[], bool]) -> bool:
    """Poll for up to 5 s (completion arrives asynchronously over the gRPC stream)."""
    for _ in range(500):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.mark.parametrize(
    "mode", list(ResponseProcessing), ids=[m.value for m in ResponseProcessing]
)
async def test_inflight_held_until_stream_ends(tmp_path: Path, mode: ResponseProcessing) -> None:
    server = MiniModelServer("s", token_delay_s=0.1, tokens=6)
    async with mini_pool([server]):
        gw = Gateway([server.url], response_processing=mode, log_dir=tmp_path)
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            body = {"model": "base", "prompt": "x", "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                chunks = r.aiter_bytes()
                first = await anext(chunks)
                assert first.startswith(b"data: ")
                # Headers and the first token are through; the request is still running.
                await asyncio.sleep(0.15)
                assert _inflight(gw) == 1
                rest = b"".join([c async for c in chunks])
            assert rest.endswith(b"data: [DONE]\n\n")
            assert await _until(lambda: _inflight(gw) == 0)


async def test_client_disconnect_completes_exactly_once(tmp_path: Path) -> None:
    server = MiniModelServer("s", token_delay_s=0.1, tokens=10)
    async with mini_pool([server]):
        gw = Gateway([server.url], log_dir=tmp_path)
        async with gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                body = {"model": "base", "prompt": "x", "stream": True}
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    await anext(r.aiter_bytes())
                    assert _inflight(gw) == 1
                # leaving the block closes the connection mid-stream
            assert await _until(lambda: _inflight(gw) == 0)
            # A later request is accounted normally (the counter did not go negative).
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                r2 = await c.post("/v1/completions", json={"model": "base", "prompt": "y"})
            assert r2.status_code == 200
            assert await _until(lambda: _inflight(gw) == 0)
            (ep,) = gw.epp.datastore.endpoints()
            assert ep.load.inflight == 0


@pytest.mark.parametrize(
    "mode", list(ResponseProcessing), ids=[m.value for m in ResponseProcessing]
)
async def test_prefill_ledger_released_at_first_chunk_in_full_mode(
    tmp_path: Path, mode: ResponseProcessing
) -> None:
    """``full``: the EPP sees the first body chunk and the prompt leaves the prefill ledger while
    the request still streams. Other modes see no chunk, so it leaves at completion."""
    server = MiniModelServer("s", token_delay_s=0.1, tokens=6)
    async with mini_pool([server]):
        gw = Gateway([server.url], response_processing=mode, log_dir=tmp_path)
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            body = {"model": "base", "prompt": "p" * 400, "stream": True}  # 100 tokens
            (ep,) = gw.epp.datastore.endpoints()
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                chunks = r.aiter_bytes()
                await anext(chunks)
                await asyncio.sleep(0.15)
                assert _inflight(gw) == 1
                expected = 0 if mode is ResponseProcessing.FULL else 100
                assert ep.load.prefill_tokens == expected
                _ = b"".join([c async for c in chunks])
            assert await _until(lambda: _inflight(gw) == 0)
            assert ep.load.prefill_tokens == 0
