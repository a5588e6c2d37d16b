"""``precise-prefix-cache-producer``: parameters (upstream's sample shapes), the match it
publishes and ``prefix-cache-scorer``/``no-hit-lru-scorer`` reading it, speculation, the
per-endpoint subscriptions driven by ``endpoint-notification-source``, and one end-to-end run:
a config of the samples' shape built by ``build_epp``, a real ZMQ publisher on loopback sending
``BlockStored`` for one endpoint, and the director then routing to that endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import zmq
import zmq.asyncio

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.kvevents import BlockStored, KvEventBatch, encode_message
from kvroute.datalayer.notifications import EndpointNotificationSource
from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.framework.scheduling import PREFIX_CACHE_MATCH
from kvroute.plugins.registry import PluginContext
from kvroute.protocol.openai import parse_request
from kvroute.scheduling.interfaces import PREFETCHED, CycleState, ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.prefix import PLUGINS
from kvroute.scheduling.plugins.prefix.precise_params import PreciseProducerParams
from kvroute.scheduling.plugins.prefix.precise_producer import (
    PrecisePrefixCacheProducer,
    index_key,
)
from kvroute.scheduling.plugins.prefix.producer import ProducedPrefixScorer
from kvroute.scheduling.plugins.scorers.no_hit_lru import NoHitLruScorer
from kvroute.scheduling.request import ApiKind, InferenceRequest
from kvroute.wiring import build_epp
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir

PROMPT = "abcdefghijklmnopqrstuvw"  # BOS + 23 bytes = 24 tokens = 6 blocks of 4


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path / "tok"))


def ep(name: str, address: str = "127.0.0.1", port: int = 8000, **labels: str) -> Endpoint:
    return Endpoint(
        name=name,
        address=address,
        port=port,
        labels=MappingProxyType(labels),
        metrics=EndpointMetrics(),
    )


def req(prompt: str = PROMPT) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        api=ApiKind.COMPLETIONS,
        body=MappingProxyType({"prompt": prompt}),
    )


def producer(**params: Any) -> PrecisePrefixCacheProducer:
    return PrecisePrefixCacheProducer("p", PreciseProducerParams.model_validate(params))


def store_blocks(p: PrecisePrefixCacheProducer, e: Endpoint, ids: list[int], size: int = 4) -> None:
    """The events an engine with ``size``-token blocks publishes after caching ``ids``."""
    n = len(ids) // size
    hashes = tuple(f"{e.name}-{i}".encode() for i in range(n))
    p.index.apply(index_key(e), KvEventBatch(0.0, (BlockStored(hashes, None, tuple(ids), size),)))


def cycle_with_tokens(
    p: PrecisePrefixCacheProducer, endpoints: list[Endpoint], tokens: list[int] | None
) -> CycleState:
    state = CycleState(0.0)
    prefetched: dict[str, object] = {"token-producer": tokens}
    state.write(PREFETCHED, prefetched)
    p.prepare_data(state, req(), endpoints)
    return state


# -- parameters ----------------------------------------------------------------------------------


def test_bad_tokenizer_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PluginValidationError, match=r"parameters\.tokenizer"):
        PLUGINS["precise-prefix-cache-producer"]("p", {"tokenizer": str(tmp_path)}, PluginContext())


# -- the match ----------------------------------------------------------------------------------


def test_match_from_engine_events_and_the_scorer_over_it(tokenizer: PromptTokenizer) -> None:
    p = producer()
    p.token_source = "token-producer"
    a, b, c = ep("a"), ep("b", "127.0.0.2"), ep("c", "127.0.0.3")
    ids = list(tokenizer.encode_text(PROMPT))
    store_blocks(p, a, ids)
    store_blocks(p, b, ids[:12])
    state = cycle_with_tokens(p, [a, b, c], ids)
    assert p.score(state, req(), [a, b, c]) == {"a": 1.0, "b": 0.5, "c": 0.0}
    scorer = ProducedPrefixScorer("prefix-cache-scorer", p)
    assert scorer.score(state, req(), [a, b, c]) == {"a": 1.0, "b": 0.5, "c": 0.0}
    match = p.match(state, req(), [a, b, c])
    assert (match.total_blocks, dict(match.matched)) == (6, {"a": 6, "b": 3, "c": 0})
    # the PrefixCacheMatchInfo view for P/D deciders: tokens = blocks x block size (4)
    info = state.get(PREFIX_CACHE_MATCH, None)
    assert info is not None
    assert info.cached_tokens == {"a": 24, "b": 12, "c": 0}
    assert p.index_metrics()["kv_cache_index_lookup_requests_total"] == 0  # enableMetrics off


def test_enable_metrics_counts_upstreams_index_counters(tokenizer: PromptTokenizer) -> None:
    p = producer(indexerConfig={"kvBlockIndexConfig": {"enableMetrics": True}})
    p.token_source = "token-producer"
    a, b = ep("a"), ep("b", "127.0.0.2")
    ids = list(tokenizer.encode_text(PROMPT))
    store_blocks(p, a, ids[:12])
    store_blocks(p, b, ids)
    cycle_with_tokens(p, [a, b], ids)
    cycle_with_tokens(p, [a], ids)
    assert p.index_metrics() == {
        "kv_cache_index_admissions_total": 9,
        "kv_cache_index_evictions_total": 0,
        "kv_cache_index_lookup_requests_total": 2,
        "kv_cache_index_lookup_hits_total": 6 + 3,  # the best candidate's leading blocks
    }
    assert "kv_cache_index_lookup_requests_total=2" in p.metrics_line()


def test_no_tokens_matches_nothing(tokenizer: PromptTokenizer) -> None:
    p = producer()
    p.token_source = "token-producer"
    a = ep("a")
    store_blocks(p, a, list(tokenizer.encode_text(PROMPT)))
    state = cycle_with_tokens(p, [a], None)  # the render failed
    assert p.score(state, req(), [a]) == {"a": 0.0}
    assert p.match(state, req(), [a]).matched == {}


def test_local_tokenizer_when_no_token_producer(tokenizer: PromptTokenizer) -> None:
    p = PrecisePrefixCacheProducer("p", PreciseProducerParams(), tokenizer=tokenizer)
    a = ep("a")
    store_blocks(p, a, list(tokenizer.encode_text(PROMPT)))
    assert list(p.prefetch(req()) or []) == list(tokenizer.encode_text(PROMPT))
    state = CycleState(0.0)
    p.prepare_data(state, req(), [a])
    assert p.score(state, req(), [a]) == {"a": 1.0}


def test_block_size_before_events_is_the_configured_one(tokenizer: PromptTokenizer) -> None:
    p = producer(tokenProcessorConfig={"blockSize": 8})
    a = ep("a")
    assert p.block_size(a) == 8
    store_blocks(p, a, list(tokenizer.encode_text(PROMPT)), size=4)
    assert p.block_size(a) == 4  # the engine's own, once its events say so


def test_speculative_indexing_covers_the_event_lag_then_expires(tokenizer: PromptTokenizer) -> None:
    ids = list(tokenizer.encode_text(PROMPT))
    a, b = ep("a"), ep("b", "127.0.0.2")
    for on in (False, True):
        p = producer(speculativeIndexing=on, speculativeTTL="1s")
        p.token_source = "token-producer"
        state = cycle_with_tokens(p, [a, b], ids)
        p.pre_request(state, req(), SchedulingResult({"default": ProfileResult((b,))}, "default"))
        later = cycle_with_tokens(p, [a, b], ids)
        assert p.score(later, req(), [a, b])["b"] == (1.0 if on else 0.0)
    expired = CycleState(5.0)
    prefetched: dict[str, object] = {"token-producer": ids}
    expired.write(PREFETCHED, prefetched)
    p.prepare_data(expired, req(), [a, b])
    assert p.score(expired, req(), [a, b])["b"] == 0.0


# -- endpoint events (what endpoint-notification-source delivers) --------------------------------


def test_endpoint_events_open_and_close_subscriptions() -> None:
    p = producer(kvEventsConfig={"podDiscoveryConfig": {"socketPort": 6000}})
    a = ep("pod-a-rank-1", "10.0.0.1", 8001)
    b = ep("b", "10.0.0.2", 8000, **{"kvroute.io/kv-events-endpoint": "tcp://10.9.9.9:7000"})
    p.extract_endpoint(EndpointEvent(EndpointEventKind.ADDED, a))
    p.extract_endpoint(EndpointEvent(EndpointEventKind.ADDED, b))
    assert p.subscriber is not None
    assert p.subscriber.subscriptions == {
        "10.0.0.1:8001": "tcp://10.0.0.1:6001",  # socketPort + the data-parallel rank
        "10.0.0.2:8000": "tcp://10.9.9.9:7000",  # the label overrides
    }
    store_blocks(p, a, list(range(8)))
    assert p.blocks_held("pod-a-rank-1") == 2
    p.extract_endpoint(EndpointEvent(EndpointEventKind.REMOVED, a))
    assert set(p.subscriber.subscriptions) == {"10.0.0.2:8000"}
    assert p.blocks_held("pod-a-rank-1") == 0
    assert p.index.size("10.0.0.1:8001") == 0  # its blocks are gone with it


def test_discover_pods_false_opens_no_subscription() -> None:
    p = producer(kvEventsConfig={"discoverPods": False})
    p.extract_endpoint(EndpointEvent(EndpointEventKind.ADDED, ep("a")))
    assert p.subscriber is None


# -- configs of the samples' shape ----------------------------------------------------------------

NO_HIT_LRU = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-producer
  parameters: {tokenProcessorConfig: {blockSizeTokens: 5}}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
- type: no-hit-lru-scorer
  parameters: {lruSize: 2048}
- type: decode-filter
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: no-hit-lru-scorer, weight: 1}
"""


def test_no_hit_lru_reads_the_precise_producers_match(tokenizer: PromptTokenizer) -> None:
    graph = build_epp(parse_epp_config(NO_HIT_LRU, "lru.yaml"), Datastore())
    p = graph.setup.plugins["precise-prefix-cache-producer"]
    lru = graph.setup.plugins["no-hit-lru-scorer"]
    scorer = graph.setup.plugins["prefix-cache-scorer"]
    assert isinstance(p, PrecisePrefixCacheProducer)
    assert isinstance(scorer, ProducedPrefixScorer)
    assert scorer.producer is p
    assert isinstance(lru, NoHitLruScorer)
    read_by_lru: object = lru.prefix  # typed as the approximate scorer (see consumer.py)
    assert read_by_lru is p
    p.tokenizer = tokenizer  # no token-producer in this sample: give it token ids
    a, b = ep("a"), ep("b", "127.0.0.2")
    cold = CycleState(0.0)
    p.prepare_data(cold, req(), [a, b])
    assert lru.score(cold, req(), [a, b]) == {"a": 1.0, "b": 1.0}  # cold: LRU rank
    store_blocks(p, a, list(tokenizer.encode_text(PROMPT)))
    warm = CycleState(0.0)
    p.prepare_data(warm, req(), [a, b])
    assert lru.score(warm, req(), [a, b]) == {"a": 0.5, "b": 0.5}  # a prefix hit


def test_a_token_producer_with_the_vllm_backend_is_the_token_source() -> None:
    text = NO_HIT_LRU.replace(
        "plugins:\n- type: precise",
        "plugins:\n- type: token-producer\n  parameters: {modelName: m, vllm: {url: "
        "'http://127.0.0.1:9'}}\n- type: precise",
        1,
    )
    graph = build_epp(parse_epp_config(text, "tp.yaml"), Datastore())
    p = graph.setup.plugins["precise-prefix-cache-producer"]
    assert isinstance(p, PrecisePrefixCacheProducer)
    assert p.token_source == "token-producer"
    assert p.prefetch(req()) is None  # the token producer renders; no second tokenisation


E2E = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: endpoint-notification-source
- type: precise-prefix-cache-producer
  parameters:
    tokenizer: TOKENIZER
    tokenProcessorConfig: {blockSize: 64}
    kvEventsConfig: {podDiscoveryConfig: {socketPort: PORT}}
    indexerConfig: {kvBlockIndexConfig: {enableMetrics: true}}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
- type: queue-scorer
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: endpoint-notification-source
    extractors: [{pluginRef: precise-prefix-cache-producer}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


async def test_end_to_end_kv_events_make_the_director_prefer_that_endpoint(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(tmp_path / "tok")
    tokenizer = PromptTokenizer.from_directory(directory)
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)  # engine "a"'s KV-events publisher (vLLM binds tcp://*:5557)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    text = E2E.replace("TOKENIZER", str(directory)).replace("PORT", str(port))
    store = Datastore()
    store.upsert_endpoint("a", "127.0.0.1", 8000)
    store.upsert_endpoint("b", "127.0.0.2", 8000)  # its publisher would be 127.0.0.2:<port>
    store.update_metrics("a", EndpointMetrics(waiting_queue_size=4, updated_at=1e12))
    store.update_metrics("b", EndpointMetrics(updated_at=1e12))  # idle: wins without a hit
    graph = build_epp(parse_epp_config(text, "e2e.yaml"), store)
    p = graph.setup.plugins["precise-prefix-cache-producer"]
    source = graph.setup.plugins["endpoint-notification-source"]
    assert isinstance(p, PrecisePrefixCacheProducer)
    assert isinstance(source, EndpointNotificationSource)
    assert source.extractors == (p,)
    assert p.subscriber is not None
    assert p.subscriber.subscriptions == {
        "127.0.0.1:8000": f"tcp://127.0.0.1:{port}",
        "127.0.0.2:8000": f"tcp://127.0.0.2:{port}",
    }
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": 4}).encode()

    async def route(i: int) -> str:
        parsed = parse_request(body, "/v1/completions")
        decision = await graph.director.handle_request_async(parsed, {}, f"r{i}")
        graph.director.handle_response_complete(decision, None)
        return decision.target.name

    ids = list(tokenizer.encode_text(PROMPT))
    stored = KvEventBatch(0.0, (BlockStored(tuple(range(6)), None, tuple(ids), 4),))
    try:
        async with graph.running():
            assert await route(0) == "b"  # no KV events yet: the idle endpoint wins
            seq = 0
            async with asyncio.timeout(5):
                while p.index.size("127.0.0.1:8000") < 6:  # a slow-joining SUB: republish
                    await pub.send_multipart(encode_message("kv@a@m", seq, stored))
                    seq += 1
                    await asyncio.sleep(0.02)
            assert [await route(i) for i in range(1, 4)] == ["a", "a", "a"]
            hits = p.index_metrics()["kv_cache_index_lookup_hits_total"]
            assert hits == 3 * 6  # three lookups, six leading blocks each
            store.remove_endpoint("a")  # delete: unsubscribed and its blocks dropped
            assert set(p.subscriber.subscriptions) == {"127.0.0.2:8000"}
            assert p.index.size("127.0.0.1:8000") == 0
    finally:
        pub.close(0)
        ctx.term()


def test_prefix_cache_scorer_naming_a_missing_producer_says_which() -> None:
    text = NO_HIT_LRU.replace(
        "prefixMatchInfoProducerName: precise-prefix-cache-producer",
        "prefixMatchInfoProducerName: nope",
    )
    with pytest.raises((ConfigError, PluginValidationError), match="precise-prefix-cache-producer"):
        build_epp(parse_epp_config(text, "x.yaml"), Datastore())


async def test_global_socket_engines_connect_and_are_matched_by_topic(
    tokenizer: PromptTokenizer,
) -> None:
    p = PrecisePrefixCacheProducer(
        "p",
        PreciseProducerParams.model_validate(
            {"kvEventsConfig": {"zmqEndpoint": "tcp://127.0.0.1:*", "discoverPods": False}}
        ),
        tokenizer=tokenizer,
    )
    assert p.listener is not None
    runner = asyncio.create_task(p.run_background())
    ctx = zmq.asyncio.Context()
    engine = ctx.socket(zmq.PUB)  # the engine connects to the EPP (vLLM: endpoint names a host)
    engine.setsockopt(zmq.LINGER, 0)
    a, b = ep("a", "127.0.0.1", 8000), ep("b", "127.0.0.2", 8000)
    ids = list(tokenizer.encode_text(PROMPT))
    stored = KvEventBatch(0.0, (BlockStored(tuple(range(6)), None, tuple(ids), 4),))
    try:
        await asyncio.wait_for(p.listener.bound.wait(), 5)
        assert p.listener.last_endpoint is not None
        engine.connect(p.listener.last_endpoint)
        async with asyncio.timeout(5):
            seq = 0
            while p.index.size("127.0.0.1:8000") < 6:
                await engine.send_multipart(encode_message("kv@127.0.0.1:8000@m", seq, stored))
                seq += 1
                await asyncio.sleep(0.02)
        state = CycleState(0.0)
        p.prepare_data(state, req(), [a, b])
        assert p.score(state, req(), [a, b]) == {"a": 1.0, "b": 0.0}
        assert p.subscriber is None  # discoverPods: false: no per-endpoint subscription
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        engine.close(0)
        ctx.term()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for _ in range(500):  # up to 5 s
        if text in caplog.text:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never logged: {text!r}")


async def test_a_global_socket_that_cannot_bind_is_retried_without_crashing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = producer(kvEventsConfig={"zmqEndpoint": "tcp://192.0.2.1:5557"})  # not a local address
    runner = asyncio.create_task(p.run_background())
    try:
        await _logged(caplog, "cannot bind kvEventsConfig.zmqEndpoint")
        assert not runner.done()  # the per-endpoint subscriptions keep running
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_enable_metrics_logs_the_counts_every_interval(
    tokenizer: PromptTokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvroute.scheduling.plugins.prefix.precise_producer")
    index_cfg = {"enableMetrics": True, "metricsLoggingInterval": 20_000_000}  # 20 ms in ns
    p = producer(indexerConfig={"kvBlockIndexConfig": index_cfg})
    p.token_source = "token-producer"
    cycle_with_tokens(p, [ep("a")], list(tokenizer.encode_text(PROMPT)))
    runner = asyncio.create_task(p.run_background())
    try:
        await _logged(caplog, "kv_cache_index_lookup_requests_total=1")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    quiet = producer(indexerConfig={"kvBlockIndexConfig": {"metricsLoggingInterval": 20_000_000}})
    caplog.clear()
    runner = asyncio.create_task(quiet.run_background())
    await asyncio.sleep(0.1)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    assert "kv_cache_index" not in caplog.text  # enableMetrics false: no metrics, no log


def test_speculative_entries_replicate_to_peers(tokenizer: PromptTokenizer) -> None:
    ids = list(tokenizer.encode_text(PROMPT))
    a = ep("a")
    here, peer = (producer(speculativeIndexing=True) for _ in range(2))
    for p in (here, peer):
        p.token_source = "token-producer"
        p.extract_endpoint(EndpointEvent(EndpointEventKind.ADDED, a))
    assert here.drain_replicated() == []  # recording starts with the first drain
    state = cycle_with_tokens(here, [a], ids)
    here.pre_request(state, req(), SchedulingResult({"default": ProfileResult((a,))}, "default"))
    entries = here.drain_replicated()
    assert [(e[0], e[1]) for e in entries] == [("127.0.0.1:8000", 2.0)]
    with pytest.raises(ValueError, match="speculative entry"):
        peer.merge_replicated([*entries, ["x", "soon", []]], 0.0)  # all checked before any
    assert peer.score(cycle_with_tokens(peer, [a], ids), req(), [a]) == {"a": 0.0}
    peer.merge_replicated(entries, 0.0)
    assert peer.score(cycle_with_tokens(peer, [a], ids), req(), [a]) == {"a": 1.0}
    assert peer.replication_channel() == "precise-prefix-cache-producer/p"
