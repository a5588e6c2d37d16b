"""mm-embeddings-cache-scorer: matched items / request items, LRU per endpoint, load bound."""

from __future__ import annotations

import pytest

from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.scorers.mm_embeddings_cache import (
    MmEmbeddingsCacheParams,
    MmEmbeddingsCacheScorer,
)
from kvroute.scheduling.request import InferenceRequest, MediaItem
from tests.fakes import make_endpoint, make_state


def _req(*keys: str) -> InferenceRequest:
    media = tuple(MediaItem(kind="image", key=k, tokens=100) for k in keys)
    return InferenceRequest(request_id="r", incoming_model="m", target_model="m", media=media)


def _sent(scorer: MmEmbeddingsCacheScorer, req: InferenceRequest, ep) -> None:  # type: ignore[no-untyped-def]
    scorer.pre_request(make_state(), req, SchedulingResult({"d": ProfileResult((ep,))}, "d"))


def test_fraction_of_items_seen_and_text_requests_untouched() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    s = MmEmbeddingsCacheScorer()
    assert s.score(make_state(), _req("x"), eps) == {}
    _sent(s, _req("x", "y"), eps[0])
    _sent(s, _req("z"), eps[1])
    assert s.score(make_state(), _req("x", "z", "x"), eps) == {"a": 0.5, "b": 0.5}
    assert s.score(make_state(), _req("y"), eps) == {"a": 1.0}
    assert s.score(make_state(), _req(), eps) == {}
    _sent(s, _req(), eps[1])  # text-only requests record nothing
    assert s.cached("b") == ("z",)


def test_lru_capacity_from_cache_size() -> None:
    s = MmEmbeddingsCacheScorer(
        params=MmEmbeddingsCacheParams(cacheSizeInMBPerServer=6, entrySizeMB=2)
    )
    assert s.capacity == 3
    ep = make_endpoint("a")
    for k in ("1", "2", "3"):
        _sent(s, _req(k), ep)
    _sent(s, _req("1"), ep)  # touched: now most recent
    _sent(s, _req("4"), ep)
    assert s.cached("a") == ("3", "1", "4")


def test_overloaded_endpoint_scores_nothing() -> None:
    s = MmEmbeddingsCacheScorer()
    busy = make_endpoint("b", waiting=40, running=10)
    _sent(s, _req("img"), busy)
    assert s.score(make_state(), _req("img"), [make_endpoint("a", running=2), busy]) == {}
    assert s.score(make_state(), _req("img"), [make_endpoint("a", running=40), busy]) == {"b": 1.0}


def test_registered_and_params_validated() -> None:
    reg = default_registry(include_entry_points=False)
    p = reg.create("mm-embeddings-cache-scorer", "m", {}, PluginContext())
    assert isinstance(p, MmEmbeddingsCacheScorer)
    assert p.capacity == 2048
    with pytest.raises(PluginValidationError, match="cacheSizeInMBPerServer"):
        reg.create(
            "mm-embeddings-cache-scorer", "m", {"cacheSizeInMBPerServer": 0}, PluginContext()
        )
    with pytest.raises(PluginValidationError, match="bogus"):
        reg.create("mm-embeddings-cache-scorer", "m", {"bogus": 1}, PluginContext())
