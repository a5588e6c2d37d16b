"""What a router sees of the pool, and the engine seam the discrete-event harness drives.

The harness keeps one kvroute :class:`~kvroute.datastore.endpoint.Endpoint` per replica, exactly
as the EPP's datastore would: its ``metrics`` are the last scrape (as stale as the scrape interval
makes them, ``updated_at`` in virtual seconds) and its ``load`` holds the counters the EPP keeps
itself (requests sent and not finished, requests sent since the last scrape). Baseline routers and
kvroute's scheduler read the same objects, so every policy gets the same information. Only the
oracle looks past them, at the engines' true state, through :class:`ReplicaEngine.estimate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvroute.sdk import Endpoint, EndpointMetrics
from kvroute_bench.workload import BenchRequest


@dataclass(frozen=True, slots=True)
class StepEvents:
    """What one engine step produced, stamped at the step's end (``now + duration``)."""

    duration: float
    first_token: tuple[str, ...] = ()  # request ids whose first output token came this step
    finished: tuple[tuple[str, int], ...] = ()  # (request id, output tokens) completed this step
    output_tokens: int = 0  # output tokens emitted by the whole batch this step


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """Cumulative engine counters (the simulator's Prometheus counters)."""

    prefix_queries: int = 0  # prompt tokens looked up
    prefix_hits: int = 0  # prompt tokens found in the prefix cache
    preemptions: int = 0
    adapter_loads: int = 0


@dataclass(frozen=True, slots=True)
class TrueState:
    """An engine's exact state as the oracle may see it (no staleness, nothing estimated)."""

    waiting: int  # requests queued
    running: int  # requests in the batch
    waiting_prefill_tokens: int  # uncomputed prompt tokens of queued + partially prefilled
    running_context_tokens: int  # tokens held by running requests (prompt + generated)
    free_blocks: int  # KV blocks not referenced by a request (cached-free count as free)
    cached_prompt_tokens: int  # how much of *this* request's prompt the engine has cached
    adapter_ready: bool  # its adapter is in the batch already or a GPU slot is free for it
    adapter_resident: bool  # its adapter is loaded (no load cost)


class ReplicaEngine(Protocol):
    """One replica's engine in virtual time: sans-IO, stepped by the harness."""

    def add(self, request: BenchRequest, now: float) -> bool:
        """Hand ``request`` to the engine; False if the engine rejects it (too long)."""
        ...

    def next_step_time(self, now: float) -> float | None:
        """When the engine loop would step next, given its last step ended at ``now``; None
        when it has nothing to do until a request arrives."""
        ...

    def step(self, now: float) -> StepEvents:
        """Schedule and run one batch starting at ``now`` (events at ``now + duration``)."""
        ...

    def snapshot(self, now: float) -> EndpointMetrics:
        """Metrics as a scrape of ``/metrics`` at ``now`` would report them."""
        ...

    def totals(self) -> EngineTotals: ...

    def true_state(self, request: BenchRequest) -> TrueState: ...


StepTimeFn = Callable[[int, int, int], float]  # (tokens in step, sequences, decode context)


@dataclass(frozen=True, slots=True)
class StepCosts:
    """What the oracle knows of the engine's cost model: its exact step-time function and its
    budgets (the simulator's own formula, so the oracle's estimates are as good as they get)."""

    step_time: StepTimeFn
    max_batched_tokens: int
    max_num_seqs: int
    block_size: int
    adapter_load: float  # seconds to bring a non-resident adapter in


@dataclass(slots=True)
class PoolView:
    """The pool as the harness presents it to a router at a decision."""

    endpoints: list[Endpoint]
    engines: Sequence[ReplicaEngine] = field(default_factory=list)  # oracle-only
    costs: StepCosts | None = None  # oracle-only

    def __len__(self) -> int:
        return len(self.endpoints)
