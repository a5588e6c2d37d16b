"""active-request-scorer: idle endpoints 1, busy ones scaled by the busiest."""

from __future__ import annotations

from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.active_request import (
    ActiveRequestParams,
    ActiveRequestScorer,
)
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
