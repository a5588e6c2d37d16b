"""The asyncio shell: fast path, waiting, dispatch against fresh state, TTL, cancel, shutdown.

Endpoints are real :class:`Endpoint` objects whose in-flight counters the ``dispatch`` callbacks
move, read by the real ``concurrency-detector``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.flowcontrol.concurrency import ConcurrencyDetector, ConcurrencyParams
from kvroute.flowcontrol.item import QueueItem, QueueOutcome
from kvroute.flowcontrol.policies import ProgramAwareFairness
from kvroute.flowcontrol.queues import BandSettings, FlowControlSettings
from kvroute.flowcontrol.runtime import (
    FlowController,
    QueueRejectedError,
    QueueUnavailableError,
    slo_deadline,
)

EP = Endpoint("e1", "10.0.0.1", 8000)


def controller(ttl: float = 60.0, endpoints: tuple[Endpoint, ...] = (EP,)) -> FlowController:
    EP.load.inflight = 0
    detector = ConcurrencyDetector(params=ConcurrencyParams(maxConcurrency=1))  # type: ignore[call-arg]
    return FlowController(
        FlowControlSettings(request_ttl=ttl, no_endpoint_ttl=ttl),
        detector,
        lambda: endpoints,
        poll_interval=0.001,
    )


def item(rid: str, priority: int = 0) -> QueueItem:
    return QueueItem(
        request_id=rid, priority=priority, fairness_id="f", size_bytes=10, enqueued_at=0
    )


def send(rid: str, order: list[str]) -> Any:
    def dispatch() -> str:
        EP.load.inflight += 1  # what the director's on_request_sent does
        order.append(rid)
        return rid

    return dispatch


def finish(fc: FlowController) -> None:
    EP.load.inflight -= 1
    fc.notify()


async def test_fast_path_dispatches_inline_and_queue_waits_for_room() -> None:
    fc = controller()
    order: list[str] = []
    assert await fc.admit(item("a"), send("a", order)) == "a"  # pool empty of load: inline
    low = asyncio.create_task(fc.admit(item("low", -1), send("low", order)))
    high = asyncio.create_task(fc.admit(item("high", 5), send("high", order)))
    await asyncio.sleep(0.01)
    assert fc.queues.count == 2
    assert order == ["a"]
    finish(fc)
    assert await high == "high"  # strict priority, decided when room appeared
    await asyncio.sleep(0.01)
    assert not low.done()  # the pool is full again: low waits (no over-dispatch)
    finish(fc)
    assert await low == "low"
    assert order == ["a", "high", "low"]


async def test_fast_path_dispatch_reaches_the_fairness_policy() -> None:
    las = ProgramAwareFairness()
    EP.load.inflight = 0
    fc = FlowController(
        FlowControlSettings(default_band=BandSettings(fairness=las)),
        ConcurrencyDetector(params=ConcurrencyParams(maxConcurrency=1)),  # type: ignore[call-arg]
        lambda: (EP,),
        poll_interval=0.001,
    )
    order: list[str] = []
    first = QueueItem("a", 0, "tenant-a", 10, 0.0, prompt_tokens=100, output_tokens=10)
    assert await fc.admit(first, send("a", order)) == "a"
    assert fc.queues.count == 0
    assert las.attained("tenant-a", fc._clock()) > 100.0  # 100 + 2 x 10, barely decayed
    EP.load.inflight = 0


async def test_a_displaced_waiter_gets_429_queue_pressure_and_the_arrival_waits() -> None:
    EP.load.inflight = 1  # the pool is full: everything queues
    fc = FlowController(
        FlowControlSettings(default_band=BandSettings(max_requests=2)),
        ConcurrencyDetector(params=ConcurrencyParams(maxConcurrency=1)),  # type: ignore[call-arg]
        lambda: (EP,),
        poll_interval=0.001,
    )
    order: list[str] = []

    def mk(rid: str, flow: str) -> QueueItem:
        return QueueItem(request_id=rid, priority=0, fairness_id=flow, size_bytes=1, enqueued_at=0)

    noisy = [
        asyncio.create_task(fc.admit(mk(f"n{i}", "noisy"), send(f"n{i}", order))) for i in range(2)
    ]
    await asyncio.sleep(0.01)
    quiet = asyncio.create_task(fc.admit(mk("q", "quiet"), send("q", order)))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueRejectedError) as err:
        await noisy[1]
    assert err.value.outcome is QueueOutcome.EVICTED_QUEUE_PRESSURE
    assert err.value.dropped_reason == "evicted-queue-pressure"
    assert fc.queues.count == 2
    finish(fc)
    assert await noisy[0] == "n0"
    finish(fc)
    assert await quiet == "q"
    assert order == ["n0", "q"]
    EP.load.inflight = 0
    await fc.aclose()


async def test_ttl_expiry_is_429_with_reason() -> None:
    fc = controller(ttl=0.02)
    order: list[str] = []
    await fc.admit(item("a"), send("a", order))
    with pytest.raises(QueueRejectedError) as err:
        await fc.admit(item("b"), send("b", order))
    assert err.value.http_status == 429
    assert err.value.dropped_reason == "rejected-ttl-expired"
    assert fc.queues.count == 0


async def test_empty_pool_waits_then_503_no_endpoints() -> None:
    fc = controller(ttl=0.02, endpoints=())
    with pytest.raises(QueueUnavailableError) as err:
        await fc.admit(item("a"), send("a", []))
    assert err.value.dropped_reason == "rejected-no-endpoints"


async def test_cancelled_waiter_leaves_the_queue_at_once() -> None:
    fc = controller()
    order: list[str] = []
    await fc.admit(item("a"), send("a", order))
    waiter = asyncio.create_task(fc.admit(item("b"), send("b", order)))
    await asyncio.sleep(0.005)
    assert fc.queues.count == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert fc.queues.count == 0
    finish(fc)
    await asyncio.sleep(0.01)
    assert order == ["a"]  # never dispatched


async def test_shutdown_answers_every_queued_request_503() -> None:
    fc = controller()
    order: list[str] = []
    await fc.admit(item("a"), send("a", order))
    waiters = [asyncio.create_task(fc.admit(item(f"q{i}"), send("x", order))) for i in range(3)]
    await asyncio.sleep(0.005)
    assert fc.shutdown() == 3
    for w in waiters:
        with pytest.raises(QueueUnavailableError) as err:
            await w
        assert err.value.dropped_reason == "rejected-shutting-down"
    with pytest.raises(QueueUnavailableError):  # later arrivals too
        await fc.admit(item("late"), send("late", order))
    await fc.aclose()


async def test_a_scheduling_error_at_dispatch_is_the_requests_answer() -> None:
    fc = controller()
    order: list[str] = []
    await fc.admit(item("a"), send("a", order))

    def boom() -> str:
        raise RuntimeError("no endpoint left")

    waiter = asyncio.create_task(fc.admit(item("b"), boom))
    await asyncio.sleep(0.005)
    finish(fc)
    with pytest.raises(RuntimeError, match="no endpoint left"):
        await waiter
    assert QueueOutcome.DISPATCHED.http_status is None


def test_slo_header_parsing() -> None:
    assert slo_deadline(1.0, {"x-llm-d-slo-ttft-ms": "500"}) == 1.5
    assert slo_deadline(1.0, {"x-slo-ttft-ms": "250", "x-llm-d-slo-ttft-ms": "100"}) == 1.1
    assert slo_deadline(1.0, {"x-slo-ttft-ms": "abc"}) == float("inf")
    assert slo_deadline(1.0, {"x-slo-ttft-ms": "-3"}) == float("inf")
    assert slo_deadline(1.0, {}) == float("inf")
