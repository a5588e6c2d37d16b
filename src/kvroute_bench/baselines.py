"""Baseline routers (what people use today) and the greedy clairvoyant oracle.

All routers implement :class:`Router`. Baselines see only what a load balancer in front of the
pool could see: the EPP-style in-flight counters in ``Endpoint.load`` (least-requests and
power-of-two choices use ``inflight``, which is what Envoy's ``LEAST_REQUEST`` load balancer
counts). None of them reads engine metrics, so staleness does not affect them.

The oracle is different on purpose: it reads each engine's *true* state at the arrival instant
(:class:`~kvroute_bench.pool.TrueState`) and picks the replica that minimises an estimate of this
request's own end-to-end latency (see :func:`oracle_cost`). It is greedy (it ignores the effect
of its choice on later requests) and clairvoyant (fresh state, exact prefix-cache contents,
exact adapter residency, the request's true output length). It is a strong reference, not a
proven bound; the pooled replica is the bound.
"""

from __future__ import annotations

import random
from typing import Protocol

from kvroute_bench.pool import PoolView, StepCosts, TrueState
from kvroute_bench.workload import BenchRequest


class Router(Protocol):
    name: str

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        """Index of the chosen replica, or None to reject (shed) the request."""
        ...

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None: ...


# Optional router hooks the harness calls when present: ``prepare(request)`` before ``pick``
# (untimed: the client's rendering work) and ``on_first_token(request, replica, now)`` when the
# request's first token is streamed. The sglang-like and llm-d-like baselines live in
# ``kvroute_bench.cache_aware`` and ``kvroute_bench.token_aware``.


class _Base:
    name = "base"

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        del request, replica, now


class RandomRouter(_Base):
    name = "random"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        return self._rng.randrange(len(pool))


class RoundRobinRouter(_Base):
    """A Kubernetes Service / plain Envoy ROUND_ROBIN: the next replica in turn."""

    name = "round-robin"

    def __init__(self, seed: int) -> None:
        # Start at a seeded offset, as a proxy's round-robin position is arbitrary.
        self._next = random.Random(seed).randrange(1 << 16)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        i = self._next % len(pool)
        self._next += 1
        return i


class LeastRequestsRouter(_Base):
    """Fewest in-flight requests (full scan); ties broken at random."""

    name = "least-requests"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        loads = [e.load.inflight for e in pool.endpoints]
        low = min(loads)
        best = [i for i, x in enumerate(loads) if x == low]
        return best[0] if len(best) == 1 else self._rng.choice(best)


class PowerOfTwoRouter(_Base):
    """Two random replicas, the one with fewer in-flight requests (Envoy's default
    ``LEAST_REQUEST`` with ``choice_count`` 2); ties go to the first draw."""

    name = "p2c"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        n = len(pool)
        if n == 1:
            return 0
        a, b = self._rng.sample(range(n), 2)
        la, lb = pool.endpoints[a].load.inflight, pool.endpoints[b].load.inflight
        return b if lb < la else a


def oracle_cost(request: BenchRequest, state: TrueState, costs: StepCosts) -> float:
    """Estimated end-to-end latency (seconds) of ``request`` on a replica in ``state``.

    It uses the engine's own step-time function ``costs.step_time(tokens, seqs, decode_ctx)``:

    - **prefill wait**: every uncomputed prompt token queued ahead plus this request's own
      uncached tokens (``work``) must be prefilled first, in chunks of the token budget left after
      the running decodes (``chunk = max_batched_tokens - running``), each step carrying those
      decodes: ``ceil(work/chunk)`` steps, the last one partial;
    - **decode**: ``output_len`` steps at the inter-token latency of the batch it joins,
      ``itl = step_time(B, B, ctx)`` with ``B = running + waiting + 1`` and ``ctx`` the batch's
      context tokens plus its own prompt;
    - **queueing for a slot**: if ``B > max_num_seqs`` the excess waits; charged as one ITL per
      request over the limit;
    - **adapter**: ``adapter_load`` if the adapter is not resident, and a whole decode of its own
      length if no batch slot is free for it (it must wait for the batch's adapters to drain);
    - **KV shortage**: if its uncached blocks exceed the free blocks, one ITL per missing block
      divided among the running requests (the rate at which they free blocks, roughly).

    Minimising e2e for a fixed ``output_len`` is the same as minimising this request's NTPOT.
    """
    running = state.running
    ctx = state.running_context_tokens
    own = max(1, request.prompt_len - state.cached_prompt_tokens)
    work = state.waiting_prefill_tokens + own
    chunk = max(1, costs.max_batched_tokens - running)
    full, rest = divmod(work, chunk)
    prefill = full * costs.step_time(chunk + running, running + 1, ctx)
    if rest:
        prefill += costs.step_time(rest + running, running + 1, ctx)
    batch = running + state.waiting + 1
    itl = costs.step_time(batch, batch, ctx + request.prompt_len)
    wait = max(0, batch - costs.max_num_seqs) * itl
    missing = -(-own // max(1, costs.block_size)) - state.free_blocks
    if missing > 0:
        wait += missing * itl / max(1, running)
    if not state.adapter_resident:
        wait += costs.adapter_load
    if not state.adapter_ready:
        wait += request.output_len * itl
    return prefill + wait + request.output_len * itl


class GreedyOracle(_Base):
    """At each arrival, the replica with the least :func:`oracle_cost` given true state."""

    name = "oracle"

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        if pool.costs is None or not pool.engines:
            raise ValueError("the oracle needs the engines' true state and step costs")
        best, best_cost = 0, float("inf")
        for i, engine in enumerate(pool.engines):
            # A heterogeneous pool: each engine knows its own step costs.
            costs = getattr(engine, "costs", None) or pool.costs
            cost = oracle_cost(request, engine.true_state(request), costs)
            if cost < best_cost:
                best, best_cost = i, cost
        return best


BASELINES: dict[str, type[RandomRouter | RoundRobinRouter | LeastRequestsRouter | PowerOfTwoRouter]]
BASELINES = {
    "random": RandomRouter,
    "round-robin": RoundRobinRouter,
    "least-requests": LeastRequestsRouter,
    "p2c": PowerOfTwoRouter,
}
