"""Hostile or malformed bytes at the protocol edge: each gets a clear 400 or a clean "no usage".

Request bodies come from clients; response bodies from model servers that may return garbage.
Nothing here may escape as an exception other than :class:`BadRequestError` (request side) or
leave a later stage holding a string that cannot be encoded back to UTF-8.
"""

from __future__ import annotations

import json

import pytest

from kvroute.errors import BadRequestError
from kvroute.protocol.openai import parse_request, rewrite_request_body
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body

DEEP = 200_000  # far beyond the interpreter's recursion limit

BAD_BODIES = [
    (b"[" * DEEP, "nested too deeply"),
    (b'{"model":"m","prompt":' + b"[" * DEEP + b"]" * DEEP + b"}", "nested too deeply"),
    (b'{"model":"m","prompt":"\\ud800 lone high"}', "lone UTF-16 surrogate"),
    (b'{"model":"m","prompt":"lone low \\uDC00"}', "lone UTF-16 surrogate"),
    (b'{"model":"m\\ud800","prompt":"x"}', "lone UTF-16 surrogate"),
    (b'{"model":"m","prompt":"raw \xed\xa0\x80 surrogate"}', "not UTF-8"),
    (b'{"model":"m","prompt":"\xff\xfe"}', "not UTF-8"),
]


@pytest.mark.parametrize(
    ("body", "reason"),
    BAD_BODIES,
    ids=[
        "deep-array",
        "deep-prompt",
        "escaped-lone-high",
        "escaped-lone-low",
        "surrogate-in-model",
        "utf8-encoded-surrogate",
        "invalid-utf8",
    ],
)
def test_malformed_bodies_are_clear_400s(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequestError) as exc:
        parse_request(body, "/v1/completions")
    assert exc.value.http_status == 400
    assert reason in exc.value.message
    assert exc.value.message.startswith("invalid JSON body")


GOOD_ESCAPES = [
    (b'{"model":"m","prompt":"emoji \\ud83d\\ude00"}', "emoji \U0001f600"),
    (b'{"model":"m","prompt":"emoji \\uD83D\\uDE00!"}', "emoji \U0001f600!"),
    # An escaped backslash followed by the letters: text about escapes, not a surrogate.
    (b'{"model":"m","prompt":"write \\\\ud800 in JSON"}', "write \\ud800 in JSON"),
    ('{"model":"m","prompt":"caf\u00e9 \u4e2d"}'.encode(), "caf\u00e9 \u4e2d"),
]


@pytest.mark.parametrize(
    ("body", "prompt"), GOOD_ESCAPES, ids=["pair", "pair-upper", "escaped-backslash", "utf8"]
)
def test_valid_unicode_is_accepted(body: bytes, prompt: str) -> None:
    parsed = parse_request(body, "/v1/completions")
    assert parsed.prompt_text == prompt
    parsed.prompt_text.encode()  # what prefix hashing does with it


@pytest.mark.parametrize(
    "body",
    [b'{"usage":' + b"[" * DEEP, b'{"usage":{"prompt_tokens":' + b"[" * DEEP + b"}}"],
    ids=["deep-after-usage", "deep-inside-usage"],
)
def test_deeply_nested_response_body_has_no_usage(body: bytes) -> None:
    assert parse_usage_body(body) is None


def test_deeply_nested_sse_event_is_skipped() -> None:
    p = SseUsageParser()
    p.feed(b'data: {"usage":{"x":' + b"[" * DEEP + b"}}\n\n")
    p.feed(b'data: {"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n')
    usage = p.finish()
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 3)


def test_rewrite_fallback_keeps_a_lone_surrogate_elsewhere_as_an_escape() -> None:
    """An escaped key forces the re-serializing fallback; a lone surrogate in a field the EPP
    does not read must not make it fail (it ran after the request was counted in flight)."""
    body = b'{"\\u006dodel":"m","prompt":"x","user":"\\ud800"}'
    parsed = parse_request(body, "/v1/completions")
    out = rewrite_request_body(parsed, "target")
    assert out.isascii()
    assert json.loads(out) == {"model": "target", "prompt": "x", "user": "\ud800"}
