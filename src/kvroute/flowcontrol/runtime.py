"""The asyncio shell around :class:`~kvroute.flowcontrol.queues.FlowQueues`.

:meth:`FlowController.admit` is what a request's coroutine awaits between admission and
scheduling. ``dispatch`` is the request's scheduling step (a synchronous callable): the
controller calls it at the moment the request leaves the queue, so the request is scheduled
against the endpoint state of *that* moment, and the in-flight counters it updates are seen by
the very next saturation check (no over-dispatch between checks).

* **Fast path**: nothing queued and the pool under the usage ceiling: ``dispatch`` runs inline,
  no task switch, no allocation beyond the item; the band's fairness policy still hears of the
  dispatch (:meth:`~kvroute.flowcontrol.queues.FlowQueues.dispatched_inline`).
* **Queued**: the coroutine waits on a future; a single dispatcher task wakes on every enqueue,
  every :meth:`notify` (a request finished) and every ``poll_interval`` while something waits
  (scraped metrics change without a notification), and expires TTLs on time.
* **Cancellation** (the client hung up: the ext_proc stream is cancelled): the item leaves the
  queue at once. A request cancelled in the instant after it was scheduled gives its decision
  back through ``abandon``.
* **Shutdown** (:meth:`shutdown`): every queued request is answered ``rejected-shutting-down``
  and later arrivals get the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PoolExhaustedError, ServiceUnavailableError
from kvroute.flowcontrol.item import MESSAGES, QueueItem, QueueOutcome
from kvroute.flowcontrol.queues import FlowControlSettings, FlowQueues
from kvroute.scheduling.interfaces import SaturationDetector

T = TypeVar("T")

DEFAULT_POLL_INTERVAL_S = 0.005


class QueueRejectedError(PoolExhaustedError):
    """429 from flow control (``rejected-saturated``, ``rejected-ttl-expired``)."""

    def __init__(self, outcome: QueueOutcome) -> None:
        super().__init__(MESSAGES[outcome])
        self.outcome = outcome
        self.dropped_reason = outcome.dropped_reason


class QueueUnavailableError(ServiceUnavailableError):
    """503 from flow control (no endpoints, client gone, shutting down)."""

    def __init__(self, outcome: QueueOutcome) -> None:
        super().__init__(MESSAGES[outcome])
        self.outcome = outcome
        self.dropped_reason = outcome.dropped_reason


def rejection(outcome: QueueOutcome) -> QueueRejectedError | QueueUnavailableError:
    if outcome.http_status == 429:
        return QueueRejectedError(outcome)
    return QueueUnavailableError(outcome)


class FlowObserver(Protocol):
    """Metrics sink (see ``kvroute.observability.flowcontrol_metrics``)."""

    def finished(self, item: QueueItem, waited_s: float) -> None: ...

    def refresh(self, queues: FlowQueues) -> None: ...


class _Waiter(Generic[T]):
    __slots__ = ("dispatch", "future")

    def __init__(self, dispatch: Callable[[], T], future: asyncio.Future[T]) -> None:
        self.dispatch = dispatch
        self.future = future


class FlowController:
    """Queues requests by priority band and flow; dispatches while the pool has room."""

    def __init__(
        self,
        settings: FlowControlSettings,
        detector: SaturationDetector,
        endpoints: Callable[[], Sequence[Endpoint]],
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        observer: FlowObserver | None = None,
    ) -> None:
        self.queues = FlowQueues(settings)
        self.detector = detector
        self._endpoints = endpoints
        self._clock = clock
        self._poll = poll_interval
        self._observer = observer
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- the request side -----------------------------------------------------------------------

    def saturation(self, now: float | None = None) -> float:
        return self.detector.saturation(self._endpoints(), self._clock() if now is None else now)

    async def admit(
        self,
        item: QueueItem,
        dispatch: Callable[[], T],
        abandon: Callable[[T], None] | None = None,
    ) -> T:
        """Wait for ``item``'s turn, then return ``dispatch()`` (or raise its error).

        Raises :class:`QueueRejectedError` (429) or :class:`QueueUnavailableError` (503) when
        the wait ends otherwise; ``asyncio.CancelledError`` propagates after removing the item.
        """
        if self._closed:
            raise rejection(QueueOutcome.EVICTED_SHUTDOWN)
        q = self.queues
        now = self._clock()
        item.enqueued_at = now
        endpoints = self._endpoints()
        if q.count == 0 and endpoints:
            sat = self.detector.saturation(endpoints, now)
            if sat < q.settings.usage_limit.ceiling(item.priority, sat):
                q.dispatched_inline(item, now)
                self._finished(item, 0.0)
                return dispatch()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        item.payload = _Waiter(dispatch, future)
        rejected = q.enqueue(item, pool_empty=not endpoints)
        for displaced in q.take_displaced():
            self._answer(displaced, None)
        if rejected is not None:
            self._finished(item, 0.0)
            raise rejection(rejected)
        self._ensure_running()
        self.notify()
        try:
            return await future
        except asyncio.CancelledError:
            if q.remove(item, QueueOutcome.EVICTED_CONTEXT_CANCELLED):
                self._finished(item, self._clock() - item.enqueued_at)
            elif (
                abandon is not None
                and future.done()
                and not future.cancelled()
                and future.exception() is None
            ):
                abandon(future.result())  # scheduled, but nobody is left to send it
            raise

    def notify(self) -> None:
        """Something changed (a request ended, one arrived): run a dispatch cycle soon."""
        if self._wake is not None:
            self._wake.set()

    # -- the dispatcher -------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flow-control-dispatcher"
            )

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._closed:
            wake.clear()
            self.dispatch_cycle()
            q = self.queues
            if q.count == 0:
                await wake.wait()
                continue
            timeout = min(self._poll, max(0.0, q.next_expiry() - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def dispatch_cycle(self) -> int:
        """Expire TTLs, then dispatch while the pool has room. Returns requests dispatched."""
        q = self.queues
        now = self._clock()
        endpoints = self._endpoints()
        for expired in q.expire(now, pool_empty=not endpoints):
            self._answer(expired, None)
        sent = 0
        while q.count:
            sat = self.detector.saturation(endpoints, now)
            item = q.next_dispatch(sat, now)
            if item is None:
                break
            waiter: _Waiter[Any] = item.payload
            if waiter.future.done():  # cancelled between its wake-up and its cleanup
                item.outcome = QueueOutcome.EVICTED_CONTEXT_CANCELLED
                self._finished(item, now - item.enqueued_at)
                continue
            self._finished(item, now - item.enqueued_at)
            try:
                waiter.future.set_result(waiter.dispatch())
            except Exception as exc:  # the scheduling error is the request's answer
                waiter.future.set_exception(exc)
            sent += 1
            endpoints = self._endpoints()
        if self._observer is not None:
            self._observer.refresh(q)
        return sent

    def _answer(self, item: QueueItem, _: object) -> None:
        waiter: _Waiter[Any] = item.payload
        assert item.outcome is not None
        self._finished(item, self._clock() - item.enqueued_at)
        if not waiter.future.done():
            waiter.future.set_exception(rejection(item.outcome))

    def _finished(self, item: QueueItem, waited: float) -> None:
        if self._observer is not None:
            self._observer.finished(item, waited)

    # -- shutdown -------------------------------------------------------------------------------

    def shutdown(self) -> int:
        """Answer every queued request ``rejected-shutting-down``; refuse new ones."""
        self._closed = True
        drained = self.queues.drain(QueueOutcome.EVICTED_SHUTDOWN)
        for item in drained:
            self._answer(item, None)
        if self._observer is not None:
            self._observer.refresh(self.queues)
        self.notify()
        return len(drained)

    async def aclose(self) -> None:
        self.shutdown()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def slo_deadline(now: float, headers: dict[str, str] | Any) -> float:
    """Receive time + TTFT SLO from ``x-llm-d-slo-ttft-ms`` (alias ``x-slo-ttft-ms``; the new
    name wins); ``inf`` when absent or not a positive finite number."""
    raw = headers.get("x-llm-d-slo-ttft-ms") or headers.get("x-slo-ttft-ms")
    if not raw:
        return math.inf
    try:
        ms = float(raw)
    except ValueError:
        return math.inf
    if not math.isfinite(ms) or ms <= 0:
        return math.inf
    return now + ms / 1000.0
