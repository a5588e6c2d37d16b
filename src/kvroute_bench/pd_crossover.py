"""The crossover prompt length, observed with kvroute's own decider in the virtual-time loop.

Two measurements (``python -m kvroute_bench.pd --crossover``), both through
:class:`~kvroute_bench.pd_kvroute.KvrouteRouter` (the real ``disagg-profile-handler`` and
``prefix-based-pd-decider``):

* **per length**: every request of one prompt length, run three times on the same arrivals:
  ``nonCachedTokens: 0`` (never split), ``1`` (split every uncached prompt) and ``auto``; the
  cost is the automatic decider's (mean end-to-end seconds per output token) and the share of
  requests ``auto`` split is what it decided, not a rule the bench computes.
* **mixed lengths**: prompt lengths log-uniform over 128..16000 tokens in one run with ``auto``;
  per power-of-two bucket (the learner's), the share it split and the cost of each mode. The
  observed crossover is the lower edge of the lowest bucket from which ``auto`` splits most
  requests of every longer bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvroute_bench import pd
from kvroute_bench.pd_kvroute import KvrouteRouter
from kvroute_sim.config import EngineConfig

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)


def roles(gpus: int, n_prefill: int) -> list[str]:
    """``n_prefill`` 0: every engine ``both`` (flex); else prefill-only then decode-only."""
    return (
        ["both"] * gpus
        if n_prefill == 0
        else ["prefill"] * n_prefill + ["decode"] * (gpus - n_prefill)
    )


@dataclass(frozen=True, slots=True)
class LengthRow:
    tokens: int
    whole: float  # s/token, nonCachedTokens 0
    split: float  # s/token, nonCachedTokens 1
    auto: float  # s/token, auto
    auto_split: float  # share of requests auto split
    threshold: int  # auto's threshold (equal queues) at the end


def _run(
    arrivals: Sequence[tuple[float, int, int]],
    gpus: int,
    n_prefill: int,
    non_cached: str,
    engine: EngineConfig,
    link_name: str,
    records: list[pd.Rec] | None = None,
    exploration: float | None = None,
    charge_stalls: bool = True,
) -> tuple[pd.Result, KvrouteRouter]:
    kv = KvrouteRouter(
        roles(gpus, n_prefill),
        non_cached,
        seed=7,
        exploration=exploration,
        charge_stalls=None if non_cached != "auto" or charge_stalls else False,
    )
    res = pd.run(
        arrivals,
        n_prefill,
        gpus - n_prefill,
        pd.threshold_policy(0),
        engine=engine,
        link_name=link_name,
        router=kv,
        records=records,
    )
    return res, kv


def by_length(
    gpus: int,
    n_prefill: int,
    qps: float,
    duration: float,
    engine: EngineConfig,
    link_name: str,
    charge_stalls: bool = True,
) -> list[LengthRow]:
    rows = []
    for tokens in LENGTHS:
        arr = pd.workload("long", qps, duration, 7, prompt=tokens)
        whole, _ = _run(arr, gpus, n_prefill, "0", engine, link_name)
        split, _ = _run(arr, gpus, n_prefill, "1", engine, link_name)
        auto, kv = _run(
            arr, gpus, n_prefill, "auto", engine, link_name, charge_stalls=charge_stalls
        )
        rows.append(
            LengthRow(tokens, whole.cost, split.cost, auto.cost, auto.split_share, kv.threshold)
        )
    return rows


@dataclass(frozen=True, slots=True)
class BucketRow:
    low: int  # bucket [low, 2 * low)
    requests: int
    split_share: float
    whole: float  # mean s/token of the requests kept whole (nan if none)
    split: float  # mean s/token of the requests split (nan if none)
    learnt: str = "-"  # auto's verdict at the end with equal queues: split, whole, - (not yet)


def _mean_cost(recs: Sequence[pd.Rec]) -> float:
    if not recs:
        return float("nan")
    return sum((r.finish or 0.0) - r.arrival for r in recs) / sum(r.output for r in recs)


def mixed(
    gpus: int,
    n_prefill: int,
    qps: float,
    duration: float,
    engine: EngineConfig,
    link_name: str,
    exploration: float | None = None,
    charge_stalls: bool = True,
) -> tuple[list[BucketRow], pd.Result, int]:
    """Mixed lengths with ``auto``: per bucket rows, the run's result, auto's end threshold."""
    arr = pd.workload("mixed", qps, duration, 7)
    recs: list[pd.Rec] = []
    res, kv = _run(
        arr, gpus, n_prefill, "auto", engine, link_name, recs, exploration, charge_stalls
    )
    auto = kv.decider.auto
    rows = []
    for b in sorted({r.prompt.bit_length() - 1 for r in recs}):
        inb = [r for r in recs if r.prompt.bit_length() - 1 == b]
        split = [r for r in inb if r.split]
        whole = [r for r in inb if not r.split]
        verdict = auto.verdict(b, 0)
        learnt = "-" if verdict is None else ("split" if verdict else "whole")
        rows.append(
            BucketRow(
                2**b,
                len(inb),
                len(split) / len(inb),
                _mean_cost(whole),
                _mean_cost(split),
                learnt,
            )
        )
    return rows, res, kv.threshold


def observed_crossover(rows: Sequence[BucketRow]) -> int | None:
    """The lowest bucket edge from which auto split most requests of every longer bucket."""
    edge = None
    for row in reversed(rows):
        if row.split_share <= 0.5:
            break
        edge = row.low
    return edge


def print_tables(
    gpus: int,
    n_prefill: int,
    qps: float,
    duration: float,
    engine: EngineConfig,
    link_name: str,
    exploration: float | None = None,
    charge_stalls: bool = True,
) -> None:
    pool = f"flex x{gpus}" if n_prefill == 0 else f"P/D {n_prefill}:{gpus - n_prefill}"
    auto_name = "auto" if charge_stalls else "auto, autoChargeStalls false"
    print(f"Per length, {pool}, {qps:g} QPS ({auto_name}):\n")
    print(
        "| prompt tokens | never split (s/token) | always split (s/token) | auto (s/token) "
        "| auto split | cheaper fixed | auto threshold at end |\n|---|---|---|---|---|---|---|"
    )
    for r in by_length(gpus, n_prefill, qps, duration, engine, link_name, charge_stalls):
        cheaper = "split" if r.split < r.whole else "whole"
        print(
            f"| {r.tokens} | {r.whole:.4f} | {r.split:.4f} | {r.auto:.4f} | "
            f"{100 * r.auto_split:.0f}% | {cheaper} | {r.threshold} |"
        )
    rows, res, threshold = mixed(
        gpus, n_prefill, qps, duration, engine, link_name, exploration, charge_stalls
    )
    explore = "" if exploration is None else f" (autoExploration {exploration:g})"
    print(
        f"\nMixed lengths (128..16000 tokens, log-uniform), {pool}, {qps:g} QPS, "
        f"{auto_name}{explore}:\n"
    )
    print(
        "| bucket (tokens) | requests | auto split | kept whole (s/token) | split (s/token) "
        "| learnt (equal queues) |\n|---|---|---|---|---|---|"
    )
    for b in rows:
        print(
            f"| {b.low}-{2 * b.low - 1} | {b.requests} | {100 * b.split_share:.0f}% | "
            f"{b.whole:.4f} | {b.split:.4f} | {b.learnt} |"
        )
    print(
        f"\nObserved crossover (auto splits most requests from): {observed_crossover(rows)} "
        f"tokens; auto's threshold at the end: {threshold}; goodput {res.goodput:.2f} req/s, "
        f"cost {res.cost:.4f} s/token, split {100 * res.split_share:.0f}%"
    )
