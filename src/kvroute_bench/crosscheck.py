"""The live cross-check: the same workload live (real HTTP, real Envoy + EPP, real-time simulated
servers) and in virtual time, round-robin against kvroute, side by side.

Live, in three processes: the simulated servers run in a child process (their engine loops must
not share an event loop with the EPP), the gateway (EPP in this process, Envoy as its child)
routes with kvroute's default profile, and the load generator runs here. The round-robin phase
sends the same requests client-side round-robin straight to the servers, which is what a plain
Kubernetes Service does. Each phase gets freshly started servers. The servers use the ``slow``
profile (every step x10) so that real time on a shared 2-core machine stays honest.

Virtual: the same requests through :func:`~kvroute_bench.sweep.run_sweep` with the same engine
profile, replica count and policies. The report compares each metric's RR/kvroute ratio across
the two modes: they should agree in direction and rough size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import aiohttp

from kvroute_bench.cluster import RunConfig
from kvroute_bench.live import LiveOptions, run_live, summarize_live
from kvroute_bench.metrics import Slo, StageMetrics
from kvroute_bench.workload import BenchRequest, WorkloadSpec, generate

COMPARE = ("ttft_p50", "ttft_p90", "ntpot_p90", "e2e_p90", "output_tok_s")


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _serve(ports: Sequence[int], profile: str, stop: MpEvent) -> None:
    """Child process: run one simulated server per port until ``stop`` is set."""
    from kvroute_sim.config import load_server_config
    from kvroute_sim.server.app import SimServer

    async def main() -> None:
        servers = [
            SimServer(load_server_config(profile=profile), name=f"sim-{i}", port=p)
            for i, p in enumerate(ports)
        ]
        for s in servers:
            await s.start()
        # A multiprocessing Event cannot be awaited; wait for it on a thread.
        await asyncio.to_thread(stop.wait)
        for s in servers:
            await s.stop()

    asyncio.run(main())


async def _wait_healthy(urls: Sequence[str], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        for url in urls:
            while True:
                try:
                    async with session.get(f"{url}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} did not become healthy")
                await asyncio.sleep(0.1)


class _Servers:
    """Simulated servers in a child process (context manager)."""

    def __init__(self, n: int, profile: str) -> None:
        self.ports = _free_ports(n)
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(self.ports, profile, self._stop))

    async def __aenter__(self) -> _Servers:
        self._proc.start()
        await _wait_healthy(self.urls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.terminate()


async def live_phase(
    policy: str, requests: Sequence[BenchRequest], n: int, profile: str, options: LiveOptions
) -> StageMetrics:
    async with _Servers(n, profile) as servers:
        if policy == "round-robin":
            opts = LiveOptions(
                urls=tuple(servers.urls),
                model=options.model,
                timeout=options.timeout,
                duration=options.duration,
                max_requests=options.max_requests,
            )
            records, end = await run_live(requests, opts)
        else:
            from kvroute.config.extproc_options import ResponseProcessing
            from kvroute.gateway.gateway import Gateway

            async with Gateway(servers.urls, response_processing=ResponseProcessing.LIGHT) as gw:
                opts = LiveOptions(
                    urls=(gw.url,),
                    model=options.model,
                    timeout=options.timeout,
                    duration=options.duration,
                    max_requests=options.max_requests,
                )
                records, end = await run_live(requests, opts)
    m = summarize_live(records, qps=0.0, end=end, window=options.duration, slo=Slo())
    m.policy = policy
    return m


def virtual_phase(
    workload: WorkloadSpec, n: int, profile: str, qps: float, duration: float, seed: int
) -> dict[str, StageMetrics]:
    from kvroute_bench.sim_replica import replica_config
    from kvroute_bench.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        workload=workload,
        engine=replica_config(profile),
        replicas=n,
        policies=("round-robin", "kvroute"),
        qps=(qps,),
        duration=duration,
        seed=seed,
        run=RunConfig(warmup=0.0, drain=120.0),
    )
    return run_sweep(spec)[0].by_policy


def compare(live: dict[str, StageMetrics], virtual: dict[str, StageMetrics]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for key in COMPARE:
        row: dict[str, Any] = {}
        for mode, ms in (("live", live), ("virtual", virtual)):
            rr, kv = getattr(ms["round-robin"], key), getattr(ms["kvroute"], key)
            row[mode] = {
                "round-robin": rr,
                "kvroute": kv,
                "rr_over_kvroute": rr / kv if kv else None,
            }
        rows[key] = row
    return rows


def run_crosscheck_command(args: argparse.Namespace) -> int:
    from kvroute_bench.workload import resolve_spec

    params = dict(kv.split("=", 1) for kv in (args.param or []))
    workload = resolve_spec(args.workload, params)
    requests = generate(workload, rate=args.qps, duration=args.duration, seed=args.seed)
    options = LiveOptions(urls=(), duration=args.duration, timeout=args.timeout, max_requests=10**9)
    live = {
        p: asyncio.run(live_phase(p, requests, args.replicas, args.profile, options))
        for p in ("round-robin", "kvroute")
    }
    virtual = virtual_phase(
        workload, args.replicas, args.profile, args.qps, args.duration, args.seed
    )
    out = {
        "meta": {
            "workload": args.workload,
            "params": params,
            "replicas": args.replicas,
            "profile": args.profile,
            "qps": args.qps,
            "duration_s": args.duration,
            "seed": args.seed,
            "requests": len(requests),
        },
        "live": {k: v.to_json() for k, v in live.items()},
        "virtual": {k: v.to_json() for k, v in virtual.items()},
        "comparison": compare(live, virtual),
    }
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.with_suffix(".json").write_text(text + "\n")
    print(json.dumps(out["comparison"], indent=1))
    return 0
