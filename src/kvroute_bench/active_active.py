"""Active-active EPP replicas in the virtual-time harness: what diverging state costs.

``N`` kvroute EPP replicas sit behind one Envoy. Each request's ext_proc stream lands on one
replica (``--assign random``: Envoy's least-request/random balancing over the EPP Service;
``session``: a hash of the request's prefix group, i.e. sticky sessions), and each replica runs
its own :class:`~kvroute_bench.epp_router.EppRouter` — its own Director, scheduler and plugin
state. So the *approximate prefix index* (built from each replica's own routing decisions)
diverges exactly as it would in a cluster. The EPP-side in-flight ledger diverges too: each
replica's director counts only the requests it routed, as in a real cluster. What does not
diverge here: the scraped metrics (every replica scrapes the same servers; the harness gives
them one snapshot per interval).

Run ``python -m kvroute_bench.active_active --workload shared-prefix-sglang --qps 4`` (see
``--help``); it prints one row per replica count with TTFT, prefix-cache hit rate and goodput.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from collections.abc import Sequence

from kvroute_bench.baselines import BASELINES, Router
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.epp_router import EppRouter
from kvroute_bench.metrics import StageMetrics
from kvroute_bench.pool import PoolView
from kvroute_bench.sim_replica import SimReplica, replica_config, step_costs
from kvroute_bench.workload import BenchRequest, generate, resolve_spec


class ActiveActiveRouter:
    """``replicas`` independent EPPs; each request is decided by one of them."""

    def __init__(
        self,
        replicas: int,
        *,
        config_source: str = "default",
        seed: int = 0,
        assign: str = "random",
    ) -> None:
        if assign not in ("random", "session"):
            raise ValueError("assign must be 'random' or 'session'")
        self.name = f"kvroute x{replicas} ({assign})"
        self._epps = [
            EppRouter(f"epp-{i}", config_source, seed=seed + 101 * i) for i in range(replicas)
        ]
        self._assign = assign
        self._rng = random.Random(seed)
        self._owner: dict[str, int] = {}
        self.decisions_per_replica = [0] * replicas

    def _replica_for(self, request: BenchRequest) -> int:
        n = len(self._epps)
        if self._assign == "session":
            # Sticky by session / prefix group (the workload's group key, else the prompt head).
            key = request.group or ",".join(map(str, request.prompt[:16]))
            return zlib.crc32(key.encode()) % n
        return self._rng.randrange(n)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        k = self._replica_for(request)
        self._owner[request.request_id] = k
        self.decisions_per_replica[k] += 1
        return self._epps[k].pick(request, pool, now)

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        k = self._owner.pop(request.request_id, None)
        if k is not None:
            self._epps[k].on_complete(request, replica, now)


def run(
    *,
    epp_replicas: Sequence[int],
    workload: str,
    qps: float,
    duration: float,
    servers: int,
    assign: str,
    seed: int,
    profile: str = "h100-llama3-8b",
) -> list[tuple[int, StageMetrics]]:
    spec = resolve_spec(workload)
    engine = replica_config(profile, {})
    requests = generate(spec, rate=qps, duration=duration, seed=seed)
    config = RunConfig(warmup=0.2 * duration, drain=60.0)
    out = []
    for n in epp_replicas:
        router: ActiveActiveRouter | Router = (
            ActiveActiveRouter(n, seed=seed, assign=assign) if n > 0 else BASELINES["random"](seed)
        )
        result = run_stage(
            requests,
            [SimReplica(engine) for _ in range(servers)],
            router,
            offered_qps=qps,
            duration=duration,
            config=config,
            costs=step_costs(engine),
        )
        out.append((n, result.metrics))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kvroute_bench.active_active",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--epp-replicas",
        default="0,1,2,4",
        help="comma list of EPP replica counts (0: the random-routing baseline, no EPP)",
    )
    p.add_argument("--workload", default="shared-prefix-sglang")
    p.add_argument("--qps", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--servers", type=int, default=8, help="simulated model servers")
    p.add_argument("--assign", default="random", choices=["random", "session"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = run(
        epp_replicas=[int(x) for x in args.epp_replicas.split(",")],
        workload=args.workload,
        qps=args.qps,
        duration=args.duration,
        servers=args.servers,
        assign=args.assign,
        seed=args.seed,
    )
    print(
        f"workload={args.workload} qps={args.qps} servers={args.servers} "
        f"duration={args.duration}s assign={args.assign} seed={args.seed}"
    )
    print("| EPP replicas | prefix hit rate | TTFT p50 (s) | TTFT p90 (s) | goodput (req/s) |")
    print("|---:|---:|---:|---:|---:|")
    for n, m in rows:
        print(
            f"| {n} | {m.prefix_hit_rate:.3f} | {m.ttft_p50:.3f} | {m.ttft_p90:.3f} | "
            f"{m.goodput_rps:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
