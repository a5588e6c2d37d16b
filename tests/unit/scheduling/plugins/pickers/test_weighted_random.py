"""weighted-random-picker: A-Res sampling proportional to score; zero scores only as last resort."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvroute.scheduling.plugins.pickers.weighted_random import WeightedRandomPicker
from kvroute.scheduling.profile import ScoredView
from tests.fakes import make_endpoint, make_state, names

EPS = [make_endpoint(f"e{i}") for i in range(4)]


def _view(scores: list[float]) -> ScoredView:
    return ScoredView(EPS[: len(scores)], {f"e{i}": s for i, s in enumerate(scores)})


def test_picks_in_proportion_to_score() -> None:
    picker = WeightedRandomPicker(rng=random.Random(11))
    counts = Counter(
        picker.pick(make_state(), _view([1.0, 2.0, 3.0, 4.0])).targets[0].name
        for _ in range(10_000)
    )
    for i, share in enumerate([0.1, 0.2, 0.3, 0.4]):
        assert counts[f"e{i}"] / 10_000 == pytest.approx(share, abs=0.02), counts


def test_zero_score_never_beats_a_positive_one() -> None:
    picker = WeightedRandomPicker(max_num_of_endpoints=2, rng=random.Random(5))
    for _ in range(500):
        targets = names(picker.pick(make_state(), _view([0.0, 0.001, 0.0, 0.0])).targets)
        assert targets[0] == "e1"
        assert targets[1] in {"e0", "e2", "e3"}


def test_all_zero_falls_back_to_uniform() -> None:
    picker = WeightedRandomPicker(rng=random.Random(9))
    counts = Counter(
        picker.pick(make_state(), _view([0.0, 0.0, 0.0, 0.0])).targets[0].name for _ in range(4000)
    )
    assert all(850 < c < 1150 for c in counts.values()), counts


@pytest.mark.parametrize(
    ("k", "expected_len"), [(2, 2), (4, 4), (8, 4)], ids=["two", "all", "capped"]
)
def test_fallback_list_is_distinct(k: int, expected_len: int) -> None:
    picker = WeightedRandomPicker(max_num_of_endpoints=k, rng=random.Random(2))
    targets = names(picker.pick(make_state(), _view([0.5, 0.5, 0.2, 0.9])).targets)
    assert len(targets) == expected_len == len(set(targets))
