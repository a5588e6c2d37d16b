"""``kvroute bench``: ``cluster`` (virtual-time pool), ``live`` (load generator), ``plot``.

Examples::

    kvroute bench cluster --workload sharegpt --replicas 10 --saturation auto \\
        --load-fractions 0.1,0.5,0.9,1.0,1.1 --duration 60 --out docs/results/sharegpt
    kvroute bench cluster --workload multi-lora --param num_adapters=12 --engine max_loras=2 \\
        --qps-sweep 100,200 --policies round-robin,kvroute,oracle
    kvroute bench cluster --preset heterogeneous --load-fractions 0.5,1.0 \
        --policies round-robin,sglang-cache-aware,llm-d-token-aware,kvroute,oracle
    kvroute bench cluster --workload sharegpt --pool h100:5,l4:5 --load-fractions 0.5
    kvroute bench live --url http://127.0.0.1:8081 --workload sharegpt --qps 5 \\
        --max-requests 100 --duration 30
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from kvroute_bench.metrics import Slo


def _kv(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_mode", metavar="MODE", required=True)
    c = sub.add_parser("cluster", help="virtual-time pool of simulated engines, policy sweep")
    _workload_args(c)
    c.add_argument("--replicas", type=int, default=10)
    c.add_argument(
        "--policies",
        default="round-robin,least-requests,p2c,kvroute,oracle",
        help="comma list: random, round-robin, least-requests, p2c, sglang-cache-aware, "
        "llm-d-token-aware, kvroute, decision-tree, upstream-default, oracle, pooled, "
        "config:PATH",
    )
    c.add_argument(
        "--accelerator",
        action="append",
        help="accelerator per replica, cycled (repeatable; NAME or NAME:COUNT, comma lists too: "
        "h100, h200, a100, l4, mi300x); default: the preset's pool, else all --profile",
    )
    c.add_argument("--pool", help="accelerator pool spec, e.g. h100:4,a100:3,l4:3 (as above)")
    c.add_argument("--config", action="append", default=[], help="EndpointPickerConfig file")
    c.add_argument("--qps-sweep", help="offered loads, comma list (requests/s)")
    c.add_argument("--load-fractions", help="offered loads as fractions of --saturation")
    c.add_argument("--saturation", default="auto", help="pool saturation QPS, or 'auto'")
    c.add_argument("--duration", type=float, default=60.0, help="arrival seconds per stage")
    c.add_argument("--warmup", type=float, help="seconds excluded at the start (default 20%%)")
    c.add_argument("--drain", type=float, default=60.0, help="seconds allowed to finish")
    c.add_argument("--scrape-interval", type=float, default=0.05)
    c.add_argument("--profile", default="h100-llama3-8b", help="kvroute_sim engine profile")
    c.add_argument("--engine", action="append", help="engine override key=value (repeatable)")
    c.add_argument("--slo-ttft", type=float, default=1.0)
    c.add_argument("--slo-tpot", type=float, default=0.050)
    c.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")
    c.add_argument("--title")
    c.add_argument("--quiet", action="store_true")

    lv = sub.add_parser("live", help="open-loop streaming load against an OpenAI-compatible URL")
    _workload_args(lv)
    lv.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    lv.add_argument("--qps", type=float, required=True)
    lv.add_argument("--max-requests", type=int, default=200)
    lv.add_argument("--duration", type=float, default=30.0)
    lv.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    lv.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    lv.add_argument(
        "--round-robin",
        action="append",
        default=[],
        help="extra base URLs: spread requests client-side round-robin over --url and these",
    )
    lv.add_argument("--slo-ttft", type=float, default=1.0)
    lv.add_argument("--slo-tpot", type=float, default=0.050)
    lv.add_argument("--out", type=Path, help="write OUT.json")

    cc = sub.add_parser(
        "crosscheck", help="the same workload live (gateway vs client RR) and in virtual time"
    )
    _workload_args(cc)
    cc.add_argument("--replicas", type=int, default=4)
    cc.add_argument("--profile", default="slow", help="kvroute_sim profile of the servers")
    cc.add_argument("--qps", type=float, required=True)
    cc.add_argument("--duration", type=float, default=40.0)
    cc.add_argument("--timeout", type=float, default=180.0)
    cc.add_argument(
        "--engine", action="append", help="engine override key=value, both modes (repeatable)"
    )
    cc.add_argument(
        "--pool",
        help="accelerator per replica, cycled, e.g. h100,h200,a100,l4 (default: the preset's)",
    )
    cc.add_argument("--config", type=Path, help="EndpointPickerConfig for the EPP, both modes")
    cc.add_argument(
        "--latency-scorer",
        action="store_true",
        help="kvroute's default profile plus latency-scorer (reports the predictor's TTFT error)",
    )
    cc.add_argument(
        "--response-processing",
        choices=("light", "full"),
        default="light",
        help="how much of each response the live EPP reads (full: first-chunk times too)",
    )
    cc.add_argument("--live", default="round-robin,kvroute", help="live phases to run")
    cc.add_argument("--no-virtual", action="store_true", help="skip the virtual-time phase")
    cc.add_argument(
        "--predictor-after",
        type=float,
        default=60.0,
        help="seconds of live traffic before the predictor's error is measured",
    )
    cc.add_argument("--out", type=Path, help="write OUT.json")

    sm = sub.add_parser("summary", help="Markdown tables over several results JSONs (presets)")
    sm.add_argument("results", type=Path, nargs="+")
    sm.add_argument("--policies", help="comma list (default: the first file's)")
    sm.add_argument("--metrics", help="comma list of metric keys (default: all)")
    fc = sub.add_parser(
        "flowcontrol", help="flow control vs legacy 429 admission vs none (virtual time)"
    )
    fc.add_argument("--scenario", required=True, choices=("overload", "noisy", "bursts"))
    fc.add_argument("--replicas", type=int, default=4)
    fc.add_argument("--duration", type=float, default=40.0, help="arrival seconds")
    fc.add_argument("--profile", default="h100-llama3-8b", help="kvroute_sim engine profile")
    fc.add_argument("--seed", type=int, default=0)
    fc.add_argument(
        "--max-num-seqs", type=int, help="override the engine's batch size (max_num_seqs)"
    )
    fc.add_argument("--out", type=Path, help="write OUT.json")

    from kvroute_bench.autoscale_cli import add_parser as add_autoscale

    add_autoscale(sub)

    pl = sub.add_parser("plot", help="re-render plots and Markdown from a results JSON")
    pl.add_argument("results", type=Path)
    pl.add_argument("--out", type=Path, required=True, help="OUT.png and OUT.md")


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload", "--preset", dest="workload", default="sharegpt", help="preset name (docs)"
    )
    p.add_argument("--trace", type=Path, help="JSONL trace to replay instead of a preset")
    p.add_argument("--param", action="append", help="workload parameter key=value (repeatable)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    mode = args.bench_mode
    if mode == "cluster":
        return _run_cluster(args)
    if mode == "live":
        from kvroute_bench.live import run_live_command

        return run_live_command(args)
    if mode == "crosscheck":
        from kvroute_bench.crosscheck import run_crosscheck_command

        return run_crosscheck_command(args)
    if mode == "autoscale":
        from kvroute_bench.autoscale_cli import run_autoscale_command

        return run_autoscale_command(args)
    if mode == "summary":
        from kvroute_bench.summary import load, summary

        pols = args.policies.split(",") if args.policies else None
        mets = args.metrics.split(",") if args.metrics else None
        print(summary(load(args.results), pols, mets))
    if mode == "flowcontrol":
        from kvroute_bench.flowcontrol import FcBenchSpec, render, run_scenario

        out = render(
            run_scenario(
                FcBenchSpec(
                    args.scenario,
                    args.replicas,
                    args.duration,
                    args.seed,
                    args.profile,
                    args.max_num_seqs,
                )
            )
        )
        print(out)
        if args.out is not None:
            args.out.write_text(out + "\n")
        return 0
    if mode == "plot":
        from kvroute_bench.report import markdown, plot

        results = json.loads(args.results.read_text())
        plot(results, args.out.with_suffix(".png"))
        args.out.with_suffix(".md").write_text(markdown(results))
        return 0
    return 2


def _engine_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _kv(items).items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _run_cluster(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kvroute_bench.cluster import RunConfig
    from kvroute_bench.report import build_results, markdown, plot, write_json
    from kvroute_bench.sim_replica import replica_config
    from kvroute_bench.sweep import SweepSpec, estimate_saturation, meta_for, pool_saturation
    from kvroute_bench.workload import load_trace, resolve_spec
    from kvroute_sim.accelerators import parse_pool

    console = Console(stderr=True, quiet=args.quiet, width=160)
    spec_w = resolve_spec(args.workload, _kv(args.param))
    engine = replica_config(args.profile, _engine_overrides(args.engine))
    trace = tuple(load_trace(args.trace)) if args.trace else None
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    policies += [f"config:{c}" for c in args.config]
    pool_spec = args.accelerator or args.pool or spec_w.pool
    accelerators = tuple(parse_pool(pool_spec, args.replicas)) if pool_spec else ()
    saturation: float | None = None
    if args.qps_sweep:
        qps = _floats(args.qps_sweep)
    elif args.load_fractions:
        if args.saturation == "auto":
            if accelerators:
                console.print("[bold]probing saturation of each accelerator...[/bold]")
                saturation = pool_saturation(spec_w, engine, accelerators, seed=args.seed)
                console.print(f"saturation ~ {saturation:.1f} QPS ({','.join(accelerators)})")
            else:
                console.print("[bold]probing saturation of one replica...[/bold]")
                per_replica = estimate_saturation(spec_w, engine, seed=args.seed)
                saturation = per_replica * args.replicas
                console.print(f"saturation ~ {saturation:.1f} QPS ({per_replica:.2f} per replica)")
        else:
            saturation = float(args.saturation)
        qps = tuple(round(f * saturation, 2) for f in _floats(args.load_fractions))
    else:
        raise SystemExit("give --qps-sweep or --load-fractions")
    warmup = args.warmup if args.warmup is not None else 0.2 * args.duration
    spec = SweepSpec(
        workload=spec_w,
        engine=engine,
        replicas=args.replicas,
        policies=tuple(policies),
        qps=qps,
        duration=args.duration,
        seed=args.seed,
        run=RunConfig(
            scrape_interval=args.scrape_interval,
            warmup=warmup,
            drain=args.drain,
            slo=Slo(ttft=args.slo_ttft, tpot=args.slo_tpot),
        ),
        requests=trace,
        accelerators=accelerators,
    )
    stages = _sweep_with_progress(spec, console)
    meta = meta_for(
        spec,
        workload=args.workload if trace is None else str(args.trace),
        profile=args.profile,
        engine_overrides=_engine_overrides(args.engine),
        saturation_qps=saturation,
        title=args.title or f"{args.workload}, {args.replicas} replicas",
        command=_command_line(args),
        speed=[{"offered_qps": s.offered_qps, **s.speed} for s in stages],
    )
    results = build_results(
        meta, [(s.offered_qps, s.by_policy) for s in stages], [s.cache_bound for s in stages]
    )
    if args.out:
        write_json(results, args.out.with_suffix(".json"))
        args.out.with_suffix(".md").write_text(markdown(results))
        plot(results, args.out.with_suffix(".png"))
        console.print(f"wrote {args.out}.json/.md/.png")
    else:
        print(json.dumps(results, indent=1))
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, rebuilt from the parsed arguments (so it is right
    however the CLI was invoked)."""
    parts = ["kvroute", "bench", "cluster"]
    if args.trace:
        parts += ["--trace", str(args.trace)]
    else:
        parts += ["--workload", args.workload]
    for kv in args.param or []:
        parts += ["--param", kv]
    for kv in args.engine or []:
        parts += ["--engine", kv]
    if args.profile != "h100-llama3-8b":
        parts += ["--profile", args.profile]
    for acc in args.accelerator or []:
        parts += ["--accelerator", acc]
    if args.pool:
        parts += ["--pool", args.pool]
    parts += ["--replicas", str(args.replicas)]
    if args.qps_sweep:
        parts += ["--qps-sweep", args.qps_sweep]
    else:
        parts += ["--saturation", str(args.saturation), "--load-fractions", args.load_fractions]
    parts += ["--duration", f"{args.duration:g}"]
    if args.warmup is not None:
        parts += ["--warmup", f"{args.warmup:g}"]
    parts += ["--drain", f"{args.drain:g}", "--seed", str(args.seed)]
    if args.scrape_interval != 0.05:
        parts += ["--scrape-interval", f"{args.scrape_interval:g}"]
    if (args.slo_ttft, args.slo_tpot) != (1.0, 0.050):
        parts += ["--slo-ttft", f"{args.slo_ttft:g}", "--slo-tpot", f"{args.slo_tpot:g}"]
    parts += ["--policies", args.policies]
    for c in args.config:
        parts += ["--config", c]
    if args.out:
        parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def _sweep_with_progress(spec: Any, console: Any) -> list[Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from kvroute_bench.report import TABLE_COLUMNS, TERMINAL_KEYS, build_results, stage_rows
    from kvroute_bench.sweep import StageOutcome, run_sweep

    total_sim = spec.duration + spec.run.drain
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} sim s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("", total=total_sim)

    def on_start(qps: float, policy: str) -> None:
        progress.reset(task, total=total_sim, description=f"{qps:g} QPS  {policy:<16}")

    def on_progress(sim_now: float) -> None:
        progress.update(task, completed=min(sim_now, total_sim))

    def on_stage(outcome: StageOutcome) -> None:
        stage = build_results({}, [(outcome.offered_qps, outcome.by_policy)])["stages"][0]
        columns = [c for c in TABLE_COLUMNS if c[1] in TERMINAL_KEYS]
        table = Table(title=f"offered {outcome.offered_qps:g} QPS", show_lines=False)
        table.add_column("policy")
        for header, *_ in columns:
            table.add_column(header, justify="right")
        for row in stage_rows(stage, columns):
            table.add_row(*row)
        progress.console.print(table)

    with progress:
        return run_sweep(spec, on_start=on_start, on_progress=on_progress, on_stage=on_stage)
