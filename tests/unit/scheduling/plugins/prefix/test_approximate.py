"""``prefix-cache-scorer``: upstream scoring, PreRequest indexing, auto-tune, pruning, level 2
and the anti-hotspot rule. Real index, real hashing, real tokenizer (from a temp directory)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext
from kvroute.scheduling.interfaces import (
    EXPLAIN,
    CycleState,
    ProfileResult,
    SchedulingResult,
)
from kvroute.scheduling.plugins.prefix import PLUGINS
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheParams, PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.hashing import char_block_hashes, model_root_hash
from kvroute.scheduling.request import ApiKind, InferenceRequest
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir


def ep(
    name: str,
    *,
    waiting: int = 0,
    running: int = 0,
    inflight: int = 0,
    block_size: int = 0,
    num_blocks: int = 0,
) -> Endpoint:
    return Endpoint(
        name=name,
        address="10.0.0.1",
        port=8000,
        metrics=EndpointMetrics(
            waiting_queue_size=waiting,
            running_queue_size=running,
            cache_block_size=block_size,
            cache_num_blocks=num_blocks,
        ),
        load=EndpointLoad(inflight=inflight),
    )


def req(prompt: str, *, model: str = "m", salt: str | None = None) -> InferenceRequest:
    body: dict[str, Any] = {"prompt": prompt}
    if salt is not None:
        body["cache_salt"] = salt
    return InferenceRequest(
        request_id="r",
        incoming_model=model,
        target_model=model,
        api=ApiKind.COMPLETIONS,
        body=MappingProxyType(body),
        prompt_text=prompt,
    )


def chat(*contents: str) -> InferenceRequest:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": c}
        for i, c in enumerate(contents)
    ]
    return InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        api=ApiKind.CHAT_COMPLETIONS,
        body=MappingProxyType({"messages": messages}),
    )


def sent(target: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    results: dict[str, ProfileResult | None] = {"default": ProfileResult((target,))}
    if prefill is not None:
        results["prefill"] = ProfileResult((prefill,))
    return SchedulingResult(profile_results=results, primary_profile="default")


def route(
    scorer: PrefixCacheScorer,
    request: InferenceRequest,
    endpoints: list[Endpoint],
    *,
    to: Endpoint | None = None,
    now: float = 0.0,
) -> dict[str, float]:
    """One cycle as the director runs it: PrepareData, score, PreRequest (if ``to``)."""
    state = CycleState(now)
    scorer.prepare_data(state, request, endpoints)
    scores = dict(scorer.score(state, request, endpoints))
    if to is not None:
        scorer.pre_request(state, request, sent(to))
    return scores


A, B, C = ep("a"), ep("b"), ep("c")
PROMPT = "x" * 640  # 10 blocks of 64 characters


def test_contract_keys_and_range() -> None:
    scorer = PrefixCacheScorer()
    route(scorer, req(PROMPT), [A, B, C], to=A)
    scores = route(scorer, req(PROMPT[:320] + "y" * 320), [A, B])
    assert set(scores) <= {"a", "b"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_repeated_prompt_scores_where_sent() -> None:
    scorer = PrefixCacheScorer()
    assert route(scorer, req(PROMPT), [A, B, C], to=B) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert route(scorer, req(PROMPT), [A, B, C]) == {"a": 0.0, "b": 1.0, "c": 0.0}


def test_partial_prefix_is_fraction_of_blocks() -> None:
    scorer = PrefixCacheScorer()
    route(scorer, req(PROMPT), [A, B], to=A)
    scores = route(scorer, req(PROMPT[:256] + "z" * 384), [A, B])
    assert scores == {"a": pytest.approx(4 / 10), "b": 0.0}


@pytest.mark.parametrize(
    ("second", "expected_a"),
    [(req(PROMPT, model="other"), 0.0), (req(PROMPT, salt="s"), 0.0), (req(PROMPT), 1.0)],
    ids=["other-model", "cache-salt", "same"],
)
def test_model_and_salt_separate_namespaces(second: InferenceRequest, expected_a: float) -> None:
    scorer = PrefixCacheScorer()
    route(scorer, req(PROMPT), [A, B], to=A)
    assert route(scorer, second, [A, B])["a"] == expected_a


def test_short_prompt_scores_zero_everywhere() -> None:
    scorer = PrefixCacheScorer()
    route(scorer, req("short"), [A], to=A)
    assert route(scorer, req("short"), [A, B]) == {"a": 0.0, "b": 0.0}


def test_pre_request_also_indexes_prefill_target() -> None:
    scorer = PrefixCacheScorer()
    state = CycleState(0.0)
    scorer.prepare_data(state, req(PROMPT), [A, B])
    scorer.pre_request(state, req(PROMPT), sent(A, prefill=B))
    assert route(scorer, req(PROMPT), [A, B]) == {"a": 1.0, "b": 1.0}


def test_pre_request_indexes_what_prepare_data_hashed() -> None:
    scorer = PrefixCacheScorer()
    state = CycleState(0.0)
    scorer.prepare_data(state, req(PROMPT), [A, C])  # the director always runs PrepareData
    scorer.pre_request(state, req(PROMPT), sent(C))
    assert route(scorer, req(PROMPT), [A, C])["c"] == 1.0


def test_hashes_match_upstream_definition() -> None:
    scorer = PrefixCacheScorer()
    level, hashes = scorer.hash_request(req(PROMPT), [A])
    expected = char_block_hashes(
        PROMPT.encode(), block_chars=64, max_blocks=256, root=model_root_hash("m")
    )
    assert (level, hashes) == (1, expected)


@pytest.mark.parametrize(
    ("params", "metrics_block", "expected_blocks"),
    [
        ({}, 0, 10),  # 640 chars / 64
        ({}, 32, 5),  # auto-tune: 32-token blocks -> 128 chars
        ({"autoTune": False}, 32, 10),
        ({"blockSizeTokens": 8, "autoTune": False}, 0, 20),
        ({"maxPrefixBlocksToMatch": 3}, 0, 3),
        ({"maxPrefixTokensToMatch": 64}, 0, 4),  # overrides: 64 tokens / 16
        ({"blockSizeTokens": 16, "blockSize": 64}, 0, 10),  # deprecated one ignored
    ],
    ids=[
        "default",
        "autotune-block",
        "no-autotune",
        "block-8",
        "max-blocks",
        "max-tokens",
        "deprecated-with-new",
    ],
)
def test_block_geometry(params: dict[str, Any], metrics_block: int, expected_blocks: int) -> None:
    scorer = PLUGINS["prefix-cache-scorer"]("p", params, PluginContext())
    assert isinstance(scorer, PrefixCacheScorer)
    _, hashes = scorer.hash_request(req(PROMPT), [ep("a", block_size=metrics_block)])
    assert len(hashes) == expected_blocks


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"blockSize": 64}, "blockSizeTokens"),
        ({"lruCapacityPerServer": 0}, "lruCapacityPerServer"),
        ({"bogus": 1}, "bogus"),
        ({"tokenizer": "/nonexistent/dir"}, "tokenizer.json"),
        ({"hotspotPolicy": "sometimes"}, "hotspotPolicy"),
    ],
    ids=[
        "deprecated-blocksize-alone",
        "zero-capacity",
        "unknown-key",
        "missing-tokenizer",
        "bad-policy",
    ],
)
def test_invalid_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginValidationError, match=message):
        PLUGINS["prefix-cache-scorer"]("p", params, PluginContext())


def test_autotune_capacity_from_num_gpu_blocks() -> None:
    scorer = PrefixCacheScorer()
    small = ep("a", num_blocks=4)
    route(scorer, req(PROMPT), [small], to=small)
    assert scorer.index.capacity("a") == 4
    assert scorer.index.size("a") == 4
    # the LRU kept the 4 most recent blocks (the tail), so the prefix walk finds nothing
    assert route(scorer, req(PROMPT), [small])["a"] == 0.0


def test_capacity_without_autotune_is_the_parameter() -> None:
    scorer = PrefixCacheScorer(params=PrefixCacheParams(autoTune=False, lruCapacityPerServer=7))
    route(scorer, req(PROMPT), [ep("a", num_blocks=4)], to=A)
    assert scorer.index.size("a") == 7


def test_removed_endpoint_is_pruned_through_datastore() -> None:
    store = Datastore()
    scorer = PrefixCacheScorer()
    store.subscribe(scorer.endpoint_event)
    store.upsert_endpoint("a", "10.0.0.1", 8000)
    route(scorer, req(PROMPT), [A], to=A)
    store.remove_endpoint("a")
    assert scorer.index.servers() == frozenset()
    assert len(scorer.index) == 0


def test_absent_server_is_pruned_after_interval() -> None:
    scorer = PrefixCacheScorer(params=PrefixCacheParams(pruneIntervalSeconds=10))
    route(scorer, req(PROMPT), [A, B], to=A, now=0.0)
    route(scorer, req(PROMPT), [B], now=5.0)
    assert "a" in scorer.index.servers()
    route(scorer, req(PROMPT), [B], now=20.0)
    assert scorer.index.servers() == frozenset()


def test_explain_notes_when_traced() -> None:
    scorer = PrefixCacheScorer()
    route(scorer, req(PROMPT), [A], to=A)
    state = CycleState(0.0)
    notes: list[str] = []
    state.write(EXPLAIN, notes)
    scorer.prepare_data(state, req(PROMPT), [A, B])
    scorer.score(state, req(PROMPT), [A, B])
    assert notes
    assert "a=10" in notes[0]


# -- anti-hotspot ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cached_load", "other_load", "policy", "expected"),
    [
        ({"waiting": 5}, {}, "load-bound", 1.0),  # within abs slack: sticky
        ({"waiting": 30}, {}, "load-bound", 0.0),  # 30 > 0 + 16 and > 1.5 * 0: overloaded
        ({"running": 100}, {"running": 80}, "load-bound", 1.0),  # 100 < 1.5 * 80
        ({"running": 130}, {"running": 80}, "load-bound", 0.0),  # > 80 + 16 and > 120
        ({"inflight": 40}, {}, "load-bound", 0.0),  # EPP's own counter between scrapes
        ({"waiting": 30}, {}, "none", 1.0),  # upstream behaviour
    ],
    ids=["sticky", "overloaded", "relative-ok", "relative-over", "inflight", "policy-none"],
)
def test_hotspot_rule(
    cached_load: dict[str, int], other_load: dict[str, int], policy: str, expected: float
) -> None:
    scorer = PLUGINS["prefix-cache-scorer"]("p", {"hotspotPolicy": policy}, PluginContext())
    assert isinstance(scorer, PrefixCacheScorer)
    hot, cold = ep("hot", **cached_load), ep("cold", **other_load)
    route(scorer, req(PROMPT), [hot, cold], to=hot)
    assert route(scorer, req(PROMPT), [hot, cold]) == {"hot": expected, "cold": 0.0}


def test_multi_turn_session_sticks_to_history() -> None:
    scorer = PrefixCacheScorer()
    servers = [A, B, C]
    turns = ["q" * 200, "a" * 200, "q2" * 100, "a2" * 100, "q3" * 100]
    route(scorer, chat(turns[0]), servers, to=B)
    for n in range(2, len(turns) + 1, 2):
        scores = route(scorer, chat(*turns[: n + 1]), servers, to=B)
        assert max(scores, key=lambda k: scores[k]) == "b"
        assert scores["b"] > 0.0
        assert scores["a"] == scores["c"] == 0.0


# -- level 2 -----------------------------------------------------------------------------------


def test_level2_token_blocks_follow_engine_block_size(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(tmp_path)
    scorer = PLUGINS["prefix-cache-scorer"]("p", {"tokenizer": str(directory)}, PluginContext())
    assert isinstance(scorer, PrefixCacheScorer)
    engine = ep("a", block_size=4)
    level, hashes = scorer.hash_request(req("abcdefghijk"), [engine])
    assert level == 2
    assert len(hashes) == 3  # BOS + 11 bytes = 12 tokens = 3 blocks of 4
    route(scorer, req("abcdefghijk"), [engine], to=engine)
    assert route(scorer, req("abcdefghXYZ"), [engine])["a"] == pytest.approx(2 / 3)


def test_level2_chat_and_level1_fallback(tmp_path: Path) -> None:
    directory = write_tokenizer_dir(tmp_path, chat_template=None)
    scorer = PLUGINS["prefix-cache-scorer"]("p", {"tokenizer": str(directory)}, PluginContext())
    assert isinstance(scorer, PrefixCacheScorer)
    level, _ = scorer.hash_request(chat("x" * 100), [A])
    assert level == 1  # no chat template -> character blocks
    level, _ = scorer.hash_request(req("x" * 100), [A])
    assert level == 2
