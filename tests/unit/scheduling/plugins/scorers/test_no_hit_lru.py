"""no-hit-lru-scorer: cold requests fan out by LRU; warm ones are neutral."""

from __future__ import annotations

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.plugins.scorers.no_hit_lru import NoHitLruParams, NoHitLruScorer
from tests.fakes import make_endpoint, make_request, make_state


def _dispatch(prefix: PrefixCacheScorer, lru: NoHitLruScorer, prompt: str, ep) -> None:  # type: ignore[no-untyped-def]
    state = make_state()
    req = make_request(prompt=prompt)
    result = SchedulingResult({"default": ProfileResult((ep,))}, "default")
    prefix.prepare_data(state, req, [ep])
    lru.pre_request(state, req, result)
    prefix.pre_request(state, req, result)


def _score(prefix: PrefixCacheScorer, lru: NoHitLruScorer, req, eps):  # type: ignore[no-untyped-def]
    """One cycle: the prefix plugin's PrepareData, then the scorer, over the same state."""
    state = make_state()
    prefix.prepare_data(state, req, eps)
    return lru.score(state, req, eps)


def test_cold_requests_prefer_least_recently_used() -> None:
    prefix = PrefixCacheScorer()
    lru = NoHitLruScorer("n", NoHitLruParams(), prefix)
    eps = [make_endpoint("a"), make_endpoint("b"), make_endpoint("c")]
    cold = make_request(prompt="z" * 400)
    assert _score(prefix, lru, cold, eps) == {"a": 1.0, "b": 1.0, "c": 1.0}
    _dispatch(prefix, lru, "p" * 400, eps[0])
    _dispatch(prefix, lru, "q" * 400, eps[1])
    out = _score(prefix, lru, cold, eps)
    assert out["c"] == 1.0
    assert out["a"] > out["b"]
    warm = make_request(prompt="p" * 400)
    assert set(_score(prefix, lru, warm, eps).values()) == {0.5}


def test_needs_a_declared_prefix_plugin() -> None:
    reg = default_registry(include_entry_points=False)
    with pytest.raises(PluginValidationError, match="prefixPluginName"):
        reg.create("no-hit-lru-scorer", "n", {}, PluginContext())
    ctx = PluginContext()
    ctx.plugins["prefix-cache-scorer"] = reg.create(
        "prefix-cache-scorer", "prefix-cache-scorer", {}, ctx
    )
    assert isinstance(reg.create("no-hit-lru-scorer", "n", {"lruSize": 4}, ctx), NoHitLruScorer)
