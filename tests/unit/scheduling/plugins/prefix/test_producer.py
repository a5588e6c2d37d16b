"""Upstream's split prefix pipeline (``token-producer`` -> ``approx-prefix-cache-producer`` ->
``prefix-cache-scorer``) through the real Director and Datastore; the configs are our own, of the
shape of llm-d-router's deploy/config samples (see docs/upstream-configs.md)."""

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
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer

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
        ("{modelName: some/model, vllm: {url: 'http://127.0.0.1:9'}}", "modelName"),
        ("{udsTokenizerConfig: {socketFile: /tmp/x.sock}}", "udsTokenizerConfig"),
        ("{estimate: {image: {mode: static}}}", "estimate.image"),
    ],
)
def test_token_producer_backends_kvroute_lacks_fail_naming_the_field(
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
