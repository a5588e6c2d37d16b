"""Profile the EPP's own CPU per request under gateway load (issue 19, the request half).

Run: ``python -m tests.bench.epp_profile --rps 50 --duration 6 [--tokens 64] [--profile]
[--transport lua]``

The gateway (``kvroute.gateway.Gateway``: EPP in this process, Envoy a child, ``tap`` by
default) routes to two ``MiniModelServer``s in a child process; the open-loop load generator of
``tests.bench.gateway_overhead`` runs in another child. Printed: requests, this process's CPU
per request with the idle rate (scraping, timers; measured for 3 s before) subtracted, per
thread; with ``--profile``, cProfile with a CPU-time clock over the loaded window (top entries
by own and cumulative time; the profiler roughly doubles Python's share, so read it as
proportions).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kvroute.gateway.gateway import Gateway
from tests.bench.gateway_overhead import backends


def _threads() -> dict[str, tuple[float, str]]:
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            head, rest = f.read().rsplit(")", 1)
        fields = rest.split()
        out[tid] = ((int(fields[11]) + int(fields[12])) / tick, head.split("(", 1)[1])
    return out


async def _load(url: str, rps: float, duration: float, tokens: int) -> tuple[int, int]:
    code = (
        "import asyncio,random; from tests.bench.gateway_overhead import load;"
        f"lat,err,_=asyncio.run(load({url!r},{rps},{duration},'x'*40,{tokens},random.Random(7)));"
        "print(len(lat),err)"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    ok, err = out.split()
    return int(ok), int(err)


async def main(args: argparse.Namespace) -> None:
    with backends(2, 0.005) as eps:
        async with Gateway(eps, log_dir=Path(".kvroute"), transport=args.transport) as gw:
            await asyncio.sleep(1.0)
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(3.0)
            idle = (time.process_time() - c0) / (time.monotonic() - w0)
            await _load(gw.url, min(args.rps, 50), 1.0, args.tokens)  # warm
            prof = cProfile.Profile(time.process_time) if args.profile else None
            t0, w0, th0 = time.process_time(), time.monotonic(), _threads()
            if prof:
                prof.enable()
            ok, err = await _load(gw.url, args.rps, args.duration, args.tokens)
            if prof:
                prof.disable()
            cpu, wall, th1 = time.process_time() - t0, time.monotonic() - w0, _threads()
            n = ok + err
            net = (cpu - idle * wall) * 1000 / max(1, n)
            print(f"requests {ok} errors {err}; idle {idle:.3f} s/s; EPP CPU {net:.3f} ms/req")
            for tid, (c, name) in th1.items():
                d = c - th0.get(tid, (0.0, name))[0]
                if d >= 0.01:
                    print(f"  thread {tid} {name}: {d * 1000 / max(1, n):.3f} ms/req")
            if prof:
                prof.dump_stats(".kvroute/epp.prof")
                text = io.StringIO()
                stats = pstats.Stats(prof, stream=text)
                stats.sort_stats("tottime").print_stats(30)
                stats.sort_stats("cumulative").print_stats(50)
                print(text.getvalue())


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rps", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--tokens", type=int, default=0, help="streamed tokens per answer; 0: JSON")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--transport", choices=["ext_proc", "lua"], default="ext_proc")
    asyncio.run(main(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
