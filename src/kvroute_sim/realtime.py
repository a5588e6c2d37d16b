"""The real-time shell: drive one engine from an asyncio task on the wall clock.

The engine's timeline stays virtual: time 0 is when the shell started, a request's arrival is
stamped ``now()`` when it is submitted, and each step starts exactly when the previous one
ended (or when the next request becomes schedulable). The shell sleeps until each step's
virtual start, runs it, sleeps until its virtual end and then delivers its tokens. Timings are
therefore a pure function of the arrival stamps, the same as in ``VirtualServer``.

Falling behind: when the loop wakes later than a step's virtual start or end (the CPU is busy
with other servers or clients), clients would see inflated latencies. The shell measures that
lag for every step, counts steps later than ``lag_warn_s`` in ``steps_late``, keeps the largest
lag, and logs a warning at most every ``warn_every_s`` seconds. It does not hide the lag: the
engine keeps its ideal timeline and catches up by running late steps back to back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from kvroute_sim.engine import Engine, SimRequest, StepOutcome

log = logging.getLogger(__name__)

# One token (its index) or None when the request has finished.
TokenQueue = asyncio.Queue[int | None]


class RealtimeEngine:
    """Run an ``Engine`` in real time; ``submit`` returns a queue of token indices."""

    def __init__(
        self,
        engine: Engine,
        *,
        name: str = "sim",
        lag_warn_s: float = 0.005,
        warn_every_s: float = 5.0,
        on_step: Callable[[StepOutcome], None] | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.lag_warn_s = lag_warn_s
        self.warn_every_s = warn_every_s
        self.on_step = on_step
        self._t0 = 0.0
        self._busy_until = 0.0
        self._queues: dict[str, TokenQueue] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_warn = -1e18
        self.steps_late = 0
        self.max_lag_s = 0.0
        self.lag_sum_s = 0.0
        self.num_lag_samples = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds on the engine's timeline (loop time since ``start``)."""
        return asyncio.get_running_loop().time() - self._t0

    async def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        self._busy_until = 0.0
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-engine")
        self._task.add_done_callback(self._on_exit)

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        """A crashed engine loop must not leave clients waiting forever: log and end them."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s: engine loop crashed", self.name, exc_info=task.exception())
        for q in self._queues.values():
            q.put_nowait(None)
        self._queues.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A crash was already logged by ``_on_exit``; stopping must still succeed.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for q in self._queues.values():
            q.put_nowait(None)
        self._queues.clear()

    # --- requests -----------------------------------------------------------------------------

    def submit(self, req: SimRequest) -> TokenQueue:
        """Stamp ``req`` with the current time, queue it, and return its token queue.

        Raises ``RequestRejected`` (from the engine) for requests that can never run.
        """
        req.arrival_time = self.now()
        self.engine.add_request(req)
        q: TokenQueue = asyncio.Queue()
        self._queues[req.request_id] = q
        self._wake.set()
        return q

    def abort(self, request_id: str) -> None:
        """The client went away: drop the request and its KV blocks."""
        self._queues.pop(request_id, None)
        self.engine.abort(request_id)

    @property
    def mean_lag_s(self) -> float:
        return self.lag_sum_s / self.num_lag_samples if self.num_lag_samples else 0.0

    # --- the loop -----------------------------------------------------------------------------

    def _record_lag(self, target: float) -> None:
        lag = self.now() - target
        if lag < 0.0:
            lag = 0.0
        self.lag_sum_s += lag
        self.num_lag_samples += 1
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        if lag > self.lag_warn_s:
            self.steps_late += 1
            wall = self.now()
            if wall - self._last_warn >= self.warn_every_s:
                self._last_warn = wall
                log.warning(
                    "%s: falling behind real time: a step ran %.1f ms late "
                    "(%d late steps so far); reported latencies are inflated",
                    self.name,
                    lag * 1e3,
                    self.steps_late,
                )

    async def _sleep_until(self, target: float) -> None:
        delay = target - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _run(self) -> None:
        engine = self.engine
        while True:
            start = engine.next_step_time(self._busy_until)
            if start is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._sleep_until(start)
            self._record_lag(start)
            out = engine.step(start)
            if out.duration == 0.0:
                self._busy_until = start
                if engine.next_step_time(start) == start:
                    # Nothing can run until something changes (should not happen): wait.
                    self._wake.clear()
                    await self._wake.wait()
                continue
            self._busy_until = out.end
            await self._sleep_until(out.end)
            self._deliver(out)

    def _deliver(self, out: StepOutcome) -> None:
        queues = self._queues
        for req in out.emitted:
            q = queues.get(req.request_id)
            if q is not None:
                q.put_nowait(req.num_output_tokens - 1)
        for req in out.finished:
            q = queues.pop(req.request_id, None)
            if q is not None:
                q.put_nowait(None)
        if self.on_step is not None:
            self.on_step(out)
