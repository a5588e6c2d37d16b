"""token-load-scorer: upstream's absolute formula and kvroute's min-max form."""

from __future__ import annotations

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.token_load import TokenLoadParams, TokenLoadScorer
from tests.fakes import make_endpoint, make_request, make_state


def _with_tokens(name: str, tokens: int):  # type: ignore[no-untyped-def]
    e = make_endpoint(name)
    e.load.inflight_tokens = tokens
    return e


def test_absolute_formula_against_threshold() -> None:
    eps = [_with_tokens("a", 0), _with_tokens("b", 500), _with_tokens("c", 2000)]
    s = TokenLoadScorer(params=TokenLoadParams(queue_threshold_tokens=1000))
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_default_threshold_is_upstreams() -> None:
    eps = [_with_tokens("a", 4_194_304 // 4)]
    assert TokenLoadScorer().score(make_state(), make_request(), eps)["a"] == pytest.approx(0.75)


def test_normalized_is_min_max() -> None:
    eps = [_with_tokens("a", 100), _with_tokens("b", 300), _with_tokens("c", 200)]
    s = TokenLoadScorer(params=TokenLoadParams(normalize=True))
    assert s.score(make_state(), make_request(), eps) == {"a": 1.0, "b": 0.0, "c": 0.5}


def test_registered_and_validated() -> None:
    reg = default_registry(include_entry_points=False)
    ctx = PluginContext()
    plugin = reg.create("token-load-scorer", "t", {"queueThresholdTokens": 10}, ctx)
    assert isinstance(plugin, TokenLoadScorer)
    with pytest.raises(PluginValidationError, match="queueThresholdTokens"):
        reg.create("token-load-scorer", "t", {"queueThresholdTokens": 0}, ctx)
