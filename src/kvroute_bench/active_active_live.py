"""Routed-request throughput and EPP CPU per request for 1, 2, 3 live EPP replicas (issue 17).

Starts ``kvroute sim`` (``--sim-servers`` servers, tiny profile) and ``kvroute serve
--epp-replicas N`` as child processes, drives ``--concurrency`` closed-loop clients of short
completions (``max_tokens`` 1, so the EPP's work dominates) through Envoy for ``--seconds``,
and reads the EPP processes' CPU time from ``/proc`` (Linux only): with N = 1 that is the serve
process (the EPP runs in it; Envoy is its own child and not counted), with N > 1 the N replica
processes. Everything -- client, Envoy, simulators, replicas -- shares this machine's cores, so
the figures are a ceiling of this box, not of the EPP.

``python -m kvroute_bench.active_active_live --replicas 1,2,3``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(c) for c in text)
    return out


def _epp_pids(serve: int, replicas: int) -> list[int]:
    if replicas == 1:
        return [serve]
    pids = []
    for child in _children(serve):
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"epp" in cmd and b"kvroute.cli" in cmd:
            pids.append(child)
    return pids


def _ready(proc: subprocess.Popen[str], pattern: str) -> list[str]:
    assert proc.stdout is not None
    found = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {pattern!r}")
        m = re.search(pattern, line)
        if m:
            found.append(m.group(1))
            return found


async def _load(url: str, concurrency: int, seconds: float) -> tuple[int, int]:
    ok = failed = 0
    stop = time.monotonic() + seconds

    async def client(c: httpx.AsyncClient, i: int) -> None:
        nonlocal ok, failed
        n = 0
        while time.monotonic() < stop:
            body = {"model": MODEL, "prompt": f"user {i} request {n} " * 20, "max_tokens": 1}
            try:
                r = await c.post(f"{url}/v1/completions", json=body)
                ok, failed = (ok + 1, failed) if r.status_code == 200 else (ok, failed + 1)
            except httpx.HTTPError:
                failed += 1
            n += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        await asyncio.gather(*(client(c, i) for i in range(concurrency)))
    return ok, failed


def measure(replicas: int, *, sim_servers: int, concurrency: int, seconds: float) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "kvroute.cli"]
    sim = subprocess.Popen(
        [*cli, "sim", "--servers", str(sim_servers), "--base-port", "0", "--profile", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    serve = None
    try:
        assert sim.stdout is not None
        urls = [re.search(r"ready (http://\S+)", sim.stdout.readline()) for _ in range(sim_servers)]
        endpoints = [f"--endpoint={m.group(1)}" for m in urls if m]
        log_dir = Path(".kvroute") / f"bench-aa-{replicas}"
        serve = subprocess.Popen(
            [*cli, "serve", "--port", "0", "--epp-replicas", str(replicas), "--log-dir",
             str(log_dir), *endpoints],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        (url,) = _ready(serve, r"ready at (http://\S+)")
        asyncio.run(_load(url, concurrency, 1.0))  # warm-up
        pids = _epp_pids(serve.pid, replicas)
        cpu0 = sum(_cpu_s(p) for p in pids)
        t0 = time.monotonic()
        ok, failed = asyncio.run(_load(url, concurrency, seconds))
        wall = time.monotonic() - t0
        cpu = sum(_cpu_s(p) for p in pids) - cpu0
        return (
            f"| {replicas} | {ok / wall:.0f} | {failed} | {cpu / wall:.2f} | "
            f"{1e3 * cpu / max(1, ok):.2f} |"
        )
    finally:
        for p in (serve, sim):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvroute_bench.active_active_live")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--sim-servers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    print(f"cores={os.cpu_count()} sim_servers={args.sim_servers} concurrency={args.concurrency}")
    print("| EPP replicas | routed req/s | failed | EPP CPU (cores) | EPP CPU ms / request |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.replicas.split(",")):
        print(measure(n, sim_servers=args.sim_servers, concurrency=args.concurrency,
                      seconds=args.seconds), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
