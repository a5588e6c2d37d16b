"""Baseline routers' behaviour and the greedy oracle on tiny cases worked by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from kvroute_bench.baselines import (
    GreedyOracle,
    LeastRequestsRouter,
    PowerOfTwoRouter,
    RandomRouter,
    RoundRobinRouter,
    oracle_cost,
)
from kvroute_bench.cluster import make_endpoints
from kvroute_bench.pool import PoolView, StepCosts, TrueState
from kvroute_bench.workload import BenchRequest

REQ = BenchRequest("r", 0.0, tuple(range(40)), 10)


def _pool(inflight: list[int]) -> PoolView:
    endpoints = make_endpoints(len(inflight))
    for ep, n in zip(endpoints, inflight, strict=True):
        ep.load.inflight = n
    return PoolView(endpoints)


def test_round_robin_visits_every_replica_in_turn() -> None:
    router = RoundRobinRouter(seed=5)
    picks = [router.pick(REQ, _pool([0, 0, 0, 0]), 0.0) for _ in range(8)]
    assert sorted(picks[:4]) == [0, 1, 2, 3]
    assert picks[4:] == picks[:4]


def test_least_requests_picks_the_fewest_inflight() -> None:
    router = LeastRequestsRouter(seed=0)
    assert router.pick(REQ, _pool([3, 1, 2]), 0.0) == 1
    ties = Counter(router.pick(REQ, _pool([0, 5, 0]), 0.0) for _ in range(200))
    assert set(ties) == {0, 2}  # ties broken at random among the least loaded only


def test_power_of_two_never_picks_the_more_loaded_of_its_pair() -> None:
    router = PowerOfTwoRouter(seed=0)
    assert {router.pick(REQ, _pool([9, 1]), 0.0) for _ in range(50)} == {1}
    # with three replicas the most loaded can only lose: it is never chosen
    picks = Counter(router.pick(REQ, _pool([1, 2, 9]), 0.0) for _ in range(300))
    assert picks[2] == 0
    assert picks[0] > picks[1] > 0


def test_random_spreads_uniformly() -> None:
    router = RandomRouter(seed=1)
    picks = Counter(router.pick(REQ, _pool([0] * 4), 0.0) for _ in range(4000))
    assert all(900 < picks[i] < 1100 for i in range(4))


def _step_time(n_tokens: int, n_seqs: int, ctx: int) -> float:
    del n_seqs, ctx
    return 0.010 + 0.001 * n_tokens


COSTS = StepCosts(
    step_time=_step_time, max_batched_tokens=100, max_num_seqs=4, block_size=16, adapter_load=0.5
)


def _state(**kw: object) -> TrueState:
    base: dict[str, object] = {
        "waiting": 0,
        "running": 0,
        "waiting_prefill_tokens": 0,
        "running_context_tokens": 0,
        "free_blocks": 100,
        "cached_prompt_tokens": 0,
        "adapter_ready": True,
        "adapter_resident": True,
    }
    base.update(kw)
    return TrueState(**base)  # type: ignore[arg-type]


# Worked by hand with step_time = 10 ms + 1 ms/token, budget 100, request 40 in / 10 out:
CASES = [
    # A: 2 decoding. prefill: one step of 40 + 2 tokens = 52 ms; ITL with 3 seqs = 13 ms.
    ("busy-decoding", _state(running=2, running_context_tokens=200), 0.052 + 10 * 0.013),
    # B: 150 queued prefill tokens, 32 of ours cached -> work 158 = 100 + 58: 110 + 68 ms;
    # batch 2 -> ITL 12 ms.
    (
        "queued-prefill-with-cache-hit",
        _state(waiting=1, waiting_prefill_tokens=150, cached_prompt_tokens=32),
        0.110 + 0.068 + 10 * 0.012,
    ),
    # C: idle but no free KV: 3 blocks missing, charged one ITL (11 ms) each.
    ("idle-no-kv", _state(free_blocks=0), 0.050 + 3 * 0.011 + 10 * 0.011),
    # D: idle, adapter not resident: +0.5 s load.
    ("idle-cold-adapter", _state(adapter_resident=False), 0.050 + 0.5 + 10 * 0.011),
    # E: batch full (4 running + us = 5 > 4): one ITL of waiting; ITL = 10 + 5 = 15 ms;
    # prefill chunk = 100 - 4 = 96 >= 40 -> one step of 44 tokens = 54 ms.
    ("batch-full", _state(running=4), 0.054 + 0.015 + 10 * 0.015),
]


@pytest.mark.parametrize(("state", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_oracle_cost_by_hand(state: TrueState, expected: float) -> None:
    assert oracle_cost(REQ, state, COSTS) == pytest.approx(expected)


class _KnownState:
    """A replica reduced to the one thing the oracle reads, its true state. A test double: real
    engines cannot be put into arbitrary hand-chosen states, and this test is about the argmin."""

    def __init__(self, state: TrueState) -> None:
        self.state = state

    def true_state(self, request: BenchRequest) -> TrueState:
        return self.state


def test_greedy_oracle_picks_the_least_estimated_latency() -> None:
    states = [c[1] for c in CASES]  # costs: 0.182, 0.298, 0.193, 0.66, 0.219
    engines = [_KnownState(s) for s in states]
    pool = PoolView(make_endpoints(len(states)), engines, COSTS)  # type: ignore[arg-type]
    assert GreedyOracle().pick(REQ, pool, 0.0) == 0
    # without the busy replica the KV-starved idle one (0.193) beats the others
    pool2 = PoolView(make_endpoints(4), engines[1:], COSTS)  # type: ignore[arg-type]
    assert GreedyOracle().pick(REQ, pool2, 0.0) == 1
