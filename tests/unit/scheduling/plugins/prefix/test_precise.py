"""``precise-prefix-cache-scorer``: scores from KV events, speculation, endpoint convention,
subscriptions following the datastore (real ZMQ PUB on loopback), contract and parameters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import zmq
import zmq.asyncio

from kvroute.datalayer.kvevents import BlockStored, KvEventBatch, encode_message
from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext
from kvroute.scheduling.interfaces import CycleState, ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.prefix import PLUGINS
from kvroute.scheduling.plugins.prefix.precise import (
    KV_EVENTS_ENDPOINT_LABEL,
    PrecisePrefixCacheScorer,
    PrecisePrefixParams,
)
from kvroute.scheduling.request import ApiKind, InferenceRequest
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path / "tok"))


def ep(name: str, *, block_size: int = 4, waiting: int = 0, **kw: Any) -> Endpoint:
    return Endpoint(
        name=name,
        address="127.0.0.1",
        port=kw.pop("port", 8000),
        labels=MappingProxyType(kw.pop("labels", {})),
        metrics=EndpointMetrics(cache_block_size=block_size, waiting_queue_size=waiting, **kw),
    )


def req(prompt: str, model: str = "m") -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        incoming_model=model,
        target_model=model,
        api=ApiKind.COMPLETIONS,
        body=MappingProxyType({"prompt": prompt}),
    )


def scorer_with(tokenizer: PromptTokenizer, **params: Any) -> PrecisePrefixCacheScorer:
    return PrecisePrefixCacheScorer(
        "p", PrecisePrefixParams.model_validate({"subscribe": False, **params}), tokenizer=tokenizer
    )


def engine_stores(
    scorer: PrecisePrefixCacheScorer, server: str, tokenizer: PromptTokenizer, prompt: str
) -> int:
    """Apply the events an engine with 4-token blocks would publish after caching ``prompt``."""
    ids = list(tokenizer.encode_text(prompt))
    n = len(ids) // 4
    hashes = tuple(f"{server}-{i}".encode() for i in range(n))  # engine's own opaque hashes
    event = BlockStored(hashes, None, tuple(ids[: n * 4]), 4)
    scorer.index.apply(server, KvEventBatch(0.0, (event,)))
    return n


def cycle(
    scorer: PrecisePrefixCacheScorer,
    request: InferenceRequest,
    endpoints: list[Endpoint],
    *,
    to: Endpoint | None = None,
    now: float = 0.0,
) -> dict[str, float]:
    state = CycleState(now)
    scorer.prepare_data(state, request, endpoints)
    scores = dict(scorer.score(state, request, endpoints))
    if to is not None:
        result = SchedulingResult({"default": ProfileResult((to,))}, "default")
        scorer.pre_request(state, request, result)
    return scores


PROMPT = "abcdefghijklmnopqrstuvw"  # BOS + 23 bytes = 24 tokens = 6 blocks of 4


def test_scores_follow_engine_events(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer)
    assert engine_stores(scorer, "a", tokenizer, PROMPT) == 6
    engine_stores(scorer, "b", tokenizer, PROMPT[:11])  # 12 tokens: 3 blocks
    scores = cycle(scorer, req(PROMPT), [ep("a"), ep("b"), ep("c")])
    assert scores == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert set(scores) <= {"a", "b", "c"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_speculative_entry_covers_event_lag_then_expires(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer, speculativeTtlSeconds=2.0)
    a, b = ep("a"), ep("b")
    cycle(scorer, req(PROMPT), [a, b], to=b, now=100.0)
    assert cycle(scorer, req(PROMPT), [a, b], now=101.0) == {"a": 0.0, "b": 1.0}
    assert cycle(scorer, req(PROMPT), [a, b], now=103.0) == {"a": 0.0, "b": 0.0}


def test_speculation_off(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer, speculativeTtlSeconds=0)
    a = ep("a")
    cycle(scorer, req(PROMPT), [a], to=a)
    assert cycle(scorer, req(PROMPT), [a]) == {"a": 0.0}


def test_block_size_learned_from_events_beats_metrics(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer)
    engine_stores(scorer, "a", tokenizer, PROMPT)
    # the scrape claims 16-token blocks, but the engine's events say 4: events win
    assert cycle(scorer, req(PROMPT), [ep("a", block_size=16)]) == {"a": 1.0}
    assert scorer.block_size(ep("fresh", block_size=16)) == 16
    assert scorer.block_size(ep("fresh", block_size=0)) == 16  # blockSizeTokens default


def test_lora_requests_use_the_adapter_namespace(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer)
    engine_stores(scorer, "a", tokenizer, PROMPT)  # base-model blocks
    lora_ep = ep("a", active_models=frozenset({"sql-lora"}))
    assert cycle(scorer, req(PROMPT, model="sql-lora"), [lora_ep]) == {"a": 0.0}
    assert cycle(scorer, req(PROMPT, model="m"), [lora_ep]) == {"a": 1.0}


def test_unencodable_request_scores_zero(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer)
    engine_stores(scorer, "a", tokenizer, PROMPT)
    embeddings = InferenceRequest(
        request_id="r", incoming_model="m", target_model="m", api=ApiKind.EMBEDDINGS
    )
    assert cycle(scorer, embeddings, [ep("a")]) == {"a": 0.0}


def test_overloaded_holder_loses_affinity(tokenizer: PromptTokenizer) -> None:
    scorer = scorer_with(tokenizer)
    engine_stores(scorer, "a", tokenizer, PROMPT)
    assert cycle(scorer, req(PROMPT), [ep("a", waiting=40), ep("b")]) == {"a": 0.0, "b": 0.0}
    assert cycle(scorer, req(PROMPT), [ep("a", waiting=4), ep("b")]) == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    ("params", "endpoint", "expected"),
    [
        ({}, ep("a", port=8000), "tcp://127.0.0.1:9000"),
        ({"kvEventsPortOffset": 10}, ep("a", port=8000), "tcp://127.0.0.1:8010"),
        ({"kvEventsPort": 5557}, ep("a", port=8000), "tcp://127.0.0.1:5557"),
        (
            {"kvEventsPort": 5557},
            ep("a", labels={KV_EVENTS_ENDPOINT_LABEL: "tcp://10.1.1.1:7000"}),
            "tcp://10.1.1.1:7000",
        ),
    ],
    ids=["offset-default", "offset", "fixed-port", "label-wins"],
)
def test_kv_events_endpoint_convention(
    tokenizer: PromptTokenizer, params: dict[str, Any], endpoint: Endpoint, expected: str
) -> None:
    assert scorer_with(tokenizer, **params).kv_events_endpoint(endpoint) == expected


def test_ipv6_address_is_bracketed(tokenizer: PromptTokenizer) -> None:
    v6 = Endpoint(name="a", address="fd00::1", port=8000)
    assert scorer_with(tokenizer).kv_events_endpoint(v6) == "tcp://[fd00::1]:9000"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "tokenizer directory is required"),
        ({"tokenizer": "/no/such/dir"}, "tokenizer.json"),
        ({"tokenizer": "x", "reorderWindow": -1}, "reorderWindow"),
    ],
    ids=["no-tokenizer", "bad-directory", "bad-window"],
)
def test_invalid_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginValidationError, match=message):
        PLUGINS["precise-prefix-cache-scorer"]("p", params, PluginContext())


def test_factory_builds_from_directory(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(tmp_path)
    plugin = PLUGINS["precise-prefix-cache-scorer"](
        "p", {"tokenizer": str(directory)}, PluginContext()
    )
    assert isinstance(plugin, PrecisePrefixCacheScorer)
    assert plugin.typed_name.type == "precise-prefix-cache-scorer"


async def test_attach_subscribes_follows_datastore_and_scores(tokenizer: PromptTokenizer) -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    store = Datastore()
    store.upsert_endpoint(
        "a", "127.0.0.1", 8000, {KV_EVENTS_ENDPOINT_LABEL: f"tcp://127.0.0.1:{port}"}
    )
    scorer = PrecisePrefixCacheScorer(
        "p", PrecisePrefixParams(speculativeTtlSeconds=0), tokenizer=tokenizer
    )
    scorer.attach(store)  # the lifecycle kvroute.wiring.build_epp runs: attach, run, aclose
    runner = asyncio.create_task(scorer.run_background())
    try:
        assert scorer.subscriber is not None
        assert scorer.subscriber.subscriptions == {"a": f"tcp://127.0.0.1:{port}"}
        ids = list(tokenizer.encode_text(PROMPT))
        event = BlockStored(tuple(range(6)), None, tuple(ids), 4)
        a = ep("a")
        seq = 0
        async with asyncio.timeout(5):
            while cycle(scorer, req(PROMPT), [a])["a"] < 1.0:  # slow joiner: republish
                await pub.send_multipart(encode_message("kv", seq, KvEventBatch(0.0, (event,))))
                seq += 1
                await asyncio.sleep(0.02)
        store.upsert_endpoint("b", "127.0.0.1", 8001)  # added later: subscribed too
        assert set(scorer.subscriber.subscriptions) == {"a", "b"}
        store.remove_endpoint("a")
        assert set(scorer.subscriber.subscriptions) == {"b"}
        assert cycle(scorer, req(PROMPT), [a]) == {"a": 0.0}
    finally:
        await scorer.aclose()
        assert runner.done()
        pub.close(0)
        ctx.term()
