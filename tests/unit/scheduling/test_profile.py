"""SchedulerProfile: the framework's invariants (clamp, weight, filter short-circuit, tracing)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName
from kvroute.scheduling.interfaces import (
    PROFILE_FAILURES,
    CycleState,
    PluginTrace,
    ProfileResult,
    ScoredEndpoint,
    ScorerCategory,
)
from kvroute.scheduling.plugins.pickers.max_score import MaxScorePicker
from kvroute.scheduling.profile import (
    SchedulerProfile,
    ScoredView,
    WeightedScorer,
    clamp01,
)
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.timing import PluginTimings
from tests.fakes import make_endpoint, make_request, make_state, names

EPS = (make_endpoint("e0"), make_endpoint("e1"), make_endpoint("e2"))


class FixedScorer:
    """Returns the scores it was given (for framework tests; real scorers are tested apart)."""

    category = ScorerCategory.DISTRIBUTION

    def __init__(self, name: str, scores: Mapping[str, float]) -> None:
        self.typed_name = TypedName("fixed-scorer", name)
        self.scores = dict(scores)
        self.seen: list[list[str]] = []

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        self.seen.append(names(endpoints))
        return self.scores


class KeepFilter:
    def __init__(self, name: str, keep: set[str]) -> None:
        self.typed_name = TypedName("keep-filter", name)
        self.keep = keep
        self.calls = 0

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        self.calls += 1
        return [e for e in endpoints if e.name in self.keep]


class RecordingPicker:
    """Picks the first endpoint and keeps what it was given."""

    def __init__(self) -> None:
        self.typed_name = TypedName("recording-picker", "recording-picker")
        self.seen: list[tuple[str, float]] = []

    def pick(self, state: CycleState, scored: Sequence[ScoredEndpoint]) -> ProfileResult:
        self.seen = [(s.endpoint.name, s.score) for s in scored]
        return ProfileResult((scored[0].endpoint,) if scored else ())


def _totals(scorers: list[WeightedScorer]) -> dict[str, float]:
    picker = RecordingPicker()
    SchedulerProfile("p", [], scorers, picker).run(make_state(), make_request(), EPS)
    return dict(picker.seen)


TOTAL_CASES = [
    ([({"e0": 0.5, "e1": 1.0, "e2": 0.0}, 1.0)], {"e0": 0.5, "e1": 1.0, "e2": 0.0}),
    ([({"e0": 0.5, "e1": 1.0, "e2": 0.0}, 2.0)], {"e0": 1.0, "e1": 2.0, "e2": 0.0}),
    (
        [({"e0": 1.0, "e1": 0.0, "e2": 0.5}, 2.0), ({"e0": 0.0, "e1": 1.0, "e2": 0.5}, 3.0)],
        {"e0": 2.0, "e1": 3.0, "e2": 2.5},
    ),
    ([({"e0": 1.7, "e1": -0.3, "e2": 0.4}, 1.0)], {"e0": 1.0, "e1": 0.0, "e2": 0.4}),
    ([({"e0": math.nan, "e1": math.inf, "e2": -math.inf}, 1.0)], {"e0": 0.0, "e1": 1.0, "e2": 0.0}),
    ([({"e0": 0.5}, 1.0)], {"e0": 0.5, "e1": 0.0, "e2": 0.0}),
    ([({"e0": 0.5, "ghost": 1.0, "e1": 0.2, "e2": 0.1}, 1.0)], {"e0": 0.5, "e1": 0.2, "e2": 0.1}),
    ([({"e0": 0.5, "e1": 0.2, "e2": 0.1}, 0.0)], {"e0": 0.0, "e1": 0.0, "e2": 0.0}),
    ([], {"e0": 0.0, "e1": 0.0, "e2": 0.0}),
]
TOTAL_IDS = [
    "weight 1",
    "weight multiplies",
    "weighted sum of two scorers",
    "out of range clamped",
    "nan is 0, infinities clamp",
    "missing endpoints total 0",
    "unknown keys ignored",
    "weight 0 silences a scorer",
    "no scorers: all totals 0",
]


@pytest.mark.parametrize(("scorers", "expected"), TOTAL_CASES, ids=TOTAL_IDS)
def test_weighted_totals(
    scorers: list[tuple[dict[str, float], float]], expected: dict[str, float]
) -> None:
    weighted = [WeightedScorer(FixedScorer(f"s{i}", s), w) for i, (s, w) in enumerate(scorers)]
    assert _totals(weighted) == pytest.approx(expected)


def test_filters_run_in_order_and_scorers_see_survivors() -> None:
    f1, f2 = KeepFilter("f1", {"e0", "e1"}), KeepFilter("f2", {"e1", "e2"})
    scorer = FixedScorer("s", {"e1": 1.0})
    picker = RecordingPicker()
    result = SchedulerProfile("p", [f1, f2], [WeightedScorer(scorer, 1.0)], picker).run(
        make_state(), make_request(), EPS
    )
    assert result is not None
    assert names(result.targets) == ["e1"]
    assert scorer.seen == [["e1"]]
    assert picker.seen == [("e1", 1.0)]


def test_filter_leaving_nothing_stops_the_chain() -> None:
    empty, later = KeepFilter("empty", set()), KeepFilter("later", {"e0"})
    scorer = FixedScorer("s", {})
    state = make_state()
    profile = SchedulerProfile(
        "p", [empty, later], [WeightedScorer(scorer, 1.0)], RecordingPicker()
    )
    assert profile.run(state, make_request(), EPS) is None
    assert later.calls == 0
    assert scorer.seen == []
    assert state.read(PROFILE_FAILURES) == {"p": "filter empty/keep-filter left no endpoints"}


def test_traced_run_matches_untraced_and_records_each_plugin() -> None:
    f = KeepFilter("f", {"e0", "e2"})
    s1 = FixedScorer("s1", {"e0": 0.2, "e2": 1.5})
    s2 = FixedScorer("s2", {"e0": 1.0, "e2": 0.1})
    scorers = [WeightedScorer(s1, 2.0), WeightedScorer(s2, 1.0)]
    plain = SchedulerProfile("p", [f], scorers, MaxScorePicker(rng=random.Random(0)))
    traced = SchedulerProfile("p", [f], scorers, MaxScorePicker(rng=random.Random(0)))
    trace: list[PluginTrace] = []
    totals: dict[str, float] = {}
    a = plain.run(make_state(), make_request(), EPS)
    b = traced.run(make_state(), make_request(), EPS, trace, totals)
    assert a is not None
    assert b is not None
    assert names(a.targets) == names(b.targets) == ["e2"]
    assert [t.kind for t in trace] == ["filter", "scorer", "scorer", "picker"]
    assert trace[0].survivors == ["e0", "e2"]
    assert trace[1].raw_scores == {"e0": 0.2, "e2": 1.5}
    assert trace[1].scores == {"e0": 0.2, "e2": 1.0}
    assert trace[1].weight == 2.0
    assert trace[3].picked == ["e2"]
    assert totals == pytest.approx({"e0": 1.4, "e2": 2.1})


def test_timings_record_every_plugin_per_run() -> None:
    timings = PluginTimings()
    profile = SchedulerProfile(
        "p",
        [KeepFilter("f", {"e0"})],
        [WeightedScorer(FixedScorer("s", {"e0": 1.0}), 1.0)],
        MaxScorePicker(),
        timings,
    )
    for _ in range(3):
        profile.run(make_state(), make_request(), EPS)
    drained = timings.drain()
    assert {(k.extension_point, k.plugin_name): len(v) for k, v in drained.items()} == {
        ("Filter", "f"): 3,
        ("Scorer", "s"): 3,
        ("Picker", "max-score-picker"): 3,
    }
    assert all(x >= 0.0 for v in drained.values() for x in v)
    assert timings.drain() == {}


def test_timing_buffer_is_bounded() -> None:
    timings = PluginTimings(max_samples=2)
    buf = timings.series("Filter", "t", "n")
    for x in (1.0, 2.0, 3.0):
        buf.append(x)
    assert list(timings.drain().values()) == [[2.0, 3.0]]


def test_scored_view_is_a_sequence_of_scored_endpoints() -> None:
    view = ScoredView(EPS, {"e0": 0.1, "e1": 0.2, "e2": 0.3})
    assert len(view) == 3
    assert view[1] == ScoredEndpoint(EPS[1], 0.2)
    assert [s.score for s in view] == [0.1, 0.2, 0.3]
    assert [s.endpoint.name for s in view[1:]] == ["e1", "e2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (-1.0, 0.0), (2.0, 1.0), (math.nan, 0.0), (0.0, 0.0), (1.0, 1.0)],
    ids=["inside", "negative", "above", "nan", "zero", "one"],
)
def test_clamp01(value: float, expected: float) -> None:
    assert clamp01(value) == expected
