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

**Replica sync** (``--sync-delay-ms``, issue 17): with a delay given, each replica runs the
EPP's real :class:`~kvroute.replicasync.core.ReplicaSync` core over its datastore and plugins.
After every decision and every completion it flushes one message (its in-flight deltas, the
prefix index's inserts), encoded and HMAC-tagged as on the wire; the message reaches each other
replica ``delay`` later (the delay stands for the batching interval plus the network) and is
decoded and merged there before that replica's next decision. ``off`` is today's behaviour:
nothing shared. Peers are aged out on each receiver's own (virtual) clock, as live.

Run ``python -m kvroute_bench.active_active --workload shared-prefix-sglang --qps 4`` (see
``--help``); it prints one row per replica count (and sync setting) with TTFT, prefix-cache hit
rate and goodput.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import zlib
from collections.abc import Sequence
from dataclasses import replace

from kvroute.embed import ReplicaSync, SyncCodec
from kvroute_bench.baselines import BASELINES, Router
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.epp_router import EppRouter
from kvroute_bench.metrics import StageMetrics, percentile
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
        sync_delay: float | None = None,
    ) -> None:
        if assign not in ("random", "session"):
            raise ValueError("assign must be 'random' or 'session'")
        if sync_delay is not None and sync_delay < 0:
            raise ValueError("sync_delay must be >= 0 (None: no sync)")
        label = "off" if sync_delay is None else f"{sync_delay * 1e3:g} ms"
        self.name = f"kvroute x{replicas} ({assign}, sync {label})"
        self._epps = [
            EppRouter(f"epp-{i}", config_source, seed=seed + 101 * i) for i in range(replicas)
        ]
        self._delay = sync_delay
        self._syncs: list[ReplicaSync] = []
        if sync_delay is not None and replicas > 1:
            codec = SyncCodec(b"bench-pool-key")
            self._syncs = [
                ReplicaSync(
                    epp.name,
                    epp.datastore,
                    epp.graph.capabilities.replicated,
                    codec=codec,
                    clock=epp._clock,
                    epoch=i,
                    # replicas here publish only on their own events (no timer heartbeats),
                    # so a quiet one must not be aged out as dead
                    peer_timeout_s=30.0,
                )
                for i, epp in enumerate(self._epps)
            ]
        # (deliver_at, seq, destination replica, message) in delivery order
        self._wire: list[tuple[float, int, int, bytes]] = []
        self._wire_seq = 0
        self.messages = 0
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

    def _deliver(self, now: float) -> None:
        """Merge every message whose delivery time has come (in send order per pair)."""
        wire = self._wire
        while wire and wire[0][0] <= now:
            at, _, dst, data = heapq.heappop(wire)
            self._epps[dst].now = at
            self._syncs[dst].merge(data, at)
        for i, sync in enumerate(self._syncs):
            self._epps[i].now = now
            sync.expire(now)

    def _publish(self, k: int, now: float) -> None:
        data = self._syncs[k].flush(now)
        if data is None or self._delay is None:
            return
        for dst in range(len(self._epps)):
            if dst != k:
                self._wire_seq += 1
                heapq.heappush(self._wire, (now + self._delay, self._wire_seq, dst, data))
                self.messages += 1

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        k = self._replica_for(request)
        self._owner[request.request_id] = k
        self.decisions_per_replica[k] += 1
        if self._syncs:
            self._epps[k]._mirror(pool)  # endpoints known before peers' entries are merged
            self._deliver(now)
        picked = self._epps[k].pick(request, pool, now)
        if self._syncs:
            self._publish(k, now)
        return picked

    def on_first_token(self, request: BenchRequest, replica: int, now: float) -> None:
        """The first chunk streams back through the replica that routed the request."""
        k = self._owner.get(request.request_id)
        if k is not None:
            self._epps[k].on_first_token(request, replica, now)

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        k = self._owner.pop(request.request_id, None)
        if k is not None:
            if self._syncs:
                self._deliver(now)
            self._epps[k].on_complete(request, replica, now)
            if self._syncs:
                self._publish(k, now)


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
    sync_delay: float | None = None,
    config_source: str = "default",
    router_seed: int | None = None,
) -> list[tuple[int, StageMetrics]]:
    """One stage per replica count on one workload. ``seed`` draws the workload;
    ``router_seed`` (default: ``seed``) the replicas' tie-breaks and the stream assignment."""
    rseed = seed if router_seed is None else router_seed
    spec = resolve_spec(workload)
    engine = replica_config(profile, {})
    requests = generate(spec, rate=qps, duration=duration, seed=seed)
    config = RunConfig(warmup=0.2 * duration, drain=60.0)
    out = []
    for n in epp_replicas:
        router: ActiveActiveRouter | Router = (
            ActiveActiveRouter(
                n, config_source=config_source, seed=rseed, assign=assign, sync_delay=sync_delay
            )
            if n > 0
            else BASELINES["random"](rseed)
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
        t0, t1 = config.warmup, duration
        ttfts = sorted(
            r.ttft(result.sim_seconds)
            for r in result.records
            if t0 <= r.sent < t1 and not r.shed and not r.failed
        )
        m = result.metrics
        m.extra["ttft_mean"] = sum(ttfts) / len(ttfts) if ttfts else 0.0
        m.extra["ttft_p95"] = percentile(ttfts, 95)
        out.append((n, m))
    return out


def _row(m: StageMetrics) -> str:
    return (
        f"{m.prefix_hit_rate:.3f} | {m.ttft_p50 * 1e3:.1f} | {m.ttft_p90 * 1e3:.1f} | "
        f"{m.extra['ttft_p95'] * 1e3:.1f} | {m.extra['ttft_mean'] * 1e3:.1f} | "
        f"{m.goodput_rps:.2f}"
    )


def _mean(ms: Sequence[StageMetrics]) -> StageMetrics:
    """The first stage's record with the printed figures replaced by their means."""
    k = len(ms)
    return replace(
        ms[0],
        prefix_hit_rate=sum(m.prefix_hit_rate for m in ms) / k,
        ttft_p50=sum(m.ttft_p50 for m in ms) / k,
        ttft_p90=sum(m.ttft_p90 for m in ms) / k,
        goodput_rps=sum(m.goodput_rps for m in ms) / k,
        extra={x: sum(m.extra[x] for m in ms) / k for x in ("ttft_p95", "ttft_mean")},
    )


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
    p.add_argument("--seed", default="0", help="workload seed; a comma list runs each")
    p.add_argument(
        "--router-seed",
        default=None,
        help="the replicas' tie-break (and stream assignment) seed, a comma list runs each; "
        "default: the workload seed. Several separate tie-break noise from what sync changes",
    )
    p.add_argument(
        "--config",
        default="default",
        help="EPP config of every replica: a built-in profile name (default, upstream, "
        "decision-tree) or a config file",
    )
    p.add_argument(
        "--sync-delay-ms",
        default="off",
        help="comma list of replica-sync delays in ms, or 'off' (nothing shared); e.g. off,1,10",
    )
    args = p.parse_args(argv)
    delays = [None if d == "off" else float(d) / 1e3 for d in args.sync_delay_ms.split(",")]
    counts = [int(x) for x in args.epp_replicas.split(",")]
    seeds = [int(x) for x in args.seed.split(",")]
    rseeds: list[int | None] = (
        [None] if args.router_seed is None else [int(x) for x in args.router_seed.split(",")]
    )
    print(
        f"workload={args.workload} qps={args.qps} servers={args.servers} "
        f"duration={args.duration}s assign={args.assign} config={args.config}"
    )
    print(
        "| seed | router seed | EPP replicas | sync delay | prefix hit rate | TTFT p50 (ms) "
        "| TTFT p90 (ms) | TTFT p95 (ms) | TTFT mean (ms) | goodput (req/s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple[int, str], list[StageMetrics]] = {}
    for seed in seeds:
        for rseed in rseeds:
            for delay in delays:
                rows = run(
                    epp_replicas=[n for n in counts if n > 1 or delay is delays[0]],
                    workload=args.workload,
                    qps=args.qps,
                    duration=args.duration,
                    servers=args.servers,
                    assign=args.assign,
                    seed=seed,
                    sync_delay=delay,
                    config_source=args.config,
                    router_seed=rseed,
                )
                label = "off" if delay is None else f"{delay * 1e3:g} ms"
                for n, m in rows:
                    label_n = label if n > 1 else "—"
                    groups.setdefault((n, label_n), []).append(m)
                    print(
                        f"| {seed} | {seed if rseed is None else rseed} | {n} | {label_n} "
                        f"| {_row(m)} |",
                        flush=True,
                    )
    if len(seeds) * len(rseeds) > 1:
        print(f"\nmean over {len(seeds) * len(rseeds)} runs")
        print(
            "| EPP replicas | sync delay | prefix hit rate | TTFT p50 (ms) | TTFT p90 (ms) "
            "| TTFT p95 (ms) | TTFT mean (ms) | goodput (req/s) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (n, label_n), ms in groups.items():
            print(f"| {n} | {label_n} | {_row(_mean(ms))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
