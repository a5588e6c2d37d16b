"""mm-embeddings-cache-producer: owns the per-endpoint item LRU; the scorer reads it."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.prefix.mm_producer import (
    MmEmbeddingsCacheProducer,
    MmProducerParams,
)
from kvroute.scheduling.plugins.scorers.mm_embeddings_cache import MmEmbeddingsCacheScorer
from kvroute.scheduling.request import InferenceRequest, MediaItem
from tests.fakes import make_endpoint, make_state

NOW = 50.0

SPLIT = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: mm-embeddings-cache-producer
    parameters: {cacheSizeInMBPerServer: 8}
  - type: mm-embeddings-cache-scorer
  - type: max-score-picker
  - type: single-profile-handler
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: mm-embeddings-cache-scorer
      - pluginRef: max-score-picker
"""


def _req(*keys: str) -> InferenceRequest:
    media = tuple(MediaItem(kind="image", key=k, tokens=100) for k in keys)
    return InferenceRequest(request_id="r", incoming_model="m", target_model="m", media=media)


def _sent(p: MmEmbeddingsCacheProducer, req: InferenceRequest, name: str) -> None:
    ep = make_endpoint(name)
    p.pre_request(make_state(), req, SchedulingResult({"d": ProfileResult((ep,))}, "d"))


def _build(text: str) -> tuple[Director, dict[str, object], Datastore]:
    setup = build_scheduling(
        parse_epp_config(text),
        default_registry(include_entry_points=False),
        rng=random.Random(3),
        clock=lambda: NOW,
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
    return director, dict(setup.plugins), store


def _chat(image_url: str, text: str) -> bytes:
    content = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": image_url}},
    ]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()


def test_capacity_from_budget_spellings_and_default() -> None:
    assert MmEmbeddingsCacheProducer().cache.capacity == 2048  # 4096 MiB / 2 MiB
    assert (
        MmEmbeddingsCacheProducer(params=MmProducerParams(cacheSizeInMB=2048)).cache.capacity
        == 1024
    )
    p = MmEmbeddingsCacheProducer(params=MmProducerParams(cacheSizeInMBPerServer=6))
    assert p.cache.capacity == 3
    assert (
        MmEmbeddingsCacheProducer(params=MmProducerParams(cacheSizeInMBPerServer=0)).cache.capacity
        == 2048
    )


def test_lru_per_endpoint_and_removed_endpoint_dropped() -> None:
    p = MmEmbeddingsCacheProducer(params=MmProducerParams(cacheSizeInMBPerServer=6))
    for k in ("1", "2", "3"):
        _sent(p, _req(k), "a")
    _sent(p, _req("1", "1"), "a")  # touched: most recent; a repeat counts once
    _sent(p, _req("4"), "a")
    _sent(p, _req(), "b")  # text-only: nothing recorded
    assert p.cache.cached("a") == ("3", "1", "4")
    assert p.cache.endpoints() == ("a",)
    p.endpoint_event(EndpointEvent(EndpointEventKind.ADDED, make_endpoint("a")))
    assert p.cache.cached("a") == ("3", "1", "4")
    p.endpoint_event(EndpointEvent(EndpointEventKind.REMOVED, make_endpoint("a")))
    assert p.cache.cached("a") == ()


def test_both_budget_spellings_rejected_by_name() -> None:
    text = SPLIT.replace(
        "{cacheSizeInMBPerServer: 8}", "{cacheSizeInMBPerServer: 8, cacheSizeInMB: 8}"
    )
    with pytest.raises((ConfigError, PluginValidationError), match="cacheSizeInMB"):
        _build(text)
    text = SPLIT.replace("{cacheSizeInMBPerServer: 8}", "{entrySizeMB: 8}")
    with pytest.raises((ConfigError, PluginValidationError), match="entrySizeMB"):
        _build(text)


def test_scorer_cache_params_next_to_a_producer_rejected() -> None:
    text = SPLIT.replace(
        "  - type: mm-embeddings-cache-scorer\n",
        "  - {type: mm-embeddings-cache-scorer, parameters: {cacheSizeInMBPerServer: 64}}\n",
    )
    with pytest.raises((ConfigError, PluginValidationError)) as err:
        _build(text)
    assert "cacheSizeInMBPerServer" in str(err.value)
    assert "mm-embeddings-cache-producer" in str(err.value)


def test_split_pipeline_routes_same_image_to_the_same_endpoint() -> None:
    d, plugins, store = _build(SPLIT)
    producer = plugins["mm-embeddings-cache-producer"]
    scorer = plugins["mm-embeddings-cache-scorer"]
    assert isinstance(producer, MmEmbeddingsCacheProducer)
    assert isinstance(scorer, MmEmbeddingsCacheScorer)
    assert scorer.producer is producer
    assert scorer.items is producer.cache
    assert producer.cache.capacity == 4
    url = "https://example.test/cat.png"
    first = d.handle_request(
        parse_request(_chat(url, "what is this?"), "/v1/chat/completions"), {}, "r0"
    )
    target = first.target.name
    assert producer.cache.endpoints() == (target,)  # the producer's PreRequest recorded it
    again = [
        d.handle_request(
            parse_request(_chat(url, f"another question {i}"), "/v1/chat/completions"), {}, f"r{i}"
        )
        for i in (1, 2, 3)
    ]
    assert {x.target.name for x in again} == {target}
    # the scorer does not record a second copy: one entry for the one image
    assert len(producer.cache.cached(target)) == 1
    del store


def test_scorer_alone_keeps_its_own_cache() -> None:
    text = SPLIT.replace(
        "  - type: mm-embeddings-cache-producer\n    parameters: {cacheSizeInMBPerServer: 8}\n", ""
    )
    d, plugins, _ = _build(text)
    scorer = plugins["mm-embeddings-cache-scorer"]
    assert isinstance(scorer, MmEmbeddingsCacheScorer)
    assert scorer.producer is None
    first = d.handle_request(
        parse_request(_chat("https://example.test/a.png", "q"), "/v1/chat/completions"), {}, "r0"
    )
    assert len(scorer.cached(first.target.name)) == 1


def test_prepare_data_writes_the_match_the_scorer_reads() -> None:
    p = MmEmbeddingsCacheProducer()
    scorer = MmEmbeddingsCacheScorer(producer=p)
    _sent(p, _req("x", "y"), "a")
    _sent(p, _req("z"), "b")
    eps = [make_endpoint("a"), make_endpoint("b"), make_endpoint("c")]
    state = make_state()
    p.prepare_data(state, _req("x", "z", "x"), eps)
    match = p.match(state, _req("ignored"))  # the cycle's match, not a recomputation
    assert match.items == ("x", "z")
    assert dict(match.matched) == {"a": 1, "b": 1}
    assert scorer.score(state, _req("x", "z"), eps) == {"a": 0.5, "b": 0.5}
    _sent(p, _req("z"), "a")  # recorded after PrepareData: this cycle's match is unchanged
    assert scorer.score(state, _req("x", "z"), eps) == {"a": 0.5, "b": 0.5}
    assert scorer.score(make_state(), _req("x", "z"), eps) == {"a": 1.0, "b": 0.5}
