"""The virtual-time shell: drive one engine on a simulated clock (no sockets, no sleeping).

``VirtualServer`` is the single-replica driver the calibration uses and the reference a
discrete-event cluster harness can copy: it keeps the time at which the engine's current step
ends (``busy_until``) and advances the engine up to any time ``t`` with ``advance(t)``::

    vs = VirtualServer(engine)
    vs.submit(SimRequest("a", prompt_token_ids=ids, max_tokens=64, arrival_time=0.0))
    vs.advance(10.0)          # runs every step that *starts* at or before t=10.0
    vs.run_until_idle()       # or run until nothing is left
    vs.token_times["a"]       # per-token emission times, when record_tokens=True

A cluster harness with many replicas keeps one ``VirtualServer`` per replica and calls
``advance(t)`` on each before routing an arrival at ``t`` (and before scraping its metrics):
every step that began by ``t`` has then been applied, exactly as in the real-time shell, where a
request arriving during a step is seen by the next one.
"""

from __future__ import annotations

from collections.abc import Callable

from kvroute_sim.engine import Engine, SimRequest, StepOutcome


class VirtualServer:
    """Advance an ``Engine`` through virtual time, step after step."""

    __slots__ = ("busy_until", "engine", "on_step", "record_tokens", "token_times")

    def __init__(
        self,
        engine: Engine,
        *,
        record_tokens: bool = False,
        on_step: Callable[[StepOutcome], None] | None = None,
    ) -> None:
        self.engine = engine
        self.busy_until = 0.0  # the end of the last step taken
        self.record_tokens = record_tokens
        self.token_times: dict[str, list[float]] = {}
        self.on_step = on_step

    def submit(self, req: SimRequest) -> None:
        """Hand a request to the engine (it becomes schedulable after the API overhead)."""
        self.engine.add_request(req)
        if self.record_tokens:
            self.token_times[req.request_id] = []

    def advance(self, t: float) -> None:
        """Run every step that starts at or before ``t``; the last may end after ``t``."""
        engine = self.engine
        while True:
            start = engine.next_step_time(self.busy_until)
            if start is None or start > t:
                return
            out = engine.step(start)
            if out.duration == 0.0:
                # Nothing schedulable at ``start`` (e.g. arrivals still in the API overhead):
                # wait for the next arrival rather than spin.
                nxt = engine.next_step_time(start + 1e-9)
                if nxt is None or nxt <= start:
                    return
                self.busy_until = start
                if nxt > t:
                    return
                continue
            self.busy_until = out.end
            if self.record_tokens:
                times = self.token_times
                end = out.end
                for req in out.emitted:
                    times[req.request_id].append(end)
            if self.on_step is not None:
                self.on_step(out)

    def run_until_idle(self, limit: float = float("inf")) -> None:
        """Advance until the engine has no work (or no step starts by virtual time ``limit``)."""
        self.advance(limit)
