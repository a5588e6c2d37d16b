"""``kvroute bench autoscale``: the arguments, the runs and the output files.

Example (the figures in ``docs/benchmarks.md``)::

    kvroute bench autoscale --trace-shape diurnal --accelerator l4 --peak-qps 40 \\
        --scaler gpu-busy=0.6,0.8,0.9 --scaler queue=0.5,2,8 --scaler kv=0.3,0.5,0.7 \\
        --scaler running=16,32,64 --out docs/results/autoscale-diurnal
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

DEFAULT_SCALERS = ("gpu-busy=0.6,0.8,0.9", "queue=0.5,2,8", "kv=0.3,0.5,0.7", "running=16,32,64")


def add_parser(sub: Any) -> None:
    a = sub.add_parser("autoscale", help="virtual-time pool resized by an HPA; signals compared")
    a.add_argument("--workload", default="sharegpt", help="request-shape preset")
    a.add_argument("--param", action="append", help="workload parameter key=value")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--profile", default="h100-llama3-8b", help="kvroute_sim engine profile")
    a.add_argument("--accelerator", default="l4", help="accelerator of every replica")
    a.add_argument("--trace-shape", choices=("diurnal", "bursty"), default="diurnal")
    a.add_argument("--peak-qps", type=float, default=40.0)
    a.add_argument("--duration", type=float, default=1200.0, help="arrival seconds")
    a.add_argument("--period", type=float, help="diurnal period (default: --duration)")
    a.add_argument(
        "--scaler",
        action="append",
        help="SIGNAL=TARGET[,TARGET...] (repeatable); signals: gpu-busy, queue, kv, running",
    )
    a.add_argument("--router", default="least-requests", help="least-requests, p2c, round-robin")
    a.add_argument("--initial-replicas", type=int, default=2)
    a.add_argument("--min-replicas", type=int, default=2)
    a.add_argument("--max-replicas", type=int, default=20)
    a.add_argument("--startup", default="60,180", help="start-up delay range MIN,MAX seconds")
    a.add_argument("--sync-period", type=float, default=15.0)
    a.add_argument("--tolerance", type=float, default=0.1)
    a.add_argument("--scale-up-window", type=float, default=0.0)
    a.add_argument("--scale-down-window", type=float, default=300.0)
    a.add_argument("--scale-up-pods", type=int, default=4)
    a.add_argument("--scale-up-percent", type=float, default=100.0)
    a.add_argument("--slo-ttft", type=float, default=1.0)
    a.add_argument("--goal", type=float, default=0.99, help="SLO attainment to reach")
    a.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")


def parse_scalers(items: list[str]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in items:
        name, sep, targets = item.partition("=")
        if not sep or not targets.strip():
            raise SystemExit(f"--scaler wants SIGNAL=TARGET[,TARGET...], got {item!r}")
        out += [(name.strip(), float(t)) for t in targets.split(",") if t.strip()]
    return out


def run_autoscale_command(args: argparse.Namespace) -> int:
    from kvroute_bench.autoscale import (
        ROUTERS,
        ScalerConfig,
        TraceSpec,
        run_autoscaled,
        signal_fn,
        trace_requests,
    )
    from kvroute_bench.autoscale_report import markdown, plot, write_json
    from kvroute_bench.cli import _kv
    from kvroute_bench.hpa import HpaSpec
    from kvroute_bench.sim_replica import replica_config
    from kvroute_bench.sweep import make_router
    from kvroute_bench.workload import resolve_spec
    from kvroute_sim.accelerators import on_accelerator

    if args.router not in ROUTERS:
        raise SystemExit(f"--router must be one of {', '.join(ROUTERS)}")
    scalers = parse_scalers(args.scaler or list(DEFAULT_SCALERS))
    for name, _t in scalers:
        try:
            signal_fn(name)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    lo, _, hi = args.startup.partition(",")
    startup = (float(lo), float(hi or lo))
    trace = TraceSpec(
        shape=args.trace_shape,
        peak_qps=args.peak_qps,
        duration=args.duration,
        period=args.period or args.duration,
    )
    workload = resolve_spec(args.workload, _kv(args.param))
    engine = on_accelerator(replica_config(args.profile), args.accelerator)
    requests = trace_requests(trace, workload, args.seed)
    results = []
    for name, target in scalers:
        hpa = HpaSpec(
            target=target,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            tolerance=args.tolerance,
            sync_period=args.sync_period,
            scale_up_window=args.scale_up_window,
            scale_down_window=args.scale_down_window,
            scale_up_pods=args.scale_up_pods,
            scale_up_percent=args.scale_up_percent,
        )
        scaler = ScalerConfig(
            name,
            hpa,
            initial_replicas=args.initial_replicas,
            startup_min=startup[0],
            startup_max=startup[1],
            slo_ttft=args.slo_ttft,
        )
        r = run_autoscaled(requests, engine, make_router(args.router, args.seed), scaler,
                           seed=args.seed)  # fmt: skip
        results.append(r)
        print(
            f"{r.label:>16}: {r.slo_attainment:7.2%} in SLO, p90 TTFT {r.ttft_p90:7.2f} s, "
            f"{r.replica_hours:6.2f} replica-h, peak {r.peak_replicas}",
            file=sys.stderr,
            flush=True,
        )
    command = "kvroute bench autoscale " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    text = markdown(results, args.goal, args.slo_ttft, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": command, "requests": len(requests), "trace": asdict(trace)}
        write_json(args.out.with_suffix(".json"), results, meta)
        args.out.with_suffix(".md").write_text(text)
        plot(args.out.with_suffix(".png"), results, trace, args.goal, args.slo_ttft)
    return 0
