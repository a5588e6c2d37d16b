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
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aiohttp

from kvroute_bench.cluster import RunConfig
from kvroute_bench.live import LiveOptions, run_live, summarize_live
from kvroute_bench.metrics import Slo, StageMetrics
from kvroute_bench.predictor_error import PredictorProbe, latency_scorer_config
from kvroute_bench.workload import BenchRequest, WorkloadSpec, generate
from kvroute_sim.config import EngineConfig, ServerConfig

COMPARE = ("ttft_p50", "ttft_p90", "ttft_p99", "ntpot_p90", "e2e_p90", "output_tok_s")


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


def _serve(ports: Sequence[int], servers: Sequence[ServerConfig], stop: MpEvent) -> None:
    """Child process: run one simulated server per port until ``stop`` is set."""
    from kvroute_sim.server.app import SimServer

    async def main() -> None:
        sims = [
            SimServer(cfg, name=f"sim-{i}", port=p)
            for i, (p, cfg) in enumerate(zip(ports, servers, strict=True))
        ]
        for s in sims:
            await s.start()
        # A multiprocessing Event cannot be awaited; wait for it on a thread.
        await asyncio.to_thread(stop.wait)
        for s in sims:
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


@dataclass(frozen=True, slots=True)
class Setup:
    """What both modes share: one engine per replica (accelerator applied), the adapters the
    live servers must serve, and the EPP's configuration (``None``: kvroute's default)."""

    engines: tuple[EngineConfig, ...]
    loras: tuple[str, ...] = ()
    config_text: str | None = None
    response_processing: str = "light"

    def server_configs(self) -> list[ServerConfig]:
        return [ServerConfig(engine=e, loras=self.loras) for e in self.engines]


def make_setup(
    profile: str,
    replicas: int,
    *,
    engine_overrides: dict[str, Any] | None = None,
    accelerators: Sequence[str] = (),
    requests: Sequence[BenchRequest] = (),
    config_text: str | None = None,
    response_processing: str = "light",
) -> Setup:
    """Per-replica engines exactly as :class:`~kvroute_bench.sweep.SweepSpec` builds them."""
    from kvroute_bench.sim_replica import replica_config
    from kvroute_bench.sweep import SweepSpec

    spec = SweepSpec(
        workload=WorkloadSpec(),
        engine=replica_config(profile, engine_overrides),
        replicas=replicas,
        policies=(),
        qps=(),
        duration=0.0,
        accelerators=tuple(accelerators),
    )
    loras = tuple(sorted({r.adapter for r in requests if r.adapter}))
    return Setup(tuple(spec.replica_configs()), loras, config_text, response_processing)


class _Servers:
    """Simulated servers in a child process (context manager)."""

    def __init__(self, servers: Sequence[ServerConfig]) -> None:
        self.ports = _free_ports(len(servers))
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(self.ports, list(servers), self._stop))

    async def __aenter__(self) -> _Servers:
        self._proc.start()
        await _wait_healthy(self.urls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.terminate()


@dataclass(slots=True)
class LivePhase:
    metrics: StageMetrics
    predictor: dict[str, Any] | None = None  # the EPP's TTFT prediction error, when it has one


async def live_phase(
    policy: str,
    requests: Sequence[BenchRequest],
    setup: Setup,
    options: LiveOptions,
    *,
    predictor_after: float = 60.0,
) -> LivePhase:
    predictor: dict[str, Any] | None = None
    async with _Servers(setup.server_configs()) as servers:
        if policy == "round-robin":
            opts = replace(options, urls=tuple(servers.urls))
            records, end = await run_live(requests, opts)
        else:
            from kvroute.embed.gateway import Gateway, ResponseProcessing

            probe = PredictorProbe()
            gw = Gateway(
                servers.urls,
                config_text=setup.config_text,
                response_processing=ResponseProcessing(setup.response_processing),
                backend_factory=probe.factory,
            )
            async with gw:
                mark = asyncio.create_task(_mark_later(probe, predictor_after))
                try:
                    records, end = await run_live(requests, replace(options, urls=(gw.url,)))
                finally:
                    mark.cancel()
                predictor = probe.report()
    m = summarize_live(records, qps=0.0, end=end, window=options.duration, slo=Slo())
    m.policy = policy
    return LivePhase(m, predictor)


async def _mark_later(probe: PredictorProbe, after: float) -> None:
    await asyncio.sleep(after)
    probe.mark()


def virtual_phase(
    workload: WorkloadSpec,
    n: int,
    profile: str,
    qps: float,
    duration: float,
    seed: int,
    *,
    engine_overrides: dict[str, Any] | None = None,
    accelerators: Sequence[str] = (),
    config_path: str | None = None,
) -> dict[str, StageMetrics]:
    """The same requests (same seed) on the same per-replica engines, in virtual time."""
    from kvroute_bench.sim_replica import replica_config
    from kvroute_bench.sweep import SweepSpec, run_sweep

    kv = f"config:{config_path}" if config_path else "kvroute"
    spec = SweepSpec(
        workload=workload,
        engine=replica_config(profile, engine_overrides),
        replicas=n,
        policies=("round-robin", kv),
        qps=(qps,),
        duration=duration,
        seed=seed,
        run=RunConfig(warmup=0.0, drain=120.0),
        accelerators=tuple(accelerators),
    )
    by = run_sweep(spec)[0].by_policy
    return {"round-robin": by["round-robin"], "kvroute": by[kv]}


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


TABLE_ROWS = (
    ("TTFT p50 (s)", "ttft_p50"),
    ("TTFT p90 (s)", "ttft_p90"),
    ("TTFT p99 (s)", "ttft_p99"),
    ("NTPOT p90 (ms/token)", "ntpot_p90"),
    ("e2e p90 (s)", "e2e_p90"),
)


def markdown_table(comparison: dict[str, Any]) -> str:
    """Live RR, live kvroute, ratio, virtual RR, virtual kvroute, ratio, and whether the two
    ratios agree in direction (both > 1: kvroute better in both; both < 1: worse in both)."""
    lines = [
        "| metric | live RR | live kvroute | live RR/kv | virtual RR | virtual kvroute "
        "| virtual RR/kv | same direction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in TABLE_ROWS:
        row = comparison[key]
        scale = 1e3 if key == "ntpot_p90" else 1.0
        cells = [label]
        ratios = []
        for mode in ("live", "virtual"):
            m = row[mode]
            ratios.append(m["rr_over_kvroute"])
            cells += [f"{m['round-robin'] * scale:.3g}", f"{m['kvroute'] * scale:.3g}"]
            cells.append("n/a" if m["rr_over_kvroute"] is None else f"{m['rr_over_kvroute']:.2f}")
        a, b = ratios
        same = "n/a" if a is None or b is None else ("yes" if (a - 1) * (b - 1) > 0 else "no")
        cells.append(same)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _engine_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--engine: expected key=value, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run_crosscheck_command(args: argparse.Namespace) -> int:
    from kvroute_bench.workload import resolve_spec
    from kvroute_sim.accelerators import parse_pool

    params = dict(kv.split("=", 1) for kv in (args.param or []))
    workload = resolve_spec(args.workload, params)
    overrides = _engine_overrides(args.engine)
    pool_spec = args.pool if args.pool is not None else workload.pool
    accelerators = tuple(parse_pool(pool_spec, args.replicas)) if pool_spec else ()
    requests = generate(workload, rate=args.qps, duration=args.duration, seed=args.seed)
    config_text: str | None = None
    config_path: str | None = None
    if args.config is not None:
        config_path = str(args.config)
        config_text = args.config.read_text()
    elif args.latency_scorer:
        config_text = latency_scorer_config()
    setup = make_setup(
        args.profile,
        args.replicas,
        engine_overrides=overrides,
        accelerators=accelerators,
        requests=requests,
        config_text=config_text,
        response_processing=args.response_processing,
    )
    options = LiveOptions(urls=(), duration=args.duration, timeout=args.timeout, max_requests=10**9)
    policies = [p.strip() for p in args.live.split(",") if p.strip()]
    for p in policies:
        if p not in ("round-robin", "kvroute"):
            raise SystemExit(f"--live: unknown phase {p!r} (round-robin, kvroute)")
    live = {
        p: asyncio.run(
            live_phase(p, requests, setup, options, predictor_after=args.predictor_after)
        )
        for p in policies
    }
    virtual: dict[str, StageMetrics] = {}
    if not args.no_virtual:
        if config_text is not None and config_path is None:
            tmp = Path(args.out.with_suffix(".epp.yaml") if args.out else "crosscheck.epp.yaml")
            tmp.write_text(config_text)
            config_path = str(tmp)
        virtual = virtual_phase(
            workload,
            args.replicas,
            args.profile,
            args.qps,
            args.duration,
            args.seed,
            engine_overrides=overrides,
            accelerators=accelerators,
            config_path=config_path,
        )
    live_m = {k: v.metrics for k, v in live.items()}
    out: dict[str, Any] = {
        "meta": {
            "command": shlex.join(["kvroute", *sys.argv[1:]]),
            "workload": args.workload,
            "params": params,
            "engine_overrides": overrides,
            "accelerators": list(accelerators),
            "adapters": list(setup.loras),
            "replicas": args.replicas,
            "profile": args.profile,
            "qps": args.qps,
            "duration_s": args.duration,
            "seed": args.seed,
            "requests": len(requests),
            "epp_config": config_path or "kvroute default",
            "response_processing": args.response_processing,
        },
        "live": {k: v.to_json() for k, v in live_m.items()},
        "virtual": {k: v.to_json() for k, v in virtual.items()},
    }
    if "kvroute" in live and live["kvroute"].predictor is not None:
        out["predictor"] = live["kvroute"].predictor
    if len(live_m) == 2 and virtual:
        out["comparison"] = compare(live_m, virtual)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.with_suffix(".json").write_text(text + "\n")
    if "comparison" in out:
        table = markdown_table(out["comparison"])
        print(table)
        if args.out:
            args.out.with_suffix(".md").write_text(table + "\n")
    print(json.dumps({k: out[k] for k in ("comparison", "predictor") if k in out}, indent=1))
    return 0
