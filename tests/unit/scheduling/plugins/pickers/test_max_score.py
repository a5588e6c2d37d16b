"""max-score-picker: highest total wins; equal totals are broken uniformly at random."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from kvroute.scheduling.interfaces import ScoredEndpoint
from kvroute.scheduling.plugins.pickers.max_score import MaxScorePicker
from kvroute.scheduling.profile import ScoredView
from tests.fakes import make_endpoint, make_state, names

EPS = [make_endpoint(f"e{i}") for i in range(5)]


def _view(scores: list[float]) -> ScoredView:
    eps = EPS[: len(scores)]
    return ScoredView(eps, {e.name: s for e, s in zip(eps, scores, strict=True)})


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ([0.1, 0.9, 0.5], 1, ["e1"]),
        ([0.1, 0.9, 0.5], 2, ["e1", "e2"]),
        ([0.1, 0.9, 0.5], 3, ["e1", "e2", "e0"]),
        ([0.1, 0.9, 0.5], 10, ["e1", "e2", "e0"]),
        ([3.0, 0.0, 7.0, 1.0], 1, ["e2"]),
    ],
    ids=["best", "top 2 in order", "all in order", "k beyond candidates", "totals above 1"],
)
def test_max_score_picker_orders_by_score(scores: list[float], k: int, expected: list[str]) -> None:
    picker = MaxScorePicker(max_num_of_endpoints=k, rng=random.Random(0))
    assert names(picker.pick(make_state(), _view(scores)).targets) == expected


def test_ties_are_broken_uniformly() -> None:
    picker = MaxScorePicker(rng=random.Random(42))
    counts = Counter(
        picker.pick(make_state(), _view([0.5, 0.9, 0.9, 0.9, 0.1])).targets[0].name
        for _ in range(3000)
    )
    assert set(counts) == {"e1", "e2", "e3"}
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_ties_inside_top_k_are_shuffled_and_boundary_group_sampled() -> None:
    picker = MaxScorePicker(max_num_of_endpoints=2, rng=random.Random(7))
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        targets = names(picker.pick(make_state(), _view([0.9, 0.5, 0.5, 0.5])).targets)
        assert targets[0] == "e0"
        assert targets[1] in {"e1", "e2", "e3"}
        firsts[targets[1]] += 1
    assert all(500 < c < 840 for c in firsts.values()), firsts


def test_third_party_sequence_input_gives_the_same_answer() -> None:
    scored = [ScoredEndpoint(e, s) for e, s in zip(EPS[:3], [0.2, 0.1, 0.7], strict=True)]
    picker = MaxScorePicker(max_num_of_endpoints=2, rng=random.Random(0))
    assert names(picker.pick(make_state(), scored).targets) == ["e2", "e0"]


def test_no_candidates_no_targets() -> None:
    assert MaxScorePicker().pick(make_state(), ScoredView([], {})).targets == ()


def _outcome(picker: MaxScorePicker, view: ScoredView) -> list[str] | str:
    """The names picked, or the error raised (a NaN first total leaves no tie to draw from)."""
    try:
        return names(picker.pick(make_state(), view).targets)
    except IndexError as exc:
        return f"IndexError: {exc}"


def test_aligned_column_view_picks_as_the_dict_view_with_the_same_draws() -> None:
    """The profile's view (totals as a list aligned with the endpoints) and a dict view of the
    same totals: same pick and the same RNG state after it, over random totals with exact ties,
    near ties within the tolerance, NaN and infinities, for several tolerances and seeds."""
    rng = random.Random(3)
    eps = [make_endpoint(f"e{i}") for i in range(40)]
    specials = [math.nan, math.inf, -math.inf, 0.0, 1.0, 2.5]
    for case in range(400):
        n = rng.randint(1, len(eps))
        levels = [rng.random() * 3 for _ in range(rng.randint(1, 4))]
        totals = [
            rng.choice(specials)
            if rng.random() < 0.05
            else rng.choice(levels) + (rng.random() * 0.06 if rng.random() < 0.3 else 0.0)
            for _ in range(n)
        ]
        tol = rng.choice([0.0, 0.05, 0.5])
        fast = MaxScorePicker(rng=random.Random(case), tie_tolerance=tol)
        slow = MaxScorePicker(rng=random.Random(case), tie_tolerance=tol)
        view = ScoredView.aligned(eps[:n], list(totals))
        dict_view = ScoredView(eps[:n], dict(zip([e.name for e in eps[:n]], totals, strict=True)))
        assert _outcome(fast, view) == _outcome(slow, dict_view), (case, totals)
        assert fast.rng.getstate() == slow.rng.getstate(), case


def test_aligned_column_view_reads_as_its_totals() -> None:
    view = ScoredView.aligned(EPS[:3], [0.2, 0.1, 0.7])
    assert view.totals == {"e0": 0.2, "e1": 0.1, "e2": 0.7}
    assert [s.score for s in view] == [0.2, 0.1, 0.7]
    picker = MaxScorePicker(max_num_of_endpoints=2, rng=random.Random(0))
    assert names(picker.pick(make_state(), view).targets) == ["e2", "e0"]
