"""The multicluster scorers: pool-aggregate attributes -> scores; the prefix delegations through
the real Director (configs of our own, in the shape of llm-d-router's multicluster README)."""

from __future__ import annotations

import dataclasses
import json
import random
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.multicluster import KV_CACHE_UTILIZATION_ATTRIBUTE as KV
from kvroute.datalayer.multicluster import QUEUE_SIZE_ATTRIBUTE as QUEUE
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer
from kvroute.scheduling.plugins.scorers.multicluster import (
    MultiClusterKvCacheScorer,
    MultiClusterQueueScorer,
)
from tests.fakes import make_endpoint, make_request, make_state

REGISTRY = default_registry(include_entry_points=False)


def cluster(name: str, attributes: dict[str, object], **metrics: Any) -> Endpoint:
    return dataclasses.replace(
        make_endpoint(name, **metrics), attributes=MappingProxyType(attributes)
    )


def test_kv_cache_scorer_reads_the_pool_attribute_not_the_pod_metrics() -> None:
    scorer = MultiClusterKvCacheScorer()
    eps = [
        cluster("a", {KV: 0.25}, kv=0.99),  # the per-pod field means nothing for a cluster
        cluster("b", {KV: 0.9}),
        cluster("c", {}),  # never scraped: unscored
        cluster("d", {KV: float("nan")}),  # not a number: unscored
        cluster("e", {KV: 1.7}),  # a broken exporter: clamped
    ]
    assert scorer.score(make_state(), make_request(), eps) == {
        "a": 0.75,
        "b": pytest.approx(0.1),
        "e": 0.0,
    }


def test_queue_scorer_min_max_over_the_clusters_that_report() -> None:
    scorer = MultiClusterQueueScorer()
    eps = [
        cluster("a", {QUEUE: 2.0}),
        cluster("b", {QUEUE: 10.0}, waiting=0),
        cluster("c", {QUEUE: 6.0}),
        cluster("d", {}),
    ]
    assert scorer.score(make_state(), make_request(), eps) == {"a": 1.0, "b": 0.0, "c": 0.5}
    equal = [cluster("a", {QUEUE: 3.0}), cluster("b", {QUEUE: 3.0}), cluster("c", {})]
    assert scorer.score(make_state(), make_request(), equal) == {"a": 1.0, "b": 1.0}
    assert scorer.score(make_state(), make_request(), [cluster("x", {})]) == {}


@pytest.mark.parametrize(
    "type_name", ["multicluster-kv-cache-utilization-scorer", "multicluster-queue-scorer"]
)
def test_metric_scorers_take_no_parameters(type_name: str) -> None:
    plugin = REGISTRY.create(type_name, "s", {}, PluginContext())
    assert plugin.typed_name.type == type_name
    assert plugin.required_attributes  # type: ignore[attr-defined]
    with pytest.raises(PluginValidationError, match=r"parameters\.inflightAccounting"):
        REGISTRY.create(type_name, "s", {"inflightAccounting": False}, PluginContext())


# -- the prefix delegations ------------------------------------------------------------------

NOW = 50.0

PAIR = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: multicluster-approx-prefix-cache-producer
  name: cluster-prefix
  parameters: {maxPrefixTokensToMatch: 2048}
- type: multicluster-prefix-cache-scorer
  name: cluster-prefix-scorer
  parameters: {prefixMatchInfoProducerName: cluster-prefix}
- type: max-score-picker
"""

STOCK_SCORER = PAIR.replace("type: multicluster-prefix-cache-scorer", "type: prefix-cache-scorer")

ONE_PLUGIN = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: multicluster-prefix-cache-scorer
  parameters: {lruCapacityPerServer: 700}
- type: max-score-picker
"""


def _director(text: str) -> tuple[Director, dict[str, object]]:
    setup = build_scheduling(
        parse_epp_config(text), REGISTRY, rng=random.Random(3), clock=lambda: NOW
    )
    store = Datastore(clock=lambda: NOW)
    for i in range(4):
        store.upsert_endpoint(f"peers/cluster-{i}", f"gw-{i}.example.com", 443)
        store.update_metrics(f"peers/cluster-{i}", EndpointMetrics(updated_at=NOW))
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


@pytest.mark.parametrize("text", [PAIR, STOCK_SCORER, ONE_PLUGIN])
def test_prefix_delegations_route_a_repeated_prefix_back_to_its_cluster(text: str) -> None:
    d, plugins = _director(text)
    prompt = "the same long system prompt for every turn " * 40
    first = d.handle_request(parse_request(_body(prompt)), {}, "r0")
    again = [
        d.handle_request(parse_request(_body(prompt + f" q{i}")), {}, f"r{i}") for i in (1, 2, 3)
    ]
    assert {x.target.name for x in again} == {first.target.name}
    types = {p.typed_name.type for p in plugins.values()}  # type: ignore[attr-defined]
    scorer_type = (
        "prefix-cache-scorer" if text is STOCK_SCORER else "multicluster-prefix-cache-scorer"
    )
    assert scorer_type in types


def test_the_pair_binds_the_scorer_to_the_multicluster_producer() -> None:
    _, plugins = _director(PAIR)
    producer, scorer = plugins["cluster-prefix"], plugins["cluster-prefix-scorer"]
    assert isinstance(producer, PrefixCacheScorer)
    assert producer.typed_name.type == "multicluster-approx-prefix-cache-producer"
    assert producer.params.max_prefix_tokens_to_match == 2048
    assert isinstance(scorer, ProducedPrefixScorer)
    assert scorer.producer is producer
    assert scorer.typed_name.type == "multicluster-prefix-cache-scorer"


def test_prefix_delegation_errors_name_the_multicluster_type() -> None:
    with pytest.raises(PluginValidationError) as err:
        REGISTRY.create("multicluster-prefix-cache-scorer", "p", {"nope": 1}, PluginContext())
    assert "(multicluster-prefix-cache-scorer)" in err.value.message
    assert "nope" in err.value.message
    with pytest.raises(PluginValidationError) as err:
        REGISTRY.create(
            "multicluster-approx-prefix-cache-producer", "p", {"blockSize": -1}, PluginContext()
        )
    assert "(multicluster-approx-prefix-cache-producer)" in err.value.message
    # the pair: index keys belong to the producer, as for the stock scorer
    text = PAIR.replace(
        "parameters: {prefixMatchInfoProducerName: cluster-prefix}",
        "parameters: {prefixMatchInfoProducerName: cluster-prefix, lruCapacityPerServer: 9}",
    )
    with pytest.raises(PluginValidationError, match="lruCapacityPerServer"):
        _director(text)


def test_the_multicluster_scorer_also_reads_a_stock_producer() -> None:
    text = PAIR.replace(
        "- type: multicluster-approx-prefix-cache-producer\n  name: cluster-prefix\n",
        "- type: approx-prefix-cache-producer\n  name: cluster-prefix\n",
    )
    _, plugins = _director(text)
    scorer = plugins["cluster-prefix-scorer"]
    assert isinstance(scorer, ProducedPrefixScorer)
    assert scorer.producer is plugins["cluster-prefix"]
    assert scorer.typed_name.type == "multicluster-prefix-cache-scorer"
