"""random-picker: uniform, ignores scores, distinct endpoints up to maxNumOfEndpoints."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvroute.scheduling.plugins.pickers.random_picker import RandomPicker
from kvroute.scheduling.profile import ScoredView
from tests.fakes import make_endpoint, make_state, names

EPS = [make_endpoint(f"e{i}") for i in range(4)]
VIEW = ScoredView(EPS, {"e0": 9.0, "e1": 0.0, "e2": 0.0, "e3": 0.0})


def test_uniform_regardless_of_scores() -> None:
    picker = RandomPicker(rng=random.Random(3))
    counts = Counter(picker.pick(make_state(), VIEW).targets[0].name for _ in range(4000))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert all(850 < c < 1150 for c in counts.values()), counts


@pytest.mark.parametrize(
    ("k", "expected_len"), [(1, 1), (3, 3), (9, 4)], ids=["one", "three", "capped"]
)
def test_returns_distinct_endpoints(k: int, expected_len: int) -> None:
    picker = RandomPicker(max_num_of_endpoints=k, rng=random.Random(1))
    targets = names(picker.pick(make_state(), VIEW).targets)
    assert len(targets) == expected_len
    assert len(set(targets)) == expected_len


def test_no_candidates_no_targets() -> None:
    assert RandomPicker().pick(make_state(), ScoredView([], {})).targets == ()
