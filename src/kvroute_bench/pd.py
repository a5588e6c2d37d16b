"""P/D disaggregation against aggregated serving, in virtual time, at equal GPU count.

A self-contained discrete-event loop over ``kvroute_sim`` engines (one engine = one GPU):

* **aggregated**: ``n`` engines, each request served whole on the engine with the fewest
  outstanding requests (join-shortest-queue).
* **P/D** ``p:d``: ``p`` prefill engines and ``d`` decode engines. A request the policy splits
  is prefilled (``max_tokens`` 1) on the least-loaded prefill engine; when that token is out, its
  KV is pulled by the least-loaded decode engine (``remote_kv``, ``transfer_s`` from the model's
  bytes per token over the link preset) and decoded there; the client's first token is the
  decode engine's. A request the policy keeps aggregated goes whole to a decode engine
  (kvroute's decode profile keeps only decode endpoints).

What the client sees is recorded per request: TTFT, and every inter-token gap (ITL) of its
stream. Goodput = requests per second finishing within the SLO (TTFT and mean TPOT).
The routing inside each pool is JSQ here, not kvroute's scorers: this isolates the P/D effect.

Run: ``python -m kvroute_bench.pd --help`` (the commands in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvroute_sim.config import EngineConfig, engine_profile
from kvroute_sim.disagg import KVShape, link
from kvroute_sim.engine import Engine, SimRequest, StepOutcome

Policy = Callable[[int], bool]  # prompt tokens -> split?


class PdRouter(Protocol):
    """A router in the loop (``kvroute_bench.pd_kvroute``): picks (prefill or None, decode)."""

    def route(
        self, rid: str, prompt: int, output: int, now: float, engines: Sequence[Engine]
    ) -> tuple[int | None, int]: ...

    def complete(
        self, rid: str, now: float, output: int, first_token_at: float | None = None
    ) -> None: ...


@dataclass(slots=True)
class Rec:
    arrival: float
    prompt: int
    output: int
    split: bool = False
    handed: bool = False  # the prefill leg is done; the decode leg runs
    prefill_engine: int = -1
    decode_engine: int = -1  # chosen up front by a router (kvroute picks decode first)
    first: float | None = None
    finish: float | None = None
    gaps: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Result:
    label: str
    qps: float
    ttft_p50: float
    ttft_p90: float
    itl_p90: float
    tpot_p50: float
    goodput: float
    throughput_tok_s: float
    split_share: float
    completed: int
    cost: float = 0.0  # mean end-to-end seconds per output token (the auto decider's cost)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def workload(
    kind: str, qps: float, duration: float, seed: int, prompt: int | None = None
) -> list[tuple[float, int, int]]:
    """(arrival, prompt tokens, output tokens): Poisson arrivals."""
    rng = random.Random(seed)
    out: list[tuple[float, int, int]] = []
    t = 0.0
    while True:
        t += rng.expovariate(qps)
        if t >= duration:
            return out
        if kind == "long":  # RAG: 8k-token prompts, 200-token answers
            p, o = prompt or 8000, 200
        elif kind == "mixed":  # prompt lengths log-uniform over 128..16000, 200-token answers
            p, o = int(2 ** rng.uniform(7, math.log2(16000))), 200
        elif kind == "code":  # code generation: long context, longer answers
            p, o = prompt or int(rng.uniform(3000, 6000)), int(rng.uniform(200, 600))
        else:  # short chat
            p, o = int(rng.uniform(100, 600)), int(rng.uniform(50, 250))
        out.append((t, p, o))


def run(
    arrivals: Sequence[tuple[float, int, int]],
    n_prefill: int,
    n_decode: int,
    policy: Policy,
    *,
    engine: EngineConfig,
    link_name: str = "rdma",
    shape: KVShape | None = None,
    slo_ttft: float = 2.0,
    slo_tpot: float = 0.05,
    label: str = "",
    qps: float = 0.0,
    router: PdRouter | None = None,
    records: list[Rec] | None = None,
) -> Result:
    """One run; ``n_prefill`` 0 means aggregated over ``n_decode`` engines. With ``router`` the
    router decides (and ``policy`` is ignored); otherwise JSQ within each pool. ``records``
    receives every completed request's record."""
    bpt = (shape or KVShape()).bytes_per_token
    kv_link = link(link_name)
    engines = [Engine(engine) for _ in range(n_prefill + n_decode)]
    prefill_ix = list(range(n_prefill))
    decode_ix = list(range(n_prefill, n_prefill + n_decode))
    outstanding = [0] * len(engines)
    stepping = [False] * len(engines)
    recs: dict[str, Rec] = {}
    heap: list[tuple[float, int, int, int, StepOutcome | None]] = []
    seq = 0

    def wake(i: int, now: float) -> None:
        nonlocal seq
        at = engines[i].next_step_time(now)
        if at is not None:
            stepping[i] = True
            heapq.heappush(heap, (at, 1, seq, i, None))
            seq += 1

    def submit(i: int, req: SimRequest, now: float) -> None:
        engines[i].add_request(req)
        outstanding[i] += 1
        if not stepping[i]:
            wake(i, now)

    def least(ix: list[int]) -> int:
        return min(ix, key=lambda k: outstanding[k])

    for k, (t, _p, _o) in enumerate(arrivals):
        heapq.heappush(heap, (t, 0, seq, k, None))
        seq += 1
    while heap:
        now, kind, _s, i, out = heapq.heappop(heap)
        if kind == 0:  # arrival
            t, p, o = arrivals[i]
            rid = f"r{i}"
            rec = recs[rid] = Rec(t, p, o)
            if router is not None:
                pre, rec.decode_engine = router.route(rid, p, o, now, engines)
                rec.split = pre is not None
                rec.prefill_engine = -1 if pre is None else pre
            else:
                rec.split = (n_prefill > 0 or n_decode > 1) and policy(p)
                # Flexible pool (no prefill-only engines): any engine prefills, another decodes.
                rec.prefill_engine = least(prefill_ix or decode_ix) if rec.split else -1
            if rec.split:
                submit(
                    rec.prefill_engine,
                    SimRequest(rid, num_prompt_tokens=p, max_tokens=1, arrival_time=now),
                    now,
                )
            else:
                submit(
                    rec.decode_engine if rec.decode_engine >= 0 else least(decode_ix),
                    SimRequest(rid, num_prompt_tokens=p, max_tokens=o, arrival_time=now),
                    now,
                )
            continue
        if out is None:  # a step starts
            out = engines[i].step(now)
            if out.duration <= 0.0:
                stepping[i] = False
                wake(i, now)
                continue
            heapq.heappush(heap, (out.end, 1, seq, i, out))
            seq += 1
            continue
        stepping[i] = False
        for req in out.emitted:
            rec = recs[req.request_id]
            if rec.split and not rec.handed:
                continue  # the prefill leg's token is not the client's
            if req.prev_token_time is not None:
                rec.gaps.append(out.end - req.prev_token_time)
            elif rec.first is None:
                rec.first = out.end
        for req in out.finished:
            outstanding[i] -= 1
            rec = recs[req.request_id]
            if rec.split and not rec.handed:  # hand the KV to a decode engine
                rec.handed = True
                transfer = kv_link.transfer_seconds(rec.prompt * bpt)
                dreq = SimRequest(
                    req.request_id,
                    num_prompt_tokens=rec.prompt,
                    max_tokens=rec.output,
                    arrival_time=out.end,
                    remote_kv=True,
                    transfer_s=transfer,
                )
                others = [k for k in decode_ix if k != rec.prefill_engine] or decode_ix
                target = rec.decode_engine if rec.decode_engine >= 0 else least(others)
                submit(target, dreq, out.end)
            else:
                rec.finish = out.end
                if router is not None:
                    router.complete(req.request_id, out.end, rec.output, rec.first)
        wake(i, now)

    done = [r for r in recs.values() if r.finish is not None and r.first is not None]
    if records is not None:
        records.extend(done)
    span = max((r.finish for r in done if r.finish is not None), default=1.0)
    ttft = [r.first - r.arrival for r in done if r.first is not None]
    gaps = [g for r in done for g in r.gaps]
    tpot = [(r.finish - r.first) / max(1, r.output - 1) for r in done if r.finish and r.first]
    good = sum(
        1
        for r in done
        if r.first is not None
        and r.finish is not None
        and r.first - r.arrival <= slo_ttft
        and (r.finish - r.first) / max(1, r.output - 1) <= slo_tpot
    )
    return Result(
        label=label,
        qps=qps,
        ttft_p50=_pct(ttft, 0.5),
        ttft_p90=_pct(ttft, 0.9),
        itl_p90=_pct(gaps, 0.9),
        tpot_p50=_pct(tpot, 0.5),
        goodput=good / span,
        throughput_tok_s=sum(r.output for r in done) / span,
        split_share=sum(r.split for r in recs.values()) / max(1, len(recs)),
        completed=len(done),
        cost=sum((r.finish or 0.0) - r.arrival for r in done) / max(1, sum(r.output for r in done)),
    )


def threshold_policy(tokens: int) -> Policy:
    return lambda p: p >= tokens


def _row(r: Result) -> str:
    return (
        f"| {r.label} | {r.qps:g} | {1000 * r.ttft_p50:.0f} | {1000 * r.ttft_p90:.0f} | "
        f"{1000 * r.itl_p90:.1f} | {1000 * r.tpot_p50:.1f} | {r.goodput:.2f} | "
        f"{r.throughput_tok_s:.0f} | {100 * r.split_share:.0f}% |"
    )


HEADER = (
    "| setup | QPS | TTFT p50 ms | TTFT p90 ms | ITL p90 ms | TPOT p50 ms | goodput req/s | "
    "output tok/s | split |\n|---|---|---|---|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvroute_bench.pd", description=__doc__)
    ap.add_argument("--workload", choices=["long", "code", "chat", "mixed"], default="long")
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--qps", type=float, nargs="+", default=[4.0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--link", default="rdma", choices=["nvlink", "rdma", "tcp"])
    ap.add_argument("--threshold", type=int, default=2048, help="split prompts >= this (tokens)")
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--slo-tpot", type=float, default=0.05)
    ap.add_argument(
        "--crossover",
        action="store_true",
        help="observe the crossover prompt length with kvroute's decider instead",
    )
    ap.add_argument(
        "--no-auto-charge-stalls",
        dest="auto_charge_stalls",
        action="store_false",
        help="with nonCachedTokens auto: autoChargeStalls false (the default is true)",
    )
    ap.add_argument(
        "--auto-exploration",
        type=float,
        help="--crossover mixed-length run: the decider's autoExploration (default 0.05)",
    )
    ap.add_argument(
        "--prefill", type=int, help="--crossover pool: prefill engines (default gpus/2; 0: flex)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--kvroute",
        metavar="NONCACHED",
        nargs="+",
        default=[],
        help="also run kvroute's own P/D scheduler with each nonCachedTokens value given "
        "(e.g. 0 2048 auto; 0 never splits)",
    )
    a = ap.parse_args(argv)
    engine = engine_profile("h100-llama3-8b", max_model_len=16384)
    if a.crossover:
        from kvroute_bench.pd_crossover import print_tables

        n_p = a.gpus // 2 if a.prefill is None else a.prefill
        print_tables(
            a.gpus,
            n_p,
            a.qps[0],
            a.duration,
            engine,
            a.link,
            a.auto_exploration,
            a.auto_charge_stalls,
        )
        return 0
    print(HEADER)
    for qps in a.qps:
        arr = workload(a.workload, qps, a.duration, a.seed)

        def one(
            n_p: int,
            n_d: int,
            policy: Policy,
            label: str,
            q: float = qps,
            arr: list[tuple[float, int, int]] = arr,
        ) -> str:
            return _row(
                run(
                    arr,
                    n_p,
                    n_d,
                    policy,
                    engine=engine,
                    link_name=a.link,
                    slo_ttft=a.slo_ttft,
                    slo_tpot=a.slo_tpot,
                    label=label,
                    qps=q,
                )
            )

        split = threshold_policy(a.threshold)
        print(one(0, a.gpus, threshold_policy(1 << 30), f"aggregated x{a.gpus}"))
        print(one(0, a.gpus, split, f"flex x{a.gpus} (all both)"))
        for p in range(1, a.gpus):
            print(one(p, a.gpus - p, split, f"P/D {p}:{a.gpus - p}"))
        for non_cached in a.kvroute:
            from kvroute_bench.pd_kvroute import KvrouteRouter

            for p in range(a.gpus):
                roles = ["both"] * a.gpus if p == 0 else ["prefill"] * p + ["decode"] * (a.gpus - p)
                plain = non_cached == "auto" and not a.auto_charge_stalls
                kv = KvrouteRouter(
                    roles, non_cached, seed=a.seed, charge_stalls=False if plain else None
                )
                name = f"flex x{a.gpus}" if p == 0 else f"P/D {p}:{a.gpus - p}"
                res = run(
                    arr,
                    p,
                    a.gpus - p,
                    split,
                    engine=engine,
                    link_name=a.link,
                    slo_ttft=a.slo_ttft,
                    slo_tpot=a.slo_tpot,
                    qps=qps,
                    router=kv,
                )
                end = f" (threshold at end {kv.threshold})" if non_cached == "auto" else ""
                mode = non_cached + (" -stalls" if plain else "")
                res = dataclasses.replace(res, label=f"kvroute {mode}, {name}{end}")
                print(_row(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
