"""burst-prefix-cache-producer: online co-location of prompt-sharing requests per window."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.prefix.burst import BurstParams, BurstPrefixCacheProducer
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import make_endpoint, make_state

CFG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: single-profile-handler
  - type: burst-prefix-cache-producer
    parameters: {windowDurationMs: 100, maxPerReplica: 3, blockSizeTokens: 4}
  - type: prefix-cache-scorer
    parameters:
      prefixMatchInfoProducerName: burst-prefix-cache-producer
  - type: queue-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: prefix-cache-scorer
        weight: 2.0
      - pluginRef: queue-scorer
        weight: 1.0
      - pluginRef: max-score-picker
"""

PROMPT_A = "rollout prompt A, shared by every sample of the group " * 4
PROMPT_B = "a different prompt B for the second group of samples " * 4


def _req(prompt: str, rid: str = "r") -> InferenceRequest:
    return InferenceRequest(
        request_id=rid, incoming_model="m", target_model="m", prompt_text=prompt
    )


def _assign(p: BurstPrefixCacheProducer, prompt: str, now: float, eps: list) -> str | None:  # type: ignore[type-arg]
    state = make_state(now=now)
    p.prepare_data(state, _req(prompt), eps)
    matched = p.match(state, _req(prompt), eps).matched
    assert len(matched) <= 1
    return next(iter(matched), None)


def test_group_fills_one_replica_then_spills_and_groups_balance() -> None:
    eps = [make_endpoint(n) for n in ("a", "b", "c")]
    p = BurstPrefixCacheProducer(params=BurstParams(maxPerReplica=2, blockSizeTokens=4))
    got = [_assign(p, PROMPT_A, 1.0, eps) for _ in range(5)]
    assert got == ["a", "a", "b", "b", "c"]  # k=2 per replica, least window-loaded next
    # the second group starts on the least loaded replica of the window (c has 1)
    assert _assign(p, PROMPT_B, 1.01, eps) == "c"


def test_unlimited_keeps_the_group_whole_and_window_expires() -> None:
    eps = [make_endpoint("a", running=5), make_endpoint("b")]
    p = BurstPrefixCacheProducer(params=BurstParams(blockSizeTokens=4))
    assert {_assign(p, PROMPT_A, 1.0, eps) for _ in range(6)} == {"b"}  # fewer in flight
    # within the window B goes to the other replica (window load 6 vs 0)
    assert _assign(p, PROMPT_B, 1.05, eps) == "a"
    # after windowDurationMs the window is new: per-window state reset
    assert _assign(p, PROMPT_B, 1.2, eps) == "b"


def test_short_or_empty_prompt_gets_no_affinity_and_batch_cap() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    p = BurstPrefixCacheProducer(params=BurstParams(blockSizeTokens=64, maxBatchSize=2))
    assert _assign(p, "short", 1.0, eps) is None  # no full block
    long = "x" * 64 * 4 * 2
    assert _assign(p, long, 1.0, eps) is not None
    assert _assign(p, long, 1.0, eps) is not None
    assert _assign(p, long, 1.0, eps) is None  # maxBatchSize reached in this window


def test_balance_by_tokens_charges_prefix_blocks_once_per_replica() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    p = BurstPrefixCacheProducer(params=BurstParams(blockSizeTokens=4, balanceBy="tokens"))
    long_prompt = PROMPT_A * 4
    first = _assign(p, long_prompt, 1.0, eps)
    for _ in range(5):  # more members of the same group cost no more tokens
        assert _assign(p, long_prompt, 1.0, eps) == first
    other = _assign(p, PROMPT_B, 1.0, eps)
    assert other != first
    # a third group: "other" holds fewer prefix blocks than "first" although it has fewer
    # requests too; by tokens it is still the lighter one
    assert _assign(p, "yet another prompt, long enough for blocks " * 3, 1.0, eps) == other


def test_min_colocate_blocks_joins_a_sharing_group_under_fair_share() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    p = BurstPrefixCacheProducer(params=BurstParams(blockSizeTokens=4, minColocateBlocks=2))
    base = "common system prompt " * 3  # 63 chars: blocks 0-2 shared, block 3 differs
    assert _assign(p, base + "1 question one", 1.0, eps) == "a"
    assert _assign(p, base + "2 question two", 1.0, eps) == "a"  # shares 3 blocks: joins a
    assert _assign(p, base + "3 question three", 1.0, eps) == "a"  # a=2 < ceil(3/2)+1
    assert _assign(p, base + "4 question four", 1.0, eps) == "b"  # a=3 = ceil(4/2)+1: full
    q = BurstPrefixCacheProducer(params=BurstParams(blockSizeTokens=4))
    assert _assign(q, base + "1 question one", 1.0, eps) == "a"
    assert _assign(q, base + "2 question two", 1.0, eps) == "b"  # 0: balanced only


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"windowDurationMs": 0}, "windowDurationMs"),
        ({"windowDurationMs": 10001}, "windowDurationMs"),
        ({"maxPerReplica": 0}, "maxPerReplica"),
        ({"maxBatchSize": -2}, "maxBatchSize"),
        ({"balanceBy": "bytes"}, "balanceBy"),
        ({"maxPrefixTokensToMatch": 10}, "maxPrefixTokensToMatch"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_parameters_are_rejected_by_name(params: dict[str, object], field: str) -> None:
    text = CFG.replace(
        "{windowDurationMs: 100, maxPerReplica: 3, blockSizeTokens: 4}", json.dumps(params)
    )
    with pytest.raises((ConfigError, PluginValidationError), match=field):
        build_scheduling(parse_epp_config(text), default_registry(include_entry_points=False))


def test_prefix_cache_scorer_scores_the_burst_assignment_end_to_end() -> None:
    now = 50.0
    setup = build_scheduling(
        parse_epp_config(CFG),
        default_registry(include_entry_points=False),
        rng=random.Random(3),
        clock=lambda: now,
    )
    scorer = setup.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, ProducedPrefixScorer)
    assert isinstance(scorer.producer, BurstPrefixCacheProducer)
    store = Datastore(clock=lambda: now)
    for i in range(4):
        store.upsert_endpoint(f"vllm-{i}", f"10.0.1.{i + 1}", 8000)
        store.update_metrics(f"vllm-{i}", EndpointMetrics(updated_at=now))
    d = Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        random.Random(4),
        clock=lambda: now,
    )
    body = json.dumps({"model": "m", "prompt": PROMPT_A, "max_tokens": 4}).encode()
    targets = [d.handle_request(parse_request(body), {}, f"r{i}").target.name for i in range(6)]
    # maxPerReplica 3: the 6 samples land on exactly two replicas, 3 each
    assert sorted(targets.count(t) for t in set(targets)) == [3, 3]
