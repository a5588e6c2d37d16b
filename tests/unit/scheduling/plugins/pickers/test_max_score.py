"""max-score-picker: highest total wins; equal totals are broken uniformly at random."""

from __future__ import annotations

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
