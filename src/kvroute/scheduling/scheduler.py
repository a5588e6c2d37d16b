"""The scheduler: a profile handler drives one or more profiles over one endpoint snapshot.

Upstream loop (``scheduler.go``)::

    loop: names = handler.pick(...); if empty: break
          for each name: results[name] = profile.run(...)      # None when filters left nothing
    return handler.process_results(...)                        # picks the primary result

The cycle is synchronous and reads only the frozen ``tuple[Endpoint, ...]`` it is given, so
nothing can change under it. Errors: the handler raises
:class:`~kvroute.errors.PoolExhaustedError` (429) when the primary profile found no endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import EppError
from kvroute.scheduling.interfaces import (
    CycleState,
    CycleTrace,
    PluginTrace,
    ProfileHandler,
    ProfileResult,
    SchedulingResult,
)
from kvroute.scheduling.profile import SchedulerProfile
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.timing import PluginTimings

# The TimingKey under which the whole cycle's duration is recorded.
E2E_TIMING_KEY = ("SchedulerE2E", "scheduler", "scheduler")


class Scheduler:
    """Runs one scheduling cycle: ``schedule(request, endpoints) -> SchedulingResult``."""

    __slots__ = ("_clock", "_e2e_buf", "_handler_buf", "handler", "profiles", "timings")

    def __init__(
        self,
        handler: ProfileHandler,
        profiles: Mapping[str, SchedulerProfile],
        *,
        timings: PluginTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.profiles = dict(profiles)
        self.timings = timings
        self._clock = clock
        tn = handler.typed_name
        self._handler_buf = (
            None if timings is None else timings.series("ProfileHandler", tn.type, tn.name)
        )
        # The whole cycle (upstream ``scheduler_e2e_duration_seconds``).
        self._e2e_buf = None if timings is None else timings.series(*E2E_TIMING_KEY)
        handler.check_profiles(list(self.profiles))

    def schedule(
        self,
        request: InferenceRequest,
        endpoints: Sequence[Endpoint],
        *,
        state: CycleState | None = None,
        trace: CycleTrace | None = None,
        scores_out: dict[str, dict[str, float]] | None = None,
    ) -> SchedulingResult:
        """One cycle over ``endpoints`` (the candidates after subsetting and admission).

        ``state`` lets the director share the CycleState its PrepareData hooks wrote into;
        ``trace`` (dry runs) collects every plugin's view; ``scores_out`` receives, per profile
        that ran scorers, the weighted total of each endpoint it scored (by endpoint name).
        """
        if state is None:
            state = CycleState(self._clock())
        handler = self.handler
        profiles = self.profiles
        results: dict[str, ProfileResult | None] = {}
        t0 = time.perf_counter()
        handler_s = 0.0
        while True:
            t1 = time.perf_counter()
            names = handler.pick(state, request, profiles, results)
            handler_s += time.perf_counter() - t1
            if not names:
                break
            for name in names:
                profile = profiles.get(name)
                if profile is None or name in results:
                    raise EppError(f"profile handler {handler.typed_name} picked {name!r} twice")
                if trace is None:
                    if scores_out is None:
                        results[name] = profile.run(state, request, endpoints)
                        continue
                    totals_only: dict[str, float] = {}
                    results[name] = profile.run(state, request, endpoints, None, totals_only)
                    if totals_only and profile.scorers:
                        scores_out[name] = totals_only
                else:
                    plugin_traces: list[PluginTrace] = []
                    totals: dict[str, float] = {}
                    trace.profiles[name] = plugin_traces
                    results[name] = profile.run(state, request, endpoints, plugin_traces, totals)
                    if totals:
                        trace.totals[name] = totals
        t1 = time.perf_counter()
        result = handler.process_results(state, request, results)
        t2 = time.perf_counter()
        if self._handler_buf is not None and self._e2e_buf is not None:
            self._handler_buf.append(handler_s + t2 - t1)
            self._e2e_buf.append(t2 - t0)
        return result
