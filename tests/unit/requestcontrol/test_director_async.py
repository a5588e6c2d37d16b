"""``Director.handle_request_async``: prefetch off the event loop, flow control in between,
the fairness-ID headers, and a request scheduled against the state at dispatch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.flowcontrol.concurrency import ConcurrencyDetector, ConcurrencyParams
from kvroute.flowcontrol.policies import StaticUsageLimit, StaticUsageLimitParams
from kvroute.flowcontrol.queues import FlowControlSettings
from kvroute.flowcontrol.runtime import FlowController
from kvroute.plugins.base import TypedName
from kvroute.scheduling.interfaces import PREFETCHED, CycleState
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import NOW, make_endpoint
from tests.unit.requestcontrol.test_director import _director, _parsed


class _Tokenizing:
    """A hook with ``prefetch`` (like the precise prefix scorer): records where it ran and
    what PrepareData then found in the CycleState."""

    typed_name = TypedName("tok", "tok")

    def __init__(self) -> None:
        self.prefetch_threads: list[int] = []
        self.seen: list[object] = []

    def prefetch(self, request: InferenceRequest) -> Sequence[int]:
        self.prefetch_threads.append(threading.get_ident())
        return [len(request.prompt_text)]

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        self.seen.append(state.get(PREFETCHED, {}).get("tok"))


async def test_prefetch_runs_in_a_worker_thread_and_reaches_prepare_data() -> None:
    hook = _Tokenizing()
    director, _ = _director([make_endpoint("e0")], hooks=[hook])
    decision = await director.handle_request_async(_parsed(prompt="hello"), {}, "r1")
    assert decision.target.name == "e0"
    assert hook.prefetch_threads
    assert hook.prefetch_threads[0] != threading.get_ident()
    assert hook.seen == [[5]]


async def test_fairness_id_new_header_wins_then_alias_then_default() -> None:
    director, _ = _director([make_endpoint("e0")])
    both = {"x-llm-d-inference-fairness-id": "new", "x-gateway-inference-fairness-id": "old"}
    d1 = await director.handle_request_async(_parsed(), both, "r1")
    d2 = await director.handle_request_async(
        _parsed(), {"x-gateway-inference-fairness-id": "old"}, "r2"
    )
    d3 = await director.handle_request_async(_parsed(), {}, "r3")
    assert [d.request.fairness_id for d in (d1, d2, d3)] == ["new", "old", "default-flow"]


async def test_a_queued_request_is_scheduled_against_the_state_at_dispatch() -> None:
    pool = [make_endpoint("e0", waiting=0), make_endpoint("e1", waiting=9)]
    director, store = _director(pool)
    detector = ConcurrencyDetector(params=ConcurrencyParams.model_validate({"maxConcurrency": 1}))
    # One slot per endpoint, and the pool counts as full at half: one request in flight.
    limit = StaticUsageLimit(params=StaticUsageLimitParams(threshold=0.5))
    fc = FlowController(
        FlowControlSettings(usage_limit=limit), detector, store.endpoints, poll_interval=0.001
    )
    director.flow_control = fc
    first = await director.handle_request_async(_parsed(), {}, "r1")  # e0 (shortest queue)
    assert first.target.name == "e0"
    waiting: asyncio.Task[Any] = asyncio.create_task(
        director.handle_request_async(_parsed(), {}, "r2")
    )
    await asyncio.sleep(0.01)
    assert fc.queues.count == 1
    # While it waits the picture changes: e0 fills up, e1 drains.
    store.update_metrics("e0", EndpointMetrics(waiting_queue_size=20, updated_at=NOW))
    store.update_metrics("e1", EndpointMetrics(waiting_queue_size=0, updated_at=NOW))
    director.handle_response_complete(first)  # frees the slot and wakes the dispatcher
    second = await asyncio.wait_for(waiting, 2)
    assert second.target.name == "e1"  # the state at dispatch, not at arrival
    assert second.queue_wait_s >= 0.0
    await fc.aclose()
