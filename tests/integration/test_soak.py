"""Soak (issue 20): mixed traffic with rotating server faults through ``kvroute serve`` for
``KVROUTE_SOAK_S`` seconds (default 600), run by ``make test-slow``.

``kvroute serve`` (real Envoy + the EPP, default flags) runs as its own process in front of three
``MiniModelServer`` processes' worth of real aiohttp servers on loopback. Eight clients send, back
to back, streamed and non-streamed completions and chat completions with several system prompts
(so prefix affinity and the in-flight ledger move). Every 30 s one server in turn misbehaves for
10 s: it answers every request 500, then (next cycle) holds every request without answering, then
resets every connection before a byte of response. Those are the faults a gateway can hide from
clients (retry before the first byte, first-byte timeout, outlier ejection); a server dying in the
middle of a stream cannot be hidden and has its own tests (``test_gateway_failures.py``).

Asserted: no request is lost, i.e. every request ends with a complete 200 (a JSON body with
usage, or an SSE stream ending in ``[DONE]``) or with an error status whose body carries a
message, never with a connection error, a client timeout or a truncated 200; and the ``kvroute
serve`` process's resident memory at the end is under 110 % of its value after the warm-up (the
first tenth of the run, at least 20 s). The figures are printed (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_S = float(os.environ.get("KVROUTE_SOAK_S", "600"))
CLIENTS = 8
FAULT_PERIOD_S = 30.0
FAULT_S = 10.0
SYSTEMS = [f"You are assistant {i}. " + "Answer briefly and precisely. " * 20 for i in range(4)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _request(rng: random.Random, i: int) -> tuple[str, dict[str, object]]:
    stream = rng.random() < 0.5
    system = rng.choice(SYSTEMS)
    body: dict[str, object] = {"model": "base", "max_tokens": rng.randint(1, 16), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.5:
        body["prompt"] = f"{system}question {i}"
        return "/v1/completions", body
    body["messages"] = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"question {i}"},
    ]
    return "/v1/chat/completions", body


def _outcome(status: int, text: str, stream: bool) -> str:
    """'ok', 'error' (an error status with a message) or 'lost: why'."""
    if status == 200:
        if stream:
            return "ok" if text.rstrip().endswith("data: [DONE]") else "lost: truncated stream"
        try:
            doc = json.loads(text)
        except ValueError:
            return "lost: truncated JSON"
        return "ok" if "usage" in doc else "lost: no usage"
    return "error" if text.strip() else f"lost: {status} without a message"


async def _client(
    c: httpx.AsyncClient, seed: int, stop_at: float, results: Counter[str], statuses: Counter[int]
) -> None:
    rng = random.Random(seed)
    i = 0
    while time.monotonic() < stop_at:
        i += 1
        path, body = _request(rng, seed * 1_000_000 + i)
        try:
            async with c.stream("POST", path, json=body) as r:
                text = (await r.aread()).decode()
            statuses[r.status_code] += 1
            results[_outcome(r.status_code, text, bool(body["stream"]))] += 1
        except httpx.HTTPError as exc:
            results[f"lost: {type(exc).__name__}"] += 1


async def _faults(servers: list[MiniModelServer], stop_at: float, log: list[str]) -> None:
    """Every FAULT_PERIOD_S, the next server misbehaves for FAULT_S: 500s, hang, resets."""
    kinds = ("error", "hang", "reset")
    n = 0
    while True:
        await asyncio.sleep(FAULT_PERIOD_S - FAULT_S)
        if time.monotonic() + FAULT_S > stop_at:
            return
        server, kind = servers[n % len(servers)], kinds[n % len(kinds)]
        n += 1
        log.append(f"{server.name}:{kind}")
        if kind == "error":
            server.error_status = 500
        elif kind == "hang":
            server._release = asyncio.Event()
            server.hang = True
        else:
            server.reset_requests = True
        await asyncio.sleep(FAULT_S)
        server.error_status, server.hang, server.reset_requests = None, False, False
        server._release.set()  # held requests are answered 503 now


@pytest.mark.timeout(SOAK_S + 240)
async def test_soak_mixed_traffic_with_faults_loses_nothing_and_memory_stays_flat(
    tmp_path: Path,
) -> None:
    servers = [MiniModelServer(f"s{i}", token_delay_s=0.01, tokens=16) for i in range(3)]
    async with mini_pool(servers):
        port = _free_port()
        args = ["serve", "--port", str(port), "--metrics-port", "0", "--log-dir", str(tmp_path)]
        for s in servers:
            args += ["--endpoint", s.url]
        log_file = (tmp_path / "serve.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvroute.cli", *args, stdout=log_file, stderr=log_file
        )
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                for _ in range(600):  # until the gateway answers
                    try:
                        r = await c.post("/v1/completions", json={"model": "base", "prompt": "x"})
                        if r.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
                start = time.monotonic()
                stop_at = start + SOAK_S
                results: Counter[str] = Counter()
                statuses: Counter[int] = Counter()
                fault_log: list[str] = []
                tasks = [
                    asyncio.create_task(_client(c, k + 1, stop_at, results, statuses))
                    for k in range(CLIENTS)
                ]
                faults = asyncio.create_task(_faults(servers, stop_at, fault_log))
                await asyncio.sleep(max(20.0, SOAK_S / 10))
                rss_warm = _rss_kib(proc.pid)
                await asyncio.gather(*tasks)
                faults.cancel()
                rss_end = _rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            log_file.close()
    total = sum(results.values())
    lost = {k: v for k, v in results.items() if k.startswith("lost")}
    print(
        f"\nsoak {SOAK_S:.0f} s: {total} requests ({total / SOAK_S:.1f}/s), outcomes "
        f"{dict(results)}, statuses {dict(statuses)}, faults {fault_log}; serve RSS "
        f"{rss_warm / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB at the end "
        f"({100 * (rss_end / rss_warm - 1):+.1f}%)"
    )
    assert total > CLIENTS * 10
    assert SOAK_S < 3 * FAULT_PERIOD_S or len(fault_log) >= 3
    assert not lost, lost
    assert rss_end < 1.10 * rss_warm, (rss_warm, rss_end)
