"""``kvroute demo``: the embedded default a newcomer runs first.

Starts a small simulated pool (``kvroute sim``: LoRA adapters, shared system prompts), the gateway
in front of it (real Envoy + kvroute's EPP), drives a short mixed workload (critical chat,
standard LoRA traffic, sheddable batch) through it, then sends the same workload round-robin
straight to freshly started servers, and prints a comparison table and where the plot went.
No arguments needed; the whole run takes about a minute and a half.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=4, help="simulated servers (default 4)")
    parser.add_argument("--qps", type=float, default=12.0, help="offered requests/s (default 12)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of arrivals per phase (default 20)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="per-request client timeout in seconds"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="logs and plot (default .kvroute/demo)"
    )


async def _with_progress(label: str, seconds: float, coro: Awaitable[T]) -> T:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    task = asyncio.ensure_future(coro)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        bar = progress.add_task(label, total=seconds)
        start = time.monotonic()
        while not task.done():
            progress.update(bar, completed=min(seconds, time.monotonic() - start))
            await asyncio.wait({task}, timeout=0.2)
    return task.result()


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


async def _main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kvroute_bench.demo.run import PhaseResult, default_workdir, plot, run_phase, trade_offs
    from kvroute_bench.demo.scenario import (
        CRITICAL_TTFT_SLO,
        DemoWorkload,
        for_round_robin,
        generate,
    )

    console = Console()
    if console.width < 100:  # not a terminal (CI, a pipe): keep the table readable
        console = Console(width=100)
    workdir: Path = args.out_dir or default_workdir()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    workload = DemoWorkload(rate=args.qps, duration=args.duration, seed=args.seed)
    requests = generate(workload)
    console.print(
        f"[bold]kvroute demo[/]: {args.servers} simulated vLLM servers (Llama-3-8B/H100 model, "
        f"slowed x10), {len(requests)} requests at {args.qps:g}/s: critical chat with shared "
        "system prompts, LoRA traffic (5 adapters, 2 slots per server), sheddable batch."
    )
    phases = (("kvroute", requests), ("rr", for_round_robin(requests, args.seed)))
    results: list[PhaseResult] = []
    for name, reqs in phases:
        label = "kvroute gateway (Envoy + EPP)" if name == "kvroute" else "plain round-robin (rr)"
        result = await _with_progress(
            f"{label}: sending", args.duration + 10, run_phase(name, reqs, args.servers, workdir,
                                                               args.timeout)
        )  # fmt: skip
        results.append(result)
        console.print(f"  {label}: done in {result.wall_s:.0f} s")

    table = Table(title="Same workload, kvroute vs round-robin (seconds)")
    for col in ("class", "router", "sent", "ok", "429", "fail", "TTFT p50", "TTFT p90",
                "e2e p90", "SLO ok"):  # fmt: skip
        table.add_column(col, justify="right" if col not in ("class", "router") else "left")
    for cls in results[0].by_class:
        for res in results:
            row = res.by_class.get(cls)
            if row is None:
                continue
            table.add_row(
                cls.lower(), res.name, str(row.sent), str(row.ok), str(row.shed), str(row.failed),
                _fmt(row.ttft_p50), _fmt(row.ttft_p90), _fmt(row.e2e_p90),
                f"{100 * row.slo_met:.0f}%",
            )  # fmt: skip
        table.add_section()
    console.print(table)
    console.print(
        f"429 = shed by kvroute (sheddable only); fail = client timeout ({args.timeout:g} s) or "
        f"error; SLO ok = completed with TTFT <= {CRITICAL_TTFT_SLO:g} s."
    )
    if len(results) == 2:
        for line in trade_offs(results[0], results[1]):
            console.print(line)
    png = workdir / "demo-ttft.png"
    plot(results, png)
    console.print(f"Plot written to {png}; Envoy log under {workdir}/.")
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
