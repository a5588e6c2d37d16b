"""running-requests-size-scorer: min-max over running requests, fewest is best."""

from __future__ import annotations

import pytest

from kvroute.scheduling.plugins.scorers.running_requests import RunningRequestsSizeScorer
from tests.fakes import make_endpoint, make_request, make_state


@pytest.mark.parametrize(
    ("running", "expected"),
    [
        ([0, 10, 20], [1.0, 0.5, 0.0]),
        ([4, 4], [1.0, 1.0]),
        ([9, 1, 5], [0.0, 1.0, 0.5]),
    ],
    ids=["spread", "all equal score 1", "unordered input"],
)
def test_running_requests_size_scorer(running: list[int], expected: list[float]) -> None:
    endpoints = [make_endpoint(f"e{i}", running=r) for i, r in enumerate(running)]
    scores = RunningRequestsSizeScorer().score(make_state(), make_request(), endpoints)
    assert [scores[e.name] for e in endpoints] == pytest.approx(expected)


def test_ignores_waiting_queue() -> None:
    endpoints = [make_endpoint("e0", waiting=50, running=1), make_endpoint("e1", running=3)]
    scores = RunningRequestsSizeScorer().score(make_state(), make_request(), endpoints)
    assert scores == {"e0": 1.0, "e1": 0.0}
