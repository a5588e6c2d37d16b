"""queue-scorer: upstream min-max over the waiting queue, plus kvroute's in-flight accounting."""

from __future__ import annotations

import math
import random

import pytest

from kvroute.scheduling.plugins.scorers.queue import (
    QueueScorer,
    QueueScorerParams,
    min_max_low_is_best,
)
from kvroute.scheduling.scores import ScoreColumn
from tests.fakes import make_endpoint, make_request, make_state

CASES = [
    # (queues as (waiting, sent_since_scrape) per endpoint, inflight accounting, expected)
    ([(0, 0), (5, 0), (10, 0)], True, [1.0, 0.5, 0.0]),
    ([(3, 0), (3, 0), (3, 0)], True, [1.0, 1.0, 1.0]),
    ([(7, 0)], True, [1.0]),
    ([(0, 4), (2, 0), (4, 0)], True, [0.0, 1.0, 0.0]),
    ([(0, 4), (2, 0), (4, 0)], False, [1.0, 0.5, 0.0]),
    ([(0, 0), (0, 2), (1, 3)], True, [1.0, 0.5, 0.0]),
    ([(100, 0), (0, 0)], True, [0.0, 1.0]),
]
IDS = [
    "min-max spread",
    "all equal score 1",
    "single endpoint",
    "sent since scrape counts as queued",
    "inflight accounting off: pure upstream formula",
    "queue plus sent combine",
    "extreme queue",
]


@pytest.mark.parametrize(("queues", "inflight", "expected"), CASES, ids=IDS)
def test_queue_scorer(queues: list[tuple[int, int]], inflight: bool, expected: list[float]) -> None:
    endpoints = [make_endpoint(f"e{i}", waiting=w, sent=s) for i, (w, s) in enumerate(queues)]
    scorer = QueueScorer(params=QueueScorerParams(inflight_accounting=inflight))
    scores = scorer.score(make_state(), make_request(), endpoints)
    assert [scores[e.name] for e in endpoints] == pytest.approx(expected)


def test_empty_candidates_score_nothing() -> None:
    assert QueueScorer().score(make_state(), make_request(), []) == {}


def test_params_use_upstream_camel_case_key() -> None:
    params = QueueScorerParams.model_validate({"inflightAccounting": False})
    assert params.inflight_accounting is False


def test_min_max_over_integers_is_a_unit_column() -> None:
    """Integer counters give scores in [0, 1] without NaN: the profile may skip its clamp."""
    rng = random.Random(5)
    for _ in range(200):
        values = [
            rng.randint(-(1 << 60), 1 << 60) if rng.random() < 0.1 else rng.randint(0, 50)
            for _ in range(rng.randint(2, 30))
        ]
        col = min_max_low_is_best([make_endpoint(f"e{i}") for i in range(len(values))], values)
        assert isinstance(col, ScoreColumn)
        if col.column is not None:
            assert col.unit
            assert all(0.0 <= v <= 1.0 for v in col.column)


def test_min_max_over_floats_is_not_marked_unit() -> None:
    eps = [make_endpoint(f"e{i}") for i in range(3)]
    col = min_max_low_is_best(eps, [1, math.nan, 3.0])  # type: ignore[list-item]
    assert isinstance(col, ScoreColumn)
    assert not col.unit
