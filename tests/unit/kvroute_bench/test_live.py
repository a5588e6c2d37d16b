"""The live generator over real HTTP on loopback, against a minimal streaming server.

The server here is a stand-in written for this test: it streams a fixed number of SSE chunks
with known delays, answers 429 for one model name and 500 for another, so that TTFT, token
counting (from ``usage``), shedding, failures and the request/time bounds can be checked exactly.
The integration test (``tests/integration/test_bench_live.py``) runs the generator against real
``kvroute sim`` servers.
"""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kvroute.scheduling.request import Criticality
from kvroute_bench.live import LiveOptions, check_loopback, run_live, summarize_live
from kvroute_bench.metrics import Slo
from kvroute_bench.workload import BenchRequest

FIRST_DELAY = 0.05
GAP = 0.01


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["model"] == "busy":
        return web.json_response({"error": "saturated"}, status=429)
    if body["model"] == "broken":
        return web.json_response({"error": "boom"}, status=500)
    if body["model"] == "stalls":  # headers and one chunk, then nothing until the client gives up
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "text": " a"}]}\n\n')
        await asyncio.sleep(30)
        return resp
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    n = int(body["max_tokens"])
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(FIRST_DELAY)
    for i in range(n):
        if i:
            await asyncio.sleep(GAP)
        chunk = {"choices": [{"index": 0, "text": f" tok{i}"}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp


def _req(i: int, t: float, out: int, adapter: str | None = None) -> BenchRequest:
    return BenchRequest(f"r{i}", t, (1, 2, 3), out, adapter, Criticality.STANDARD)


async def test_ttft_tokens_shed_and_failures_are_measured() -> None:
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        reqs = [
            _req(0, 0.0, 5),
            _req(1, 0.05, 3),
            _req(2, 0.1, 4, adapter="busy"),
            _req(3, 0.15, 4, adapter="broken"),
            _req(4, 0.2, 2),
            _req(5, 5.0, 2),  # after the duration bound: never sent
        ]
        records, end = await run_live(reqs, LiveOptions(urls=(url,), duration=1.0, timeout=5))
    assert len(records) == 5
    ok = [r for r in records if r.finish is not None]
    assert [r.request.request_id for r in ok] == ["r0", "r1", "r4"]
    for r in ok:
        assert r.output_tokens == r.request.output_len  # from the server's usage
        assert r.first_token is not None
        assert FIRST_DELAY <= r.ttft(end) < FIRST_DELAY + 0.1
        tpot = r.tpot()
        assert tpot is not None
        assert GAP * 0.9 <= tpot < GAP + 0.05
    # open loop: sends follow the schedule, not the previous request's completion
    assert records[1].sent == pytest.approx(0.05, abs=0.03)
    assert records[2].shed
    assert records[3].failed
    m = summarize_live(records, qps=5, end=end, window=end, slo=Slo(ttft=1.0, tpot=0.05))
    assert (m.arrived, m.completed, m.shed, m.failed) == (5, 3, 1, 1)


async def test_max_requests_bound() -> None:
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        reqs = [_req(i, i * 0.01, 1) for i in range(10)]
        records, _end = await run_live(reqs, LiveOptions(urls=(url,), max_requests=4))
    assert len(records) == 4
    assert all(r.finish is not None for r in records)


async def test_a_stream_that_stalls_past_the_timeout_is_a_failure_not_a_crash() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        # the last send at 0.3 s makes the client timeout (0.5 s from its send) fire before
        # run_live stops waiting (0.5 s after the last send)
        reqs = [_req(0, 0.0, 2), _req(1, 0.0, 2, adapter="stalls"), _req(2, 0.3, 1)]
        records, _end = await run_live(reqs, LiveOptions(urls=(url,), timeout=0.5))
    assert records[0].finish is not None
    assert records[1].failed
    assert records[1].first_token is not None  # it did stream before it stalled
    gc.collect()  # a task whose exception nobody retrieved reports it when collected
    assert not unhandled, unhandled


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:1", True),
        ("http://[::1]:80", True),
        ("http://10.0.0.5:8000", False),
        ("https://example.com", False),
    ],
    ids=["v4-loopback", "localhost", "v6-loopback", "private", "public"],
)
def test_only_loopback_targets(url: str, ok: bool) -> None:
    if ok:
        check_loopback(url)
    else:
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)
