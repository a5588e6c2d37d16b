"""disagg-profile-handler and the P/D deciders, built from EndpointPickerConfigs.

``pd-disagg.yaml`` mirrors llm-d-router's ``deploy/config/pd-epp-config.yaml`` (kvroute's own
file of the same shape: apiVersion ``llm-d.ai/v1alpha1``, the same plugins, parameters and
profiles, including the separate ``approx-prefix-cache-producer``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kvroute.config.epp_config import load_epp_config, parse_epp_config
from kvroute.errors import ConfigError, PluginValidationError, PoolExhaustedError
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.framework.request import Usage
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH, PrefixCacheMatchInfo
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import SchedulingSetup, build_scheduling
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.filters.roles import ROLE_LABEL
from kvroute.scheduling.plugins.profile_handlers.deciders import (
    AutoThreshold,
    PrefixBasedPdDecider,
    PrefixDeciderParams,
)
from kvroute.scheduling.plugins.profile_handlers.disagg import (
    PREFILLER_HEADER,
    DisaggProfileHandler,
)
from tests.fakes import NOW, make_endpoint, make_request

CONFIGS = Path(__file__).parents[4] / "testdata" / "configs"
REGISTRY = default_registry(include_entry_points=False)
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

PREFILL = make_endpoint("p0", labels={ROLE_LABEL: "prefill"}, port=8000)
DECODE = make_endpoint("d1", labels={ROLE_LABEL: "decode"}, port=8000)
POOL = [PREFILL, DECODE]


def _setup(path: Path | None = None, text: str | None = None) -> SchedulingSetup:
    config = load_epp_config(path) if path is not None else parse_epp_config(HEAD + (text or ""))
    return build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)


def _route(setup: SchedulingSetup, prompt: str, rid: str = "r") -> tuple[Any, dict[str, str]]:
    """One cycle as the director runs it: PrepareData, schedule, PreRequest; the headers set."""
    state = CycleState(NOW)
    request = make_request(prompt=prompt, request_id=rid)
    for hook in setup.hooks:
        if hasattr(hook, "prepare_data"):
            hook.prepare_data(state, request, POOL)
    result = setup.scheduler.schedule(request, POOL, state=state)
    for hook in setup.hooks:
        if hasattr(hook, "pre_request"):
            hook.pre_request(state, request, result)
    return result, state.get(UPSTREAM_HEADERS, {})


def test_upstream_pd_config_splits_long_prompts_and_keeps_cached_ones_local() -> None:
    setup = _setup(CONFIGS / "pd-disagg.yaml")
    handler = setup.scheduler.handler
    assert isinstance(handler, DisaggProfileHandler)
    types = {name: p.typed_name.type for name, p in setup.plugins.items()}
    assert types["approx-prefix-cache-producer"] == "approx-prefix-cache-producer"
    assert types["prefix-cache-scorer"] == "prefix-cache-scorer"
    assert handler.prefill_decider is setup.plugins["prefix-based-pd-decider"]
    # 256 estimated tokens (4 chars each), far over nonCachedTokens 16, and a whole number of the
    # producer's blocks (upstream's floor of 64 tokens), so a repeat is cached to the last token
    long_prompt = "sea " * 256

    result, headers = _route(setup, long_prompt, "a")
    assert result.primary_profile == "decode"
    assert result.primary.targets[0].name == "d1"
    assert result.profile_results["prefill"].targets[0].name == "p0"
    assert headers == {PREFILLER_HEADER: PREFILL.hostport}

    # The same prompt again: the decode pick now caches it (the prefix producer recorded d1 in
    # PreRequest), so fewer than 16 tokens are uncached and the request stays on decode.
    result, headers = _route(setup, long_prompt, "b")
    assert "prefill" not in result.profile_results
    assert headers == {}

    # A short prompt (under 16 tokens) never splits.
    result, headers = _route(setup, "hi there", "c")
    assert headers == {}
    model = make_request().target_model
    assert handler.decision_counts() == {(model, "prefill-decode"): 1, (model, "decode-only"): 2}


def test_always_decider_and_missing_prefill_pool() -> None:
    text = """
plugins:
- type: prefill-filter
- type: decode-filter
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters: {deciders: {prefill: always-disagg-pd-decider}}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}]
- name: decode
  plugins: [{pluginRef: decode-filter}]
"""
    setup = _setup(text=text)
    _, headers = _route(setup, "x")
    assert headers == {PREFILLER_HEADER: PREFILL.hostport}
    # Only decode servers: the prefill profile finds nothing, the request is decode-only.
    state = CycleState(NOW)
    result = setup.scheduler.schedule(make_request(), [DECODE], state=state)
    assert result.primary.targets[0].name == "d1"
    assert result.profile_results["prefill"] is None
    # No decode server: 429.
    with pytest.raises(PoolExhaustedError, match=r"decode-filter|no endpoint"):
        setup.scheduler.schedule(make_request(), [PREFILL], state=CycleState(NOW))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ("{stageOrder: prefill-first, deciders: {prefill: d}}", "prefill-first"),
        ("{deciders: {prefill: nope}}", "no plugin named 'nope'"),
        ("{deciders: {prefill: decode-filter}}", "is not a decider"),
        ("{profiles: {decode: dec}}", "no profile named 'dec'"),
        ("{bogus: 1}", "parameters.bogus"),
    ],
)
def test_bad_handler_parameters_are_named(params: str, match: str) -> None:
    text = f"""
plugins:
- type: decode-filter
- {{type: always-disagg-pd-decider, name: d}}
- type: disagg-profile-handler
  parameters: {params}
schedulingProfiles:
- name: decode
  plugins: [{{pluginRef: decode-filter}}]
- name: prefill
  plugins: [{{pluginRef: decode-filter}}]
"""
    with pytest.raises((ConfigError, PluginValidationError), match=match):
        _setup(text=text)


def test_prefill_first_runs_both_and_decode_is_primary() -> None:
    text = """
plugins:
- type: prefill-filter
- type: decode-filter
- type: disagg-profile-handler
  parameters: {stageOrder: prefill-first}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}]
- name: decode
  plugins: [{pluginRef: decode-filter}]
"""
    result, headers = _route(_setup(text=text), "x")
    assert result.primary_profile == "decode"
    assert headers == {PREFILLER_HEADER: PREFILL.hostport}


def test_decider_parameters() -> None:
    base = "plugins:\n- type: prefix-based-pd-decider\n  parameters: "
    with pytest.raises(PluginValidationError, match="autoMinSamples needs nonCachedTokens: auto"):
        _setup(text=base + "{nonCachedTokens: 16, autoMinSamples: 3}\n- type: queue-scorer\n")
    with pytest.raises(PluginValidationError, match="nonCachedTokens"):
        _setup(text=base + "{nonCachedTokens: -1}\n- type: queue-scorer\n")
    with pytest.raises(PluginValidationError, match="autoChargeStalls needs nonCachedTokens"):
        _setup(text=base + "{nonCachedTokens: 16, autoChargeStalls: true}\n")
    setup = _setup(text=base + "{nonCachedTokens: auto}\n")
    assert setup.plugins["prefix-based-pd-decider"].auto.charge_stalls  # default on
    setup = _setup(text=base + "{nonCachedTokens: auto, autoChargeStalls: false}\n")
    assert not setup.plugins["prefix-based-pd-decider"].auto.charge_stalls


def test_auto_threshold_learns_the_crossover() -> None:
    """Synthetic costs: splitting costs 0.02 s/token extra below 2048 tokens and saves 0.01 above;
    the learner must settle on 2048 (the lower edge of the first bucket where splitting wins)."""
    auto = AutoThreshold(initial=64, exploration=0.2, min_samples=5, rng=random.Random(1))
    rng = random.Random(2)
    for _ in range(3000):
        tokens = int(2 ** rng.uniform(6, 14))
        split = auto.choose(tokens)
        base = 0.05
        cost = base + (0.02 if tokens < 2048 else -0.01) if split else base
        auto.observe(tokens, split, cost)
    assert auto.threshold == 2048


def test_auto_decider_observes_completions() -> None:
    text = """
plugins:
- type: prefill-filter
- type: decode-filter
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: auto, autoInitialTokens: 4, autoExploration: 0.0}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}]
- name: decode
  plugins: [{pluginRef: decode-filter}]
"""
    setup = _setup(text=text)
    decider = setup.plugins["prefix-based-pd-decider"]
    _, headers = _route(setup, "a long enough prompt", "q1")
    assert headers == {PREFILLER_HEADER: PREFILL.hostport}
    decider.response_complete(make_request(request_id="q1"), DECODE, Usage(5, 10))
    # Both servers' queues are empty (context 0: equal queues).
    assert decider.auto.cost[(AutoThreshold.bucket(5), 0, True)].n == 1


@pytest.mark.parametrize(
    ("cached", "prompt_tokens_gate", "expected"),
    [(None, 0, False), (0, 0, True), (84, 0, True), (85, 0, False), (0, 101, False)],
)
def test_prefix_decider_rule(cached: int | None, prompt_tokens_gate: int, expected: bool) -> None:
    """Upstream's rule with nonCachedTokens 16 on a 100-token prompt (400 characters): split iff
    100 - cached >= 16; no prefix producer means no split; promptTokens gates short prompts."""
    decider = PrefixBasedPdDecider(
        params=PrefixDeciderParams(nonCachedTokens=16, promptTokens=prompt_tokens_gate)
    )
    state = CycleState(NOW)
    if cached is not None:
        state.write(PREFIX_CACHE_MATCH, PrefixCacheMatchInfo({DECODE.name: cached}))
    assert decider.disaggregate(state, make_request(prompt="x" * 400), DECODE) is expected
