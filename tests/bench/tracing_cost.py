"""Live benchmark: EPP CPU per request with tracing off, at 1 % and 100 % sampling, and with the
live pool page open.

Run (about 2 minutes; figures go to ``docs/benchmarks.md``)::

    .venv/bin/python -m tests.bench.tracing_cost --out .kvroute/tracing-cost.json

Processes, all on loopback: two no-compute model servers (``MiniModelServer``) in one child, an
OTLP/gRPC receiver (``tests.integration.otlp_receiver``) in another, ``kvroute serve`` in a
third (Envoy is its child; with tracing on Envoy exports its own spans too), and this process as
the open-loop load generator (and, for the page run, the page's SSE client). EPP CPU is read from
``/proc/<kvroute serve pid>/stat`` before and after each run, minus its idle burn measured just
before (without the page), divided by the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.gateway_overhead import (
    _children,
    _cpu_seconds,
    _free_port,
    _pct,
    _wait_port,
    backends,
    load,
)


async def _run_receiver(port: int) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    from tests.integration.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    while True:
        await asyncio.sleep(2)
        print(f"spans {len(receiver.spans)}", flush=True)
        receiver.spans.clear()


@contextlib.contextmanager
def receiver() -> Any:
    port = _free_port()
    code = (
        "import asyncio; from tests.bench.tracing_cost import _run_receiver;"
        f"asyncio.run(_run_receiver({port}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Served:
    url: str
    metrics: str
    pid: int


@contextlib.contextmanager
def serve(endpoints: Sequence[str], extra: Sequence[str], log_dir: Path) -> Any:
    port = _free_port()
    cmd = [sys.executable, "-m", "kvroute.cli", "serve", "--port", str(port)]
    cmd += ["--metrics-port", "0", "--log-dir", str(log_dir), *extra]
    for e in endpoints:
        cmd += ["--endpoint", e]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise RuntimeError("kvroute serve did not start")
        info = proc.stdout.readline()
        metrics = info.split("metrics :", 1)[1].split("/", 1)[0]
        _children(proc.pid)
        yield Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class CostResult:
    config: str
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    epp_idle_cpu_per_s: float
    epp_cpu_ms_per_req: float
    page_events: int = 0


async def _watch_page(url: str, stop: asyncio.Event) -> int:
    events = 0
    async with aiohttp.ClientSession() as s, s.get(url + "/pool/events") as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                events += 1
            if stop.is_set():
                break
    return events


async def measure(name: str, gw: Served, rps: float, duration: float, page: bool) -> CostResult:
    await asyncio.sleep(1.0)
    c0, t0 = _cpu_seconds(gw.pid), time.monotonic()
    await asyncio.sleep(3.0)
    idle = (_cpu_seconds(gw.pid) - c0) / (time.monotonic() - t0)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_page(gw.metrics, stop)) if page else None
    if watcher is not None:
        await asyncio.sleep(1.0)  # the page is open before the load starts
    c0, t0 = _cpu_seconds(gw.pid), time.monotonic()
    lat, errors, _wall = await load(gw.url, rps, duration, "hello " * 8, 0, random.Random(7))
    cpu = _cpu_seconds(gw.pid) - c0 - idle * (time.monotonic() - t0)
    events = 0
    if watcher is not None:
        stop.set()
        events = await asyncio.wait_for(watcher, 10)
    n = len(lat) + errors
    return CostResult(
        name, rps, n, errors, _pct(lat, 0.5), _pct(lat, 0.99), round(idle, 4),
        round(1000 * cpu / max(1, n), 3), events,
    )  # fmt: skip


async def main(args: argparse.Namespace) -> list[CostResult]:
    results = []
    log_dir = Path(args.log_dir)
    with backends(2, 0.0) as eps, receiver() as otlp:
        configs: list[tuple[str, list[str], bool]] = [
            ("tracing off", [], False),
            ("tracing 1 %", ["--tracing", "--tracing-endpoint", otlp,
                             "--tracing-sampling-ratio", "0.01"], False),
            ("tracing 100 %", ["--tracing", "--tracing-endpoint", otlp,
                               "--tracing-sampling-ratio", "1"], False),
            ("tracing off, live page open", [], True),
        ]  # fmt: skip
        for _round in range(args.rounds):
            for name, extra, page in configs:
                with serve(eps, extra, log_dir) as gw:
                    r = await measure(name, gw, args.rps, args.duration, page)
                print(json.dumps(asdict(r)), flush=True)
                results.append(r)
    return results


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rps", type=float, default=100.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--log-dir", default=".kvroute")
    p.add_argument("--out", default=".kvroute/tracing-cost.json")
    args = p.parse_args(argv)
    results = asyncio.run(main(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
