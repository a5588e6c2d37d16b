"""Live benchmark: what the gateway (Envoy + kvroute's EPP) adds over calling a server directly.

Run (takes ~2-4 minutes; figures go to ``docs/benchmarks.md``)::

    .venv/bin/python -m tests.bench.gateway_overhead --out .kvroute/gateway-overhead.json

Processes, all on loopback: the model servers (``MiniModelServer`` from the integration
fixtures: no compute, so the figures are the gateway's own cost) run in one child process;
``kvroute serve`` runs in another (its Envoy is a grandchild); this process is the open-loop load
generator (Poisson arrivals). EPP CPU is read from ``/proc/<kvroute serve pid>/stat`` and Envoy
CPU from its child's, before and after each run, so each is per request and net of the client.

Measured: latency p50/p99 through the gateway vs directly to one server at several request
rates, small (~40 B) and 100 KB prompts; the highest rate the gateway sustains with 0 errors
(achieved >= 95 % of offered, p99 < 1 s); EPP CPU per request; ``full`` vs ``light`` response
processing on 64-token streamed responses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

CLK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(t) for t in text)
    return out


async def _run_backends(ports: Sequence[int], token_delay: float) -> None:
    from tests.integration.conftest import MiniModelServer, mini_pool

    servers = [
        MiniModelServer(f"b{i}", port=p, token_delay_s=token_delay) for i, p in enumerate(ports)
    ]
    async with mini_pool(servers):
        await asyncio.Event().wait()


@contextlib.contextmanager
def backends(n: int, token_delay: float) -> Any:
    ports = [_free_port() for _ in range(n)]
    code = (
        "import asyncio,sys; from tests.bench.gateway_overhead import _run_backends;"
        f"asyncio.run(_run_backends({ports!r}, {token_delay}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path.cwd())
    try:
        _wait_port(ports[-1])
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


@dataclass
class GatewayProc:
    url: str
    pid: int
    envoy_pid: int

    def cpu(self) -> tuple[float, float]:
        return _cpu_seconds(self.pid), _cpu_seconds(self.envoy_pid)


@contextlib.contextmanager
def gateway(endpoints: Sequence[str], mode: str, log_dir: Path) -> Any:
    port = _free_port()
    cmd = [sys.executable, "-m", "kvroute.cli", "serve", "--port", str(port)]
    # "tap-grpc": tap with the report over gRPC (before issue 19's request-half work).
    # "lua": tap responses, requests routed by Envoy's Lua filter (--transport lua, no ext_proc).
    processing, _, report = ("tap", "", "") if mode == "lua" else mode.partition("-")
    cmd += ["--metrics-port", "0", "--response-processing", processing, "--log-dir", str(log_dir)]
    if report:
        cmd += ["--tap-report", report]
    cmd += ["--transport", "lua" if mode == "lua" else "ext_proc"]  # serve's default is auto
    for e in endpoints:
        cmd += ["--endpoint", e]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"kvroute serve did not start: {line!r}")
        proc.stdout.readline()
        (envoy_pid,) = _children(proc.pid)
        yield GatewayProc(f"http://127.0.0.1:{port}", proc.pid, envoy_pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class RunResult:
    target: str
    prompt_bytes: int
    stream: bool
    offered_rps: float
    achieved_rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    epp_cpu_ms_per_req: float | None = None
    envoy_cpu_ms_per_req: float | None = None


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def load(
    url: str,
    rps: float,
    duration: float,
    prompt: str,
    tokens: int,
    rng: random.Random,
) -> tuple[list[float], int, float]:
    """Open-loop Poisson load; returns latencies (s), error count and wall time.

    ``tokens`` > 0 asks for a streamed response of that many tokens (one SSE event each, spaced
    by the servers' token delay); 0 asks for a non-streamed answer with no generation time.
    """
    body = json.dumps(
        {"model": "base", "prompt": prompt, "stream": tokens > 0, "max_tokens": tokens or 0}
        | ({"stream_options": {"include_usage": True}} if tokens > 0 else {})
    )
    lat: list[float] = []
    errors = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.post(
                url + "/v1/completions", data=body, headers={"content-type": "application/json"}
            ) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        lat.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = []
        start = time.perf_counter()
        t = start
        while t - start < duration:
            t += rng.expovariate(rps)
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return lat, errors, wall


async def idle_cpu_rate(gw: GatewayProc, seconds: float = 3.0) -> tuple[float, float]:
    """CPU seconds per second the EPP and Envoy burn with no traffic (metrics scraping, timers),
    subtracted from the loaded runs so per-request figures are the requests' own cost."""
    c0 = gw.cpu()
    await asyncio.sleep(seconds)
    c1 = gw.cpu()
    return (c1[0] - c0[0]) / seconds, (c1[1] - c0[1]) / seconds


async def measure(
    name: str,
    url: str,
    rps: float,
    duration: float,
    prompt_bytes: int,
    tokens: int,
    gw: GatewayProc | None = None,
    idle: tuple[float, float] = (0.0, 0.0),
) -> RunResult:
    prompt = "x" * prompt_bytes
    rng = random.Random(7)
    await load(url, min(rps, 50), 1.0, prompt, tokens, rng)  # warm connections and caches
    cpu0 = gw.cpu() if gw else (0.0, 0.0)
    lat, errors, wall = await load(url, rps, duration, prompt, tokens, rng)
    cpu1 = gw.cpu() if gw else (0.0, 0.0)
    n = len(lat) + errors
    res = RunResult(
        target=name,
        prompt_bytes=prompt_bytes,
        stream=tokens > 0,
        offered_rps=rps,
        achieved_rps=round(len(lat) / wall, 1),
        requests=n,
        errors=errors,
        p50_ms=round(_pct(lat, 0.5), 2),
        p99_ms=round(_pct(lat, 0.99), 2),
    )
    if gw is not None and n:
        epp = cpu1[0] - cpu0[0] - idle[0] * wall
        envoy = cpu1[1] - cpu0[1] - idle[1] * wall
        res.epp_cpu_ms_per_req = round(max(0.0, epp) * 1000 / n, 3)
        res.envoy_cpu_ms_per_req = round(max(0.0, envoy) * 1000 / n, 3)
    print(json.dumps(asdict(res)), flush=True)
    return res


async def main(args: argparse.Namespace) -> list[RunResult]:
    out: list[RunResult] = []
    log_dir = Path(".kvroute")
    dur = args.duration
    with backends(2, token_delay=args.token_delay) as eps:
        for mode in ("full", "light"):
            with gateway(eps, mode, log_dir) as gw:
                await asyncio.sleep(0.5)
                idle = await idle_cpu_rate(gw)
                print(f"idle CPU ({mode}): EPP {idle[0]:.3f} s/s, Envoy {idle[1]:.3f} s/s")
                if mode == "full":
                    for prompt_bytes in (40, 100_000):
                        for rps in args.rates:
                            d = await measure("direct", eps[0], rps, dur, prompt_bytes, 0)
                            g = await measure(
                                "gateway", gw.url, rps, dur, prompt_bytes, 0, gw, idle
                            )
                            out += [d, g]
                    # the highest sustained rate, small prompts, non-streaming
                    for rps in args.ramp:
                        r = await measure("ramp", gw.url, rps, dur, 40, 0, gw, idle)
                        out.append(r)
                        if r.errors or r.achieved_rps < 0.95 * rps or r.p99_ms > 1000:
                            break
                for rps in args.stream_rates:
                    name = f"gateway-{mode}"
                    out.append(await measure(name, gw.url, rps, dur, 40, args.tokens, gw, idle))
        for rps in args.stream_rates:
            out.append(await measure("direct", eps[0], rps, dur, 40, args.tokens))
    return out


async def compare(args: argparse.Namespace) -> list[RunResult]:
    """Issue 19: the response-processing modes in one run, same load, each in its own gateway.

    Per mode: non-streamed small prompts at ``--rates`` (with a direct run before each, for the
    added latency), streamed answers at ``--stream-rates``, and the ramp for ``--ramp-modes``.
    """
    out: list[RunResult] = []
    log_dir = Path(".kvroute")
    dur = args.duration
    with backends(2, token_delay=args.token_delay) as eps:
        for mode in args.modes:
            with gateway(eps, mode, log_dir) as gw:
                await asyncio.sleep(0.5)
                idle = await idle_cpu_rate(gw)
                print(f"idle CPU ({mode}): EPP {idle[0]:.3f} s/s, Envoy {idle[1]:.3f} s/s")
                for rps in args.rates:
                    out.append(await measure("direct", eps[0], rps, dur, 40, 0))
                    out.append(await measure(f"json-{mode}", gw.url, rps, dur, 40, 0, gw, idle))
                for rps in args.stream_rates:
                    name = f"sse-{mode}"
                    out.append(await measure(name, gw.url, rps, dur, 40, args.tokens, gw, idle))
                if mode in args.ramp_modes:
                    for rps in args.ramp:
                        r = await measure(f"ramp-{mode}", gw.url, rps, dur, 40, 0, gw, idle)
                        out.append(r)
                        if r.errors or r.achieved_rps < 0.95 * rps or r.p99_ms > 1000:
                            break
        for rps in args.stream_rates:
            out.append(await measure("direct", eps[0], rps, dur, 40, args.tokens))
    return out


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[10, 50, 100])
    p.add_argument("--ramp", type=float, nargs="+", default=[100, 200, 300, 400, 500, 600, 800])
    p.add_argument("--stream-rates", type=float, nargs="+", default=[20, 50])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--tokens", type=int, default=64, help="tokens per streamed response")
    p.add_argument("--token-delay", type=float, default=0.005, help="seconds between tokens")
    p.add_argument("--out", type=Path, default=Path(".kvroute/gateway-overhead.json"))
    p.add_argument(
        "--compare",
        action="store_true",
        help="issue 19: compare --modes (full, light, tap) in one run instead",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["full", "light", "tap"],
        help="response processing per gateway; tap-grpc / tap-http also pick --tap-report; "
        "lua: tap with --transport lua",
    )
    p.add_argument("--ramp-modes", nargs="*", default=["full", "tap"])
    args = p.parse_args(argv)
    results = asyncio.run(compare(args) if args.compare else main(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
