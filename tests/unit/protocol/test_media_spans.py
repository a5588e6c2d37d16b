"""Big base64 payloads kept out of the parsed dict: same result, one copy, nothing lost."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kvroute.errors import BadRequestError
from kvroute.protocol import media_spans
from kvroute.protocol.openai import parse_request, rewrite_request_body

CHAT = "/v1/chat/completions"
PAYLOAD = bytes(range(256)) * 1024  # 256 KiB: over MIN_SPAN once encoded


def _b64(data: bytes = PAYLOAD) -> str:
    return base64.b64encode(data).decode()


def _chat(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}], **extra}


def _img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _unsplit(monkeypatch: pytest.MonkeyPatch, body: bytes) -> Any:
    with monkeypatch.context() as m:
        m.setattr(media_spans, "MIN_SPAN", 1 << 40)
        return parse_request(body, CHAT)


def test_split_parse_equals_the_whole_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": _b64(), "format": "mp3"}}
    body = json.dumps(_chat(_img("data:image/png;base64," + _b64()), audio)).encode()
    split = parse_request(body, CHAT)
    whole = _unsplit(monkeypatch, body)
    assert split.split
    assert not whole.split
    assert split.media == whole.media
    assert split.prompt_text == whole.prompt_text
    url = split.body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,\x00kvroute-media:")
    assert len(json.dumps(split.body)) < 1000  # the dict holds no payload


def test_file_data_as_data_url_or_bare_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    as_url = {"type": "file", "file": {"file_data": "data:application/pdf;base64," + _b64()}}
    bare = {"type": "file", "file": {"file_data": _b64()}}
    body = json.dumps(_chat(as_url, bare)).encode()
    split = parse_request(body, CHAT)
    assert split.split
    assert split.media == _unsplit(monkeypatch, body).media
    assert split.media[0].key == split.media[1].key


def test_big_data_string_outside_a_media_part_is_parsed_whole() -> None:
    body = json.dumps(_chat({"type": "text", "text": "x"}, metadata={"data": _b64()})).encode()
    parsed = parse_request(body, CHAT)
    assert not parsed.split
    assert parsed.body["metadata"]["data"] == _b64()


def test_escaped_slashes_are_left_to_the_json_parser() -> None:
    url = "data:image/png;base64," + _b64(b"\xff" * 200_000)  # '/' characters in the base64
    body = json.dumps(_chat(_img(url))).encode().replace(b"/", b"\\/")
    parsed = parse_request(body, CHAT)
    assert parsed.media[0].size_bytes == 200_000


def test_rewrite_fallback_reparses_the_raw_body(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(_chat(_img("data:image/png;base64," + _b64()))).encode()
    parsed = parse_request(body, CHAT)
    monkeypatch.setattr("kvroute.protocol.openai._splice_model", lambda *a: None)
    out = json.loads(rewrite_request_body(parsed, "other"))
    assert out["model"] == "other"
    assert out["messages"][0]["content"][0]["image_url"]["url"].endswith(_b64()[-100:])


def test_errors_name_the_part_and_positions_of_the_client_body() -> None:
    bad = "data:image/png;base64," + _b64()[:-8] + "!!!!AAAA"
    body = json.dumps(_chat({"type": "text", "text": "x"}, _img(bad))).encode()
    with pytest.raises(BadRequestError, match=r"messages\[0\]\.content\[1\]\.image_url\.url"):
        parse_request(body, CHAT)
    broken = json.dumps(_chat(_img("data:image/png;base64," + _b64()))).encode()[:-1]
    with pytest.raises(BadRequestError, match=f"char {len(broken) - 0}|line 1 column"):
        parse_request(broken, CHAT)


def test_a_client_string_that_looks_like_a_marker_is_just_text() -> None:
    fake = "data:image/png;base64,\x00kvroute-media:0000000000000000:0"
    body = json.dumps(_chat(_img(fake), _img("data:image/png;base64," + _b64()))).encode()
    with pytest.raises(BadRequestError, match=r"content\[0\]\.image_url\.url: invalid base64"):
        parse_request(body, CHAT)
