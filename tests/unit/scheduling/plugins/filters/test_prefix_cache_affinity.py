"""prefix-cache-affinity-filter: sticky set, threshold, TTFT gate, exploration."""

from __future__ import annotations

import random

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.filters.prefix_cache_affinity import (
    PrefixAffinityParams,
    PrefixCacheAffinityFilter,
)
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from tests.fakes import make_endpoint, make_request, make_state

PROMPT = "the shared system prompt " * 40


def _setup(**params: object) -> tuple[PrefixCacheScorer, PrefixCacheAffinityFilter]:
    prefix = PrefixCacheScorer()
    f = PrefixCacheAffinityFilter(
        "f", PrefixAffinityParams.model_validate(params), prefix, rng=random.Random(1)
    )
    return prefix, f


def _seed(prefix: PrefixCacheScorer, ep, prompt: str = PROMPT) -> None:  # type: ignore[no-untyped-def]
    state, req = make_state(), make_request(prompt=prompt)
    prefix.prepare_data(state, req, [ep])  # as the director does before scheduling
    result = SchedulingResult({"default": ProfileResult((ep,))}, "default")
    prefix.pre_request(state, req, result)


def _filter(f: PrefixCacheAffinityFilter, prompt: str, eps):  # type: ignore[no-untyped-def]
    """One cycle: the prefix plugin's PrepareData, then the filter, over the same state."""
    state, req = make_state(), make_request(prompt=prompt)
    f.prefix.prepare_data(state, req, eps)
    return f.filter(state, req, eps)


def _names(eps) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.name for e in eps]


def test_keeps_holders_of_the_prefix() -> None:
    prefix, f = _setup()
    eps = [make_endpoint("a"), make_endpoint("b"), make_endpoint("c")]
    assert _names(_filter(f, PROMPT, eps)) == ["a", "b", "c"]
    _seed(prefix, eps[1])
    assert _names(_filter(f, PROMPT, eps)) == ["b"]
    # a prompt sharing only half its prefix is below the 0.8 threshold: everyone passes
    half = PROMPT[: len(PROMPT) // 2] + "x" * (len(PROMPT) // 2)
    assert len(_filter(f, half, eps)) == 3


def test_ttft_gate_breaks_affinity_on_a_swamped_holder() -> None:
    prefix, f = _setup(maxTTFTPenaltyMs=1000)
    hot, idle = make_endpoint("hot"), make_endpoint("idle")
    hot.load.inflight_tokens = 15928 * 3  # ~3 s of prefill ahead at the peak rate
    _seed(prefix, hot)
    assert len(_filter(f, PROMPT, [hot, idle])) == 2
    hot.load.inflight_tokens = 1000
    assert _names(_filter(f, PROMPT, [hot, idle])) == ["hot"]
    _, never = _setup(maxTTFTPenaltyMs=0)
    never.prefix = prefix
    hot.load.inflight_tokens = 10**9
    assert _names(_filter(never, PROMPT, [hot, idle])) == ["hot"]


def test_exploration_probability_one_always_explores() -> None:
    prefix, f = _setup(explorationProbability=1.0)
    eps = [make_endpoint("a"), make_endpoint("b")]
    _seed(prefix, eps[0])
    assert len(_filter(f, PROMPT, eps)) == 2


def test_factory_needs_prefix_and_predictor() -> None:
    reg = default_registry(include_entry_points=False)
    ctx = PluginContext()
    with pytest.raises(PluginValidationError, match="prefixPluginName"):
        reg.create("prefix-cache-affinity-filter", "f", {}, ctx)
    ctx.plugins["prefix-cache-scorer"] = reg.create(
        "prefix-cache-scorer", "prefix-cache-scorer", {}, ctx
    )
    assert reg.create("prefix-cache-affinity-filter", "f", {}, ctx) is not None
    with pytest.raises(PluginValidationError, match="latencyPredictor"):
        reg.create("prefix-cache-affinity-filter", "f", {"ttftSource": "latencyPredictor"}, ctx)
    with pytest.raises(PluginValidationError, match="affinityThreshold"):
        reg.create("prefix-cache-affinity-filter", "f", {"affinityThreshold": 2}, ctx)
