"""active-request-scorer: idle endpoints 1, busy ones scaled by the busiest."""

from __future__ import annotations

import random

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.active_request import (
    ActiveRequestParams,
    ActiveRequestScorer,
)
from kvroute.scheduling.scores import ScoreColumn
from tests.fakes import make_endpoint, make_request, make_state


def test_formula() -> None:
    eps = [
        make_endpoint("a", inflight=0),
        make_endpoint("b", inflight=2),
        make_endpoint("c", inflight=4),
    ]
    out = ActiveRequestScorer().score(make_state(), make_request(), eps)
    assert out == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_idle_threshold_and_max_busy_score() -> None:
    eps = [
        make_endpoint("a", inflight=1),
        make_endpoint("b", inflight=2),
        make_endpoint("c", inflight=4),
    ]
    s = ActiveRequestScorer(params=ActiveRequestParams(idle_threshold=1, max_busy_score=0.8))
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 1.0, "b": 0.4, "c": 0.0}


def test_request_timeout_accepted() -> None:
    reg = default_registry(include_entry_points=False)
    p = reg.create("active-request-scorer", "x", {"requestTimeout": "2m"}, PluginContext())
    assert isinstance(p, ActiveRequestScorer)
    assert p.params.request_timeout == 120.0


def test_normalize_is_min_max_among_busy_endpoints() -> None:
    eps = [make_endpoint("a", inflight=30), make_endpoint("b", inflight=35)]
    eps.append(make_endpoint("c", inflight=40))
    assert ActiveRequestScorer().score(make_state(), make_request(), eps) == {
        "a": 0.25,
        "b": 0.125,
        "c": 0.0,
    }
    s = ActiveRequestScorer(params=ActiveRequestParams(normalize=True))
    assert s.score(make_state(), make_request(), eps) == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_slack_default_is_upstream() -> None:
    eps = [make_endpoint("a", inflight=0), make_endpoint("b", inflight=1)]
    assert ActiveRequestScorer().score(make_state(), make_request(), eps) == {"a": 1.0, "b": 0.0}


def test_slack_hides_small_differences_at_light_load() -> None:
    eps = [
        make_endpoint("a", inflight=0),
        make_endpoint("b", inflight=1),
        make_endpoint("c", inflight=2),
    ]
    s = ActiveRequestScorer(params=ActiveRequestParams(slack=2))
    assert s.score(make_state(), make_request(), eps) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_slack_counts_only_the_excess() -> None:
    eps = [
        make_endpoint("a", inflight=10),
        make_endpoint("b", inflight=12),
        make_endpoint("c", inflight=16),
        make_endpoint("d", inflight=20),
    ]
    s = ActiveRequestScorer(params=ActiveRequestParams(slack=2))
    # n' = 10, 10, 14, 18; upstream formula (18 - n') / 18
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 8 / 18, "b": 8 / 18, "c": 4 / 18, "d": 0.0}
    s = ActiveRequestScorer(params=ActiveRequestParams(slack=2, normalize=True))
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 1.0, "b": 1.0, "c": 0.5, "d": 0.0}


def test_relative_slack_scales_with_the_mean() -> None:
    eps = [make_endpoint("a", inflight=30), make_endpoint("b", inflight=40)]
    eps.append(make_endpoint("c", inflight=50))
    # mean 40, 0.25 * 40 = 10 beats slack 1: n' = 30, 30, 40
    s = ActiveRequestScorer(params=ActiveRequestParams(slack=1, relative_slack=0.25))
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 0.25, "b": 0.25, "c": 0.0}


def test_slack_parameters_by_name_and_rejected_when_negative() -> None:
    reg = default_registry(include_entry_points=False)
    p = reg.create(
        "active-request-scorer", "x", {"slack": 3, "relativeSlack": 0.1}, PluginContext()
    )
    assert isinstance(p, ActiveRequestScorer)
    assert (p.params.slack, p.params.relative_slack) == (3, 0.1)
    with pytest.raises(PluginValidationError, match="slack"):
        reg.create("active-request-scorer", "x", {"slack": -1}, PluginContext())


def test_idle_slack_fades_as_the_pool_fills() -> None:
    s = ActiveRequestScorer(params=ActiveRequestParams(idle_slack=8))
    light = [make_endpoint("a", inflight=0), make_endpoint("b", inflight=6)]
    assert s.score(make_state(), make_request(), light) == {"a": 1.0, "b": 1.0}
    # least 3: dz 5, b's excess 1 -> n' 3 and 4
    some = [make_endpoint("a", inflight=3), make_endpoint("b", inflight=9)]
    assert s.score(make_state(), make_request(), some) == {"a": 0.25, "b": 0.0}
    # least 8 or more: the exact counts, as upstream
    busy = [make_endpoint("a", inflight=30), make_endpoint("b", inflight=40)]
    assert s.score(make_state(), make_request(), busy) == ActiveRequestScorer().score(
        make_state(), make_request(), busy
    )


def test_mean_idle_slack_fades_with_the_mean() -> None:
    s = ActiveRequestScorer(params=ActiveRequestParams(mean_idle_slack=16))
    # mean 6: dz 10, b (12 in flight) is 2 beyond it -> n' 0 and 2
    light = [make_endpoint("a", inflight=0), make_endpoint("b", inflight=12)]
    assert s.score(make_state(), make_request(), light) == {"a": 1.0, "b": 0.0}
    light = [make_endpoint("a", inflight=0), make_endpoint("b", inflight=8)]
    assert s.score(make_state(), make_request(), light) == {"a": 1.0, "b": 1.0}
    # an idle endpoint among busy ones: mean 20, no dead zone, upstream's counts
    busy = [make_endpoint("a", inflight=0), make_endpoint("b", inflight=40)]
    assert s.score(make_state(), make_request(), busy) == {"a": 1.0, "b": 0.0}
    busy = [make_endpoint("a", inflight=30), make_endpoint("b", inflight=40)]
    assert s.score(make_state(), make_request(), busy) == ActiveRequestScorer().score(
        make_state(), make_request(), busy
    )


def test_unit_columns_hold_only_scores_in_range() -> None:
    """Random pools and parameters: a column marked ``unit`` (the profile then skips its clamp)
    has every value in [0, 1], and integer counts that are not negative give one."""
    rng = random.Random(6)
    marked = 0
    for _ in range(400):
        params = ActiveRequestParams.model_validate(
            {
                "idleThreshold": rng.choice([0, 0, 2]),
                "maxBusyScore": rng.choice([1.0, 0.5]),
                "normalize": rng.random() < 0.5,
                "slack": rng.choice([0, 0, 3]),
                "relativeSlack": rng.choice([0.0, 0.2]),
                "idleSlack": rng.choice([0, 4]),
                "meanIdleSlack": rng.choice([0, 5]),
            }
        )
        eps = [
            make_endpoint(f"e{i}", inflight=rng.randrange(40)) for i in range(rng.randint(1, 12))
        ]
        col = ActiveRequestScorer(params=params).score(make_state(), make_request(), eps)
        assert isinstance(col, ScoreColumn)
        if col.column is not None:
            assert col.unit
            marked += 1
            assert all(0.0 <= v <= 1.0 for v in col.column)
    assert marked > 100
