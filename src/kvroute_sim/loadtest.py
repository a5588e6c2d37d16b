"""Measure the real-time CPU cost of simulated servers: how many, at what rate, one core holds.

    python -m kvroute_sim.loadtest --servers 8 --qps 40 --duration 20 [--profile h100-llama3-8b]

The servers run in this process (with ``--pin``: on core 0, the client on core 1); a client
subprocess sends Poisson streaming completions round-robin
across them (prompt ``--prompt-tokens``, output ``--output-tokens``, ``ignore_eos``). At the
end it prints one JSON line: the server process's CPU use as a fraction of one core, how many
engine steps ran later than 5 ms behind their virtual schedule, the mean and worst lag, and
the client-side TTFT next to the engine's own (virtual) TTFT. Latencies stay honest while
``late_step_fraction`` stays near 0 and the CPU fraction well below 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence

import aiohttp

from kvroute_sim.cluster import SimCluster

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core % (os.cpu_count() or 1)})


async def _client(urls: Sequence[str], qps: float, duration: float, prompt: int, out: int) -> None:
    rng = random.Random(1)
    cpu0 = time.process_time()
    ttfts: list[float] = []
    errors = 0
    words = " ".join(f"w{i}" for i in range(prompt))

    async def one(session: aiohttp.ClientSession, url: str, k: int) -> None:
        nonlocal errors
        body = {
            "model": MODEL,
            "prompt": f"{k} {words}",
            "max_tokens": out,
            "ignore_eos": True,
            "stream": True,
        }
        t0 = time.perf_counter()
        first = None
        try:
            async with session.post(f"{url}/v1/completions", json=body) as r:
                async for _line in r.content:
                    if first is None:
                        first = time.perf_counter() - t0
        except aiohttp.ClientError:
            errors += 1
            return
        if first is not None:
            ttfts.append(first)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = []
        start = time.perf_counter()
        t = 0.0
        k = 0
        while True:
            t += rng.expovariate(qps)
            if t > duration:
                break
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, urls[k % len(urls)], k)))
            k += 1
        await asyncio.gather(*tasks)
    print(
        json.dumps(
            {
                "sent": k,
                "ok": len(ttfts),
                "errors": errors,
                "client_ttft_p50_ms": statistics.median(ttfts) * 1e3 if ttfts else None,
                "client_cpu_fraction_of_one_core": round(
                    (time.process_time() - cpu0) / (time.perf_counter() - start), 3
                ),
            }
        ),
        flush=True,
    )


async def _servers(args: argparse.Namespace) -> dict[str, object]:
    async with SimCluster(args.servers, profile=args.profile, base_port=0) as cluster:
        cmd = [
            sys.executable, "-m", "kvroute_sim.loadtest", "--client", *cluster.urls,
            "--qps", str(args.qps), "--duration", str(args.duration),
            "--prompt-tokens", str(args.prompt_tokens), "--output-tokens", str(args.output_tokens),
        ]  # fmt: skip
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await proc.communicate()
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        client = json.loads(stdout.decode().strip().splitlines()[-1])
        steps = sum(s.engine.num_steps for s in cluster.servers)
        late = sum(s.shell.steps_late for s in cluster.servers)
        ttft = [
            v
            for s in cluster.servers
            for v in [s.metrics.ttft.total / s.metrics.ttft.count if s.metrics.ttft.count else 0]
        ]
        return {
            "servers": args.servers,
            "profile": args.profile,
            "offered_qps_total": args.qps,
            "output_tokens_per_s": client["ok"] * args.output_tokens / args.duration,
            "server_cpu_fraction_of_one_core": round(cpu / wall, 3),
            "steps": steps,
            "late_step_fraction": round(late / steps, 4) if steps else 0.0,
            "mean_lag_ms": round(
                1e3 * statistics.mean(s.shell.mean_lag_s for s in cluster.servers), 3
            ),
            "max_lag_ms": round(1e3 * max(s.shell.max_lag_s for s in cluster.servers), 1),
            "engine_ttft_mean_ms": round(1e3 * statistics.mean(ttft), 1),
            **client,
        }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvroute_sim.loadtest")
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--qps", type=float, default=20.0, help="total offered requests/s")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--profile", default="h100-llama3-8b")
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--pin", action="store_true", help="pin servers to core 0, client to core 1")
    p.add_argument("--client", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        _pin(1) if args.pin else None
        asyncio.run(
            _client(args.client, args.qps, args.duration, args.prompt_tokens, args.output_tokens)
        )
        return 0
    if args.pin:
        _pin(0)
    print(json.dumps(asyncio.run(_servers(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
