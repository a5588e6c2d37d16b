"""Upstream's split prefix pipeline (``token-producer`` -> ``approx-prefix-cache-producer`` ->
``prefix-cache-scorer``) through the real Director and Datastore; the configs are our own, of the
shape of llm-d-router's deploy/config samples (see docs/upstream-configs.md)."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer
from kvroute.scheduling.request import InferenceRequest

NOW = 50.0

SPLIT = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
- type: approx-prefix-cache-producer
  parameters: {maxPrefixTokensToMatch: 2048, lruCapacityPerServer: 500}
- type: prefix-cache-scorer
- {type: no-hit-lru-scorer}
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: no-hit-lru-scorer, weight: 1}
"""


def _build(text: str) -> tuple[Director, dict[str, object]]:
    registry = default_registry(include_entry_points=False)
    setup = build_scheduling(
        parse_epp_config(text), registry, rng=random.Random(3), clock=lambda: NOW
    )
    store = Datastore(clock=lambda: NOW)
    for i in range(4):
        store.upsert_endpoint(f"vllm-{i}", f"10.0.1.{i + 1}", 8000)
        store.update_metrics(f"vllm-{i}", EndpointMetrics(updated_at=NOW))
    director = Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        random.Random(4),
        clock=lambda: NOW,
    )
    return director, dict(setup.plugins)


def _body(prompt: str) -> bytes:
    return json.dumps({"model": "m", "prompt": prompt, "max_tokens": 4}).encode()


def test_split_pipeline_scores_from_the_producer_index() -> None:
    d, plugins = _build(SPLIT)
    producer = plugins["approx-prefix-cache-producer"]
    scorer = plugins["prefix-cache-scorer"]
    assert isinstance(producer, PrefixCacheScorer)
    assert producer.typed_name.type == "approx-prefix-cache-producer"
    assert producer.params.max_prefix_tokens_to_match == 2048
    assert producer.params.lru_capacity_per_server == 500
    assert isinstance(scorer, ProducedPrefixScorer)
    assert scorer.producer is producer
    prompt = "the same long system prompt for every turn " * 40
    first = d.handle_request(parse_request(_body(prompt)), {}, "r0")
    assert producer.blocks_held(first.target.name) > 0  # the producer's PreRequest inserted
    again = [d.handle_request(parse_request(_body(prompt + f" q{i}")), {}, f"r{i}") for i in (1, 2)]
    assert {x.target.name for x in again} == {first.target.name}


def test_scorer_index_parameters_next_to_a_producer_are_rejected_naming_both() -> None:
    text = SPLIT.replace(
        "- type: prefix-cache-scorer\n",
        "- {type: prefix-cache-scorer, parameters: {lruCapacityPerServer: 9}}\n",
    )
    with pytest.raises((ConfigError, PluginValidationError)) as err:
        _build(text)
    msg = str(err.value)
    assert "lruCapacityPerServer" in msg
    assert "approx-prefix-cache-producer" in msg


def test_unimplemented_upstream_scorer_key_is_rejected_by_name() -> None:
    text = SPLIT.replace(
        "- type: prefix-cache-scorer\n",
        "- {type: prefix-cache-scorer, parameters: {matchLengthWeight: 0.5}}\n",
    )
    with pytest.raises((ConfigError, PluginValidationError), match="matchLengthWeight"):
        _build(text)


def test_named_producer_that_is_missing_is_an_error() -> None:
    text = SPLIT.replace(
        "- type: prefix-cache-scorer\n",
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: nope}}\n",
    )
    with pytest.raises((ConfigError, PluginValidationError), match="nope"):
        _build(text)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{vllm: {url: 'http://127.0.0.1:9'}}", "modelName"),  # vllm needs the model
        ("{modelName: m, vllm: {url: 'https://r:8000'}}", "vllm.url"),  # no TLS, as upstream
        ("{modelName: m, vllm: {timeout: 0s}}", "vllm.timeout"),
        ("{modelName: m, vllm: {port: 1}}", "vllm.port"),  # strict: unknown keys by name
        ("{modelName: m, estimate: {}}", "only one of"),
        ("{udsTokenizerConfig: {socketFile: /tmp/x.sock}}", "udsTokenizerConfig"),
        ("{estimate: {image: {mode: static}}}", "estimate.image"),
    ],
)
def test_token_producer_bad_or_unsupported_backends_fail_naming_the_field(
    params: str, field: str
) -> None:
    text = SPLIT.replace(
        "- type: token-producer\n", f"- type: token-producer\n  parameters: {params}\n"
    )
    with pytest.raises((ConfigError, PluginValidationError)) as err:
        _build(text)
    assert "token-producer" in str(err.value)
    assert field in str(err.value)


def test_tokenizer_alias_loads() -> None:
    _, plugins = _build(SPLIT.replace("- type: token-producer\n", "- type: tokenizer\n"))
    assert plugins["tokenizer"].typed_name.type == "tokenizer"  # type: ignore[attr-defined]


def test_producer_defaults_are_upstream_v0_10s_and_the_scorer_keeps_its_own() -> None:
    text = SPLIT.replace(
        "  parameters: {maxPrefixTokensToMatch: 2048, lruCapacityPerServer: 500}\n", ""
    )
    _, plugins = _build(text)
    producer = plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, PrefixCacheScorer)
    p = producer.params
    assert (p.max_prefix_tokens_to_match, p.max_prefix_blocks_to_match) == (131072, 2048)
    assert p.lru_capacity_per_server == 31250
    # upstream's minBlockSizeTokens: 16 configured or reported blocks are matched in 64s
    assert producer.block_size_tokens([]) == 64
    vllm = Endpoint(
        name="e", address="10.0.0.1", port=8000, metrics=EndpointMetrics(cache_block_size=16)
    )
    assert producer.block_size_tokens([vllm]) == 64
    assert p.max_blocks(64) == 2048  # 131072 tokens / 64
    # the one-plugin scorer (kvroute's default profile) is unchanged: GIE v1.5's 256 blocks
    alone = PrefixCacheScorer()
    assert alone.params.max_prefix_blocks_to_match == 256
    assert alone.block_size_tokens([vllm]) == 16


def test_producer_with_both_caps_zero_matches_the_whole_prompt() -> None:
    text = SPLIT.replace(
        "{maxPrefixTokensToMatch: 2048, lruCapacityPerServer: 500}",
        "{maxPrefixTokensToMatch: 0, maxPrefixBlocksToMatch: 0}",
    )
    _, plugins = _build(text)
    producer = plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, PrefixCacheScorer)
    request = InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        prompt_text="x" * 256 * 3000,  # 3000 blocks of 64 tokens (256 characters each)
    )
    hashes = producer.hash_request(request, [])[1]
    assert len(hashes) == 3000
