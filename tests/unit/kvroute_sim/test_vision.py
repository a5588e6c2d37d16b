"""The vision profile: image tokens in place, encoder time per item, encoder cache (LRU)."""

from __future__ import annotations

import base64
import struct

from kvroute_sim.config import engine_profile
from kvroute_sim.engine import Engine, SimRequest
from kvroute_sim.server.openai_api import parse_generation
from kvroute_sim.tokenizer import tokenize
from kvroute_sim.vision import (
    EncoderCache,
    MediaSpan,
    image_token_ids,
    image_tokens,
    render_chat_media,
)

MODEL = "m"


def _png_url(w: int, h: int, tag: bytes = b"x") -> str:
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", w, h) + tag
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _msgs(text: str, url: str) -> list[dict[str, object]]:
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts}]


def test_image_tokens_in_place_keyed_by_content() -> None:
    ids, (span,) = render_chat_media(_msgs("look", _png_url(448, 448)), tokenize)
    assert span.tokens == image_tokens(448, 448) == 16 * 16 + 2
    assert ids[span.offset : span.offset + span.tokens] == image_token_ids(span.key, span.tokens)
    assert ids[: span.offset] == tokenize("<|user|>\n") + tokenize("look")
    _, (same,) = render_chat_media(_msgs("other text", _png_url(448, 448)), tokenize)
    _, (other,) = render_chat_media(_msgs("look", _png_url(448, 448, b"y")), tokenize)
    assert same.key == span.key != other.key


def test_encoder_cache_lru_and_prefix_covered_items() -> None:
    cache = EncoderCache(capacity=2)
    a, b, c = (MediaSpan(k, 10, 100) for k in "abc")
    assert cache.encode_time([a], 0, 1e-3) == 0.1
    assert cache.encode_time([a], 0, 1e-3) == 0.0  # hit
    assert cache.encode_time([a], 200, 1e-3) == 0.0  # covered by the prefix cache: no query
    cache.encode_time([b, c], 0, 1e-3)  # a evicted
    assert "a" not in cache
    assert (cache.queries, cache.hits) == (4, 1)


def test_engine_adds_encoder_time_once_per_server() -> None:
    cfg = engine_profile("tiny-vision")
    url = _png_url(448, 448)
    body = {"model": MODEL, "messages": _msgs("q", url), "max_tokens": 1}
    ttft = []
    for i, text in enumerate(("first question", "a different question")):
        body["messages"] = _msgs(text, url)
        parsed = parse_generation(
            "chat",
            body,
            served=frozenset({MODEL}),
            max_model_len=cfg.max_model_len,
            default_chat_max_tokens=8,
            vision=True,
        )
        assert len(parsed.media) == 1
        if i == 0:
            engine = Engine(cfg)
        req = SimRequest(
            f"r{i}", prompt_token_ids=parsed.prompt_token_ids, max_tokens=1, media=parsed.media
        )
        engine.add_request(req)
        start = 10.0 * (i + 1)
        out = engine.step(start)
        assert out.first_token == [req]
        ttft.append(out.duration)
    # the first request paid 258 tokens x 20 us of encoder time; the second found it cached
    assert ttft[0] - ttft[1] > 258 * 20e-6 * 0.9
    assert engine.stats().encoder_cache_hits == 1
    assert engine.stats().encoder_cache_queries == 2


def test_without_vision_media_parts_count_nothing() -> None:
    parsed = parse_generation(
        "chat",
        {"model": MODEL, "messages": _msgs("q", _png_url(448, 448))},
        served=frozenset({MODEL}),
        max_model_len=4096,
        default_chat_max_tokens=8,
    )
    assert parsed.media == ()
