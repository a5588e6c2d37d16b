"""Scheduler: the profile-handler loop, multi-profile results, tracing across profiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import EppError, PoolExhaustedError
from kvroute.plugins.base import TypedName
from kvroute.scheduling.interfaces import (
    CycleState,
    CycleTrace,
    ProfileResult,
    ProfileRunner,
    SchedulingResult,
)
from kvroute.scheduling.plugins.filters.utilization_detector import UtilizationDetector
from kvroute.scheduling.plugins.pickers.max_score import MaxScorePicker
from kvroute.scheduling.plugins.profile_handlers.single_profile import SingleProfileHandler
from kvroute.scheduling.plugins.scorers.kv_cache_utilization import KvCacheUtilizationScorer
from kvroute.scheduling.plugins.scorers.queue import QueueScorer
from kvroute.scheduling.profile import SchedulerProfile, WeightedScorer
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scheduler import Scheduler
from tests.fakes import NOW, make_endpoint, make_request, names

EPS = (
    make_endpoint("e0", waiting=4, kv=0.1),
    make_endpoint("e1", waiting=0, kv=0.9),
    make_endpoint("e2", waiting=2, kv=0.5),
)


class TwoRoundHandler:
    """Runs "prefill" first, then "decode" in a second round; decode is primary (P/D-like)."""

    def __init__(self) -> None:
        self.typed_name = TypedName("two-round-handler", "two-round")
        self.rounds: list[list[str]] = []

    def check_profiles(self, names: Sequence[str]) -> None:
        assert set(names) == {"prefill", "decode"}

    def pick(
        self,
        state: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, ProfileRunner],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        todo = [] if "decode" in results else ["decode"] if "prefill" in results else ["prefill"]
        self.rounds.append(todo)
        return todo

    def process_results(
        self,
        state: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        return SchedulingResult(dict(results), "decode")


def _profile(name: str, scorer: QueueScorer | KvCacheUtilizationScorer) -> SchedulerProfile:
    return SchedulerProfile(name, [], [WeightedScorer(scorer, 1.0)], MaxScorePicker())


def test_handler_drives_several_rounds() -> None:
    handler = TwoRoundHandler()
    scheduler = Scheduler(
        handler,
        {
            "prefill": _profile("prefill", QueueScorer()),
            "decode": _profile("decode", KvCacheUtilizationScorer()),
        },
    )
    result = scheduler.schedule(make_request(), EPS, state=CycleState(NOW))
    assert handler.rounds == [["prefill"], ["decode"], []]
    assert result.primary_profile == "decode"
    prefill = result.profile_results["prefill"]
    assert prefill is not None
    assert names(prefill.targets) == ["e1"]
    assert result.primary is not None
    assert names(result.primary.targets) == ["e0"]


def test_trace_has_one_entry_per_profile() -> None:
    scheduler = Scheduler(
        TwoRoundHandler(),
        {
            "prefill": _profile("prefill", QueueScorer()),
            "decode": _profile("decode", KvCacheUtilizationScorer()),
        },
    )
    trace = CycleTrace()
    scheduler.schedule(make_request(), EPS, trace=trace)
    assert list(trace.profiles) == ["prefill", "decode"]
    assert trace.totals["prefill"] == pytest.approx({"e0": 0.0, "e1": 1.0, "e2": 0.5})
    assert trace.totals["decode"] == pytest.approx({"e0": 0.9, "e1": 0.1, "e2": 0.5})


class RepeatingHandler(TwoRoundHandler):
    def pick(
        self,
        state: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, ProfileRunner],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        return ["prefill"]


def test_handler_picking_a_profile_twice_is_an_error() -> None:
    scheduler = Scheduler(
        RepeatingHandler(),
        {
            "prefill": _profile("prefill", QueueScorer()),
            "decode": _profile("decode", QueueScorer()),
        },
    )
    with pytest.raises(EppError, match="picked 'prefill' twice"):
        scheduler.schedule(make_request(), EPS)


def test_single_profile_failure_propagates_as_429() -> None:
    stale_only = SchedulerProfile(
        "default",
        [_EmptyFilter()],
        [],
        MaxScorePicker(),
    )
    scheduler = Scheduler(SingleProfileHandler(), {"default": stale_only})
    with pytest.raises(PoolExhaustedError, match="filter empty/empty-filter left no endpoints"):
        scheduler.schedule(make_request(), EPS)


class _EmptyFilter:
    typed_name = TypedName("empty-filter", "empty")

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        return []


def test_cycle_state_now_comes_from_the_clock() -> None:
    seen: list[float] = []

    class Spy(UtilizationDetector):
        def filter(
            self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
        ) -> Sequence[Endpoint]:
            seen.append(state.now)
            return super().filter(state, request, endpoints)

    profile = SchedulerProfile("default", [Spy()], [], MaxScorePicker())
    Scheduler(SingleProfileHandler(), {"default": profile}, clock=lambda: 42.0).schedule(
        make_request(), EPS
    )
    assert seen == [42.0]


def test_scores_out_holds_each_profiles_totals_and_leaves_the_pick_alone() -> None:
    scheduler = Scheduler(
        TwoRoundHandler(),
        {
            "prefill": _profile("prefill", QueueScorer()),
            "decode": _profile("decode", KvCacheUtilizationScorer()),
        },
    )
    scores: dict[str, dict[str, float]] = {}
    result = scheduler.schedule(make_request(), EPS, scores_out=scores)
    assert scores["prefill"] == pytest.approx({"e0": 0.0, "e1": 1.0, "e2": 0.5})
    assert scores["decode"] == pytest.approx({"e0": 0.9, "e1": 0.1, "e2": 0.5})
    assert result.primary is not None
    assert names(result.primary.targets) == ["e0"]  # same pick as without scores


def test_scores_out_skips_a_profile_without_scorers() -> None:
    profile = SchedulerProfile("default", [], [], MaxScorePicker())
    scheduler = Scheduler(SingleProfileHandler(), {"default": profile})
    scores: dict[str, dict[str, float]] = {}
    scheduler.schedule(make_request(), EPS, scores_out=scores)
    assert scores == {}
