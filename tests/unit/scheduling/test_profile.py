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
    Scorer,
    ScorerCategory,
)
from kvroute.scheduling.plugins.pickers.max_score import MaxScorePicker
from kvroute.scheduling.profile import (
    SchedulerProfile,
    ScoredView,
    WeightedScorer,
    _accumulate,
    clamp01,
)
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.scores import ScoreColumn
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


class ColumnScorer:
    """Returns a :class:`ScoreColumn` over the candidates it is given (values or uniform)."""

    category = ScorerCategory.DISTRIBUTION

    def __init__(
        self,
        name: str,
        column: list[float] | None,
        value: float = 0.0,
        *,
        unit: bool = False,
        only: Mapping[str, float] | None = None,
    ) -> None:
        self.typed_name = TypedName("column-scorer", name)
        self.column = column
        self.value = value
        self.unit = unit
        self.only = only

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        if self.only is not None:
            return ScoreColumn.sparse(endpoints, self.only)
        if self.column is None:
            return ScoreColumn.uniform(endpoints, self.value)
        return ScoreColumn(endpoints, self.column[: len(endpoints)], unit=self.unit)


def _bits(totals: Mapping[str, float]) -> dict[str, str]:
    return {k: v.hex() for k, v in totals.items()}


def test_column_totals_are_bit_identical_to_dict_accumulation() -> None:
    """Random mixes of dense dicts (in and out of candidate order), sparse dicts, dicts with
    unknown keys, NaN / infinities / out-of-range values, aligned columns (clamped or ``unit``),
    uniform columns (runs of them, before and after the first column) and sparse columns, with
    the odd infinite weight: the fast path's totals equal, bit for bit, what plain dict
    accumulation (``_accumulate``, which the traced path uses) gives, and so does a scorer
    returning the same values as a dict.
    """
    rng = random.Random(11)
    eps = tuple(make_endpoint(f"e{i}") for i in range(12))
    specials = [math.nan, math.inf, -math.inf, -0.0, 1.5, -0.25, 1.0, 0.0]
    for case in range(600):
        scorers: list[WeightedScorer] = []
        for j in range(rng.randint(1, 9)):
            vals = [rng.choice(specials) if rng.random() < 0.1 else rng.random() for _ in eps]
            kind = rng.randrange(8)
            w = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, 1 / 3, math.inf if case % 7 == 0 else 1.0])
            s: Scorer
            if kind == 0:
                s = ColumnScorer(f"c{j}", vals)
            elif kind in (1, 5):
                s = ColumnScorer(f"u{j}", None, rng.choice([0.0, 1.0, rng.random(), math.nan]))
            elif kind == 6:
                unit_vals = [rng.choice([0.0, 1.0, rng.random()]) for _ in eps]
                s = ColumnScorer(f"n{j}", unit_vals, unit=True)
            elif kind == 7:
                only = {e.name: v for e, v in zip(eps, vals, strict=True) if rng.random() < 0.3}
                s = ColumnScorer(f"p{j}", None, only={"ghost": 1.0, **only})
            elif kind == 2:
                pairs = list(zip([e.name for e in eps], vals, strict=True))
                rng.shuffle(pairs)
                s = FixedScorer(f"d{j}", dict(pairs))
            elif kind == 3:
                s = FixedScorer(
                    f"s{j}", {e.name: v for e, v in zip(eps, vals, strict=True) if v > 0.5}
                )
            else:
                extra = {e.name: v for e, v in zip(eps[1:], vals, strict=False)}
                s = FixedScorer(f"x{j}", {"ghost": 0.9, **extra})
            scorers.append(WeightedScorer(s, w))
        fast: dict[str, float] = {}
        SchedulerProfile("p", [], scorers, RecordingPicker()).run(
            make_state(), make_request(), eps, None, fast
        )
        slow = dict.fromkeys([e.name for e in eps], 0.0)
        for ws in scorers:
            _accumulate(slow, dict(ws.scorer.score(make_state(), make_request(), eps)), ws.weight)
        assert _bits(fast) == _bits(slow)


def test_score_column_reads_as_the_dict_it_replaces() -> None:
    eps = (make_endpoint("a"), make_endpoint("b"))
    col = ScoreColumn(eps, [0.25, 1.0])
    assert col == {"a": 0.25, "b": 1.0}
    assert dict.__eq__({"a": 0.25, "b": 1.0}, col) is NotImplemented  # so == reflects to col
    assert {"a": 0.25, "b": 1.0} == col  # noqa: SIM300 (the reflected comparison is the test)
    assert dict(col) == {"a": 0.25, "b": 1.0}
    assert col["b"] == 1.0
    assert "a" in col
    assert "z" not in col
    assert len(col) == 2
    assert list(col.values()) == [0.25, 1.0]
    assert ScoreColumn.uniform(eps, 1.0) == {"a": 1.0, "b": 1.0}
    assert not ScoreColumn.uniform((), 1.0)
    with pytest.raises(ValueError, match="1 values for 2 endpoints"):
        ScoreColumn(eps, [0.5])


def test_duplicate_candidate_names_keep_one_total_per_name() -> None:
    eps = (make_endpoint("a"), make_endpoint("a"), make_endpoint("b"))
    totals: dict[str, float] = {}
    scorers = [WeightedScorer(ColumnScorer("c", [0.1, 0.2, 0.3]), 1.0)]
    SchedulerProfile("p", [], scorers, MaxScorePicker()).run(
        make_state(), make_request(), eps, None, totals
    )
    assert totals == {"a": 0.2, "b": 0.3}  # the dict path: a later name wins, as in a dict
