"""prefill-load-scorer: its three formulas over the EPP's prefill ledger, registration, params."""

from __future__ import annotations

import random

import pytest

from kvroute.errors import PluginValidationError
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, PrefixCacheMatchInfo
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.plugins.scorers.prefill_load import (
    PrefillLoadParams,
    PrefillLoadScorer,
    _fewer_than_two_near,
)
from tests.fakes import make_endpoint, make_request, make_state


def _with_prefill(name: str, tokens: int):  # type: ignore[no-untyped-def]
    e = make_endpoint(name)
    e.load.prefill_tokens = tokens
    e.load.inflight_tokens = 10 * tokens + 999  # only the prefill part is read
    return e


def test_max_mode_scales_by_the_busiest() -> None:
    eps = [_with_prefill("a", 100), _with_prefill("b", 400), _with_prefill("c", 200)]
    out = PrefillLoadScorer().score(make_state(), make_request(), eps)
    assert out == {"a": 0.75, "b": 0.0, "c": 0.5}


def test_minmax_mode_stretches_to_the_full_range() -> None:
    eps = [_with_prefill("a", 100), _with_prefill("b", 400), _with_prefill("c", 200)]
    s = PrefillLoadScorer(params=PrefillLoadParams(mode="minmax"))
    out = s.score(make_state(), make_request(), eps)
    assert out == {"a": 1.0, "b": 0.0, "c": pytest.approx(2 / 3)}


def test_threshold_mode_is_absolute() -> None:
    eps = [_with_prefill("a", 0), _with_prefill("b", 512), _with_prefill("c", 5000)]
    s = PrefillLoadScorer(params=PrefillLoadParams(mode="threshold", threshold_tokens=1024))
    assert s.score(make_state(), make_request(), eps) == {"a": 1.0, "b": 0.5, "c": 0.0}


@pytest.mark.parametrize("mode", ["max", "minmax"])
def test_equal_loads_score_equal(mode: str) -> None:
    s = PrefillLoadScorer(params=PrefillLoadParams(mode=mode))
    idle = [_with_prefill("a", 0), _with_prefill("b", 0)]
    assert s.score(make_state(), make_request(), idle) == {"a": 1.0, "b": 1.0}
    busy = s.score(make_state(), make_request(), [_with_prefill("a", 300), _with_prefill("b", 300)])
    assert busy["a"] == busy["b"]
    assert s.score(make_state(), make_request(), []) == {}


def test_registered_and_validated() -> None:
    reg = default_registry(include_entry_points=False)
    ctx = PluginContext()
    params = {"mode": "threshold", "thresholdTokens": 9}
    plugin = reg.create("prefill-load-scorer", "p", params, ctx)
    assert isinstance(plugin, PrefillLoadScorer)
    assert plugin.params.threshold_tokens == 9
    with pytest.raises(PluginValidationError, match="mode"):
        reg.create("prefill-load-scorer", "p", {"mode": "median"}, ctx)
    with pytest.raises(PluginValidationError, match="thresholdTokens"):
        reg.create("prefill-load-scorer", "p", {"thresholdTokens": 0}, ctx)
    with pytest.raises(PluginValidationError, match="normalize"):
        reg.create("prefill-load-scorer", "p", {"normalize": True}, ctx)


def test_prefix_hit_threshold_leaves_cached_requests_to_affinity() -> None:
    eps = [_with_prefill("a", 100), _with_prefill("b", 400)]
    s = PrefillLoadScorer(params=PrefillLoadParams(prefix_hit_threshold=0.5))
    request = make_request(prompt="x" * 400)  # 100 tokens
    state = make_state()
    assert s.score(state, request, eps) == {"a": 0.75, "b": 0.0}  # no prefix data: scored
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"b": 40}))  # 40% cached on b
    assert s.score(state, request, eps) == {"a": 0.75, "b": 0.0}
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"b": 60}))  # 60%: affinity decides
    assert s.score(state, request, eps) == {}
    off = PrefillLoadScorer()  # threshold 0: prefix data is ignored
    assert off.score(state, request, eps) == {"a": 0.75, "b": 0.0}


def test_prefix_hit_margin_scores_only_the_near_best_holders() -> None:
    eps = [_with_prefill("a", 100), _with_prefill("b", 400), _with_prefill("c", 0)]
    s = PrefillLoadScorer(params=PrefillLoadParams(prefix_hit_threshold=0.5, prefix_hit_margin=0.1))
    request = make_request(prompt="x" * 400)  # 100 tokens
    state = make_state()
    # a shared system prompt on a and b (90 / 85 tokens), none on c: a and b within 10% of the
    # best, so prefill load chooses between them; c (no cache) is not scored
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"a": 90, "b": 85}))
    assert s.score(state, request, eps) == {"a": 0.75, "b": 0.0}
    # one server holds the conversation (90), the next best 70: nothing to choose, no scores
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"a": 90, "b": 70}))
    assert s.score(state, request, eps) == {}
    # below the gate the margin plays no part: every candidate scored
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"a": 40, "b": 40}))
    assert s.score(state, request, eps) == {"a": 0.75, "b": 0.0, "c": 1.0}


def test_prefix_hit_margin_is_validated() -> None:
    reg = default_registry(include_entry_points=False)
    ctx = PluginContext()
    plugin = reg.create(
        "prefill-load-scorer", "p", {"prefixHitThreshold": 0.5, "prefixHitMargin": 0.1}, ctx
    )
    assert isinstance(plugin, PrefillLoadScorer)
    assert plugin.params.prefix_hit_margin == 0.1
    with pytest.raises(PluginValidationError, match="prefixHitMargin"):
        reg.create("prefill-load-scorer", "p", {"prefixHitMargin": 0.1}, ctx)
    with pytest.raises(PluginValidationError, match="prefixHitMargin"):
        reg.create(
            "prefill-load-scorer", "p", {"prefixHitThreshold": 0.5, "prefixHitMargin": 2}, ctx
        )


def test_prefix_hit_margin_scope_all_opens_the_gate_for_everyone() -> None:
    eps = [_with_prefill("a", 100), _with_prefill("b", 400), _with_prefill("c", 0)]
    params = PrefillLoadParams(
        prefix_hit_threshold=0.5, prefix_hit_margin=0.1, prefix_hit_margin_scope="all"
    )
    s = PrefillLoadScorer(params=params)
    request = make_request(prompt="x" * 400)  # 100 tokens
    state = make_state()
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"a": 90, "b": 85}))
    assert s.score(state, request, eps) == {"a": 0.75, "b": 0.0, "c": 1.0}  # c scored too
    state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({"a": 90, "b": 70}))
    assert s.score(state, request, eps) == {}  # one holder: still gated
    with pytest.raises(PluginValidationError, match="prefixHitMarginScope"):
        default_registry(include_entry_points=False).create(
            "prefill-load-scorer", "p", {"prefixHitMarginScope": "some"}, PluginContext()
        )


def test_margin_gate_counts_near_holders_as_the_candidate_scan_does() -> None:
    """``_fewer_than_two_near`` (the scope-``all`` shortcut) against the plain count over the
    candidates, with holders that are not candidates and duplicate candidate names."""
    rng = random.Random(8)
    for _ in range(500):
        eps = [make_endpoint(f"e{rng.randrange(30)}") for _ in range(rng.randint(1, 20))]
        cached = {f"e{i}": rng.randrange(0, 2000, 64) for i in range(35) if rng.random() < 0.3}
        floor = rng.choice([1, 63, 64, 500, 1999, 5000])
        plain = len([e for e in eps if cached.get(e.name, 0) >= floor]) < 2
        assert _fewer_than_two_near(eps, cached, floor) == plain
