"""Media content parts in OpenAI bodies: placeholders, hashes, sizes, tokens, bad input."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import pytest
from PIL import Image

from kvroute.errors import BadRequestError, PayloadTooLargeError
from kvroute.protocol.media import MediaOptions, placeholder
from kvroute.protocol.openai import parse_request

CHAT = "/v1/chat/completions"
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"


def _png(size: tuple[int, int] = (640, 480), color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _chat(*parts: dict[str, Any], model: str = QWEN) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": list(parts)}]}
    ).encode()


def _img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_data_url_image_is_hashed_sized_and_placed_where_it_sits() -> None:
    parsed = parse_request(
        _chat(
            {"type": "text", "text": "what is "},
            _img(_data_url(_png())),
            {"type": "text", "text": "?"},
        ),
        CHAT,
    )
    (item,) = parsed.media
    assert (item.kind, item.width, item.height, item.size_bytes) == ("image", 640, 480, len(_png()))
    assert item.tokens == 23 * 17 + 2  # Qwen2.5-VL: 28 px patches
    assert item.where == "messages[0].content[1].image_url.url"
    ph = placeholder("image", item.key, item.tokens)
    assert parsed.prompt_text == f"<|user|>\nwhat is {ph}?\n"
    assert len(ph) == 4 * item.tokens  # counted by every len(prompt_text) / 4 estimate
    assert parsed.media_tokens == item.tokens
    assert "base64" not in parsed.prompt_text


def test_same_bytes_same_key_any_part_different_bytes_differ() -> None:
    a = parse_request(_chat(_img(_data_url(_png()))), CHAT).media[0]
    b = parse_request(
        _chat(
            {"type": "file", "file": {"file_data": _data_url(_png(), "application/octet-stream")}}
        ),
        CHAT,
    ).media[0]
    c = parse_request(_chat(_img(_data_url(_png(color=(9, 9, 9))))), CHAT).media[0]
    assert a.key == b.key != c.key
    assert b.kind == "file"


def test_url_image_keyed_by_url_and_never_decoded() -> None:
    p1 = parse_request(_chat(_img("https://example.com/cat.png")), CHAT)
    p2 = parse_request(_chat(_img("https://example.com/dog.png")), CHAT)
    (i1,), (i2,) = p1.media, p2.media
    assert i1.key != i2.key
    assert i1.size_bytes == 0
    assert i1.width is None
    assert i1.tokens == 37 * 37 + 2  # assumed 1024x1024 on Qwen's rule


def test_family_rule_follows_the_model() -> None:
    body = _chat(_img(_data_url(_png((4000, 3000)))), model="google/gemma-3-27b-it")
    assert parse_request(body, CHAT).media[0].tokens == 256


def test_audio_video_and_file_parts() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\1\0" * 32000)  # 2 s
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"},
    }
    video = {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}
    file = {"type": "file", "file": {"file_id": "file-123"}}
    parsed = parse_request(_chat(audio, video, file), CHAT)
    kinds = [(m.kind, m.tokens) for m in parsed.media]
    assert kinds == [("audio", 50), ("video", 4096), ("file", 1024)]


def test_responses_input_image() -> None:
    body = json.dumps(
        {
            "model": QWEN,
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "hi"},
                        {"type": "input_image", "image_url": _data_url(_png())},
                    ],
                }
            ],
        }
    ).encode()
    parsed = parse_request(body, "/v1/responses")
    assert [m.width for m in parsed.media] == [640]
    assert parsed.prompt_text.startswith("<|user|>\nhi<|image:")


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            _img("data:image/png;base64,iVBORw0K@@@="),
            r"messages\[0\]\.content\[0\]\.image_url\.url: invalid base64",
        ),
        (_img("data:image/png;base64,abc"), r"content\[0\]\.image_url\.url: invalid base64"),
        (_img("data:image/png;base64,"), "empty base64"),
        (_img("data:image/png,rawbytes"), "only base64 data URLs"),
        (_img("data:image/png;base64"), "malformed data URL"),
        ({"type": "image_url", "image_url": {}}, r"image_url needs a non-empty 'url'"),
        (
            {"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}},
            r"input_audio\.data: invalid base64",
        ),
        ({"type": "input_audio", "input_audio": "x"}, "input_audio must be an object"),
        ({"type": "file", "file": {}}, r"file\.file_id needs"),
        ({"type": "hologram", "hologram": {}}, "unsupported content part type 'hologram'"),
        ({"no": "type"}, "unsupported content part type None"),
    ],
)
def test_bad_parts_are_400_naming_the_part(part: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as info:
        parse_request(_chat(part), CHAT)
    assert info.value.http_status == 400


def test_item_over_the_limit_is_413_naming_the_limit() -> None:
    opts = MediaOptions(maxMediaItemBytes=1000)
    big = _data_url(b"\0" * 2000)
    with pytest.raises(
        PayloadTooLargeError, match=r"per-item limit of 1000 bytes.*maxMediaItemBytes"
    ) as info:
        parse_request(_chat(_img(big)), CHAT, opts)
    assert info.value.http_status == 413
    assert parse_request(_chat(_img(_data_url(b"\0" * 900))), CHAT, opts).media[0].size_bytes == 900


def test_large_item_decoded_in_steps() -> None:
    data = _png() + bytes(range(256)) * 40000  # ~10 MB: three decode steps
    parsed = parse_request(_chat(_img(_data_url(data))), CHAT)
    assert parsed.media[0].size_bytes == len(data)
    assert parsed.media[0].width == 640
    broken = _data_url(data)
    broken = broken[:9_000_000] + "!" + broken[9_000_001:]
    with pytest.raises(BadRequestError, match="invalid base64"):
        parse_request(_chat(_img(broken)), CHAT)


def test_load_estimates_count_image_tokens_not_base64_size() -> None:
    """The director's in-flight token charge (token-load scorer, flow control) reads the
    prompt text: a 2 MB image counts its ~1,000 tokens, not 2 MB / 4 characters."""
    from kvroute.requestcontrol.director import _estimate_tokens

    data = _png((900, 900)) + b"\0" * 2_000_000
    parsed = parse_request(_chat({"type": "text", "text": "hi"}, _img(_data_url(data))), CHAT)
    tokens = parsed.media[0].tokens
    assert tokens == 32 * 32 + 2
    assert tokens <= _estimate_tokens(parsed) <= tokens + 10


def test_anthropic_image_and_document_blocks() -> None:
    from kvroute.protocol.anthropic import parse_messages_request

    blocks = [
        {"type": "text", "text": "compare "},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": _data_url(_png())[22:]},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
    ]
    body = json.dumps(
        {"model": QWEN, "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]}
    ).encode()
    parsed = parse_messages_request(body)
    assert [(m.kind, m.width) for m in parsed.media] == [("image", 640), ("image", None)]
    assert parsed.media[0].key == parse_request(_chat(_img(_data_url(_png()))), CHAT).media[0].key
    assert "doc" in parsed.prompt_text
    bad = {"type": "image", "source": {"type": "base64", "data": "@@@@"}}
    body = json.dumps({"model": QWEN, "messages": [{"role": "user", "content": [bad]}]}).encode()
    with pytest.raises(BadRequestError, match=r"messages\[0\]\.content\[0\]\.source\.data"):
        parse_messages_request(body)
