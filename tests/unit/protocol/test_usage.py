"""Usage from non-streaming bodies and from SSE streams split at every possible byte."""

from __future__ import annotations

import json

import pytest

from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body
from kvroute.requestcontrol.hooks import Usage

BODIES = [
    (
        "chat completion with cached tokens",
        {
            "object": "chat.completion",
            "usage": {
                "prompt_tokens": 11,
                "completion_tokens": 5,
                "total_tokens": 16,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        },
        Usage(11, 5, 8),
    ),
    (
        "text completion, upstream's details spelling",
        {
            "object": "text_completion",
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "prompt_token_details": {"cached_tokens": 2},
            },
        },
        Usage(3, 4, 2),
    ),
    (
        "responses API",
        {
            "object": "response",
            "usage": {
                "input_tokens": 20,
                "output_tokens": 7,
                "input_tokens_details": {"cached_tokens": 16},
            },
        },
        Usage(20, 7, 16),
    ),
    (
        "unknown object tries both",
        {"usage": {"input_tokens": 2, "output_tokens": 1}},
        Usage(2, 1, 0),
    ),
    (
        "null details",
        {"usage": {"prompt_tokens": 2, "prompt_tokens_details": None}},
        Usage(2, 0, 0),
    ),
    (
        "non-integer counts ignored",
        {"usage": {"prompt_tokens": "2", "completion_tokens": True}},
        Usage(0, 0, 0),
    ),
]


@pytest.mark.parametrize(("body", "usage"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES])
def test_usage_from_body(body: dict[str, object], usage: Usage) -> None:
    assert parse_usage_body(json.dumps(body).encode()) == usage


NO_USAGE = [
    ("no usage key", b'{"object":"chat.completion","choices":[]}'),
    ("null usage", b'{"object":"chat.completion","usage":null}'),
    ("invalid JSON (hermetic: response buffering invalid JSON)", b'{"usage": {"prompt_tokens": 1'),
    ("empty body (hermetic: empty EOS chunk)", b""),
    ("array", b'[{"usage": {}}]'),
]


@pytest.mark.parametrize("body", [n[1] for n in NO_USAGE], ids=[n[0] for n in NO_USAGE])
def test_no_usage(body: bytes) -> None:
    assert parse_usage_body(body) is None


def _sse(events: list[object]) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


CHAT_STREAM = _sse(
    [
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"content": "a"}}],
            "usage": None,
        },
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"content": "b"}}],
            "usage": None,
        },
        {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        },
        {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 99}},
    ]
)
RESPONSES_STREAM = (
    b"event: response.created\n"
    b'data: {"type":"response.created","response":{"usage":null}}\n\n'
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n'
    b"event: response.completed\r\n"
    b'data: {"type":"response.completed","response":{"object":"response",'
    b'"usage":{"input_tokens":5,"output_tokens":3,"input_tokens_details":{"cached_tokens":4}}}}\r\n'
    b"\r\n"
)
STREAMS = [
    ("chat completions (hermetic: SSE token counting)", CHAT_STREAM, Usage(10, 2, 0)),
    ("responses API, CRLF line ends", RESPONSES_STREAM, Usage(5, 3, 4)),
    ("no usage at all", _sse([{"choices": [], "usage": None}]), None),
    (
        "no trailing newline",
        b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}',
        Usage(1, 1, 0),
    ),
    ("garbage data line is skipped", b'data: {"usage": {broken\n\n' + CHAT_STREAM, Usage(10, 2, 0)),
]


@pytest.mark.parametrize(("stream", "usage"), [s[1:] for s in STREAMS], ids=[s[0] for s in STREAMS])
def test_sse_usage_whole_and_at_every_split(stream: bytes, usage: Usage | None) -> None:
    whole = SseUsageParser()
    whole.feed(stream)
    assert whole.finish() == usage
    for cut in range(1, len(stream)):
        parser = SseUsageParser()
        parser.feed(stream[:cut])
        parser.feed(stream[cut:])
        assert parser.finish() == usage, cut


@pytest.mark.parametrize(("stream", "usage"), [s[1:] for s in STREAMS], ids=[s[0] for s in STREAMS])
def test_sse_usage_byte_by_byte(stream: bytes, usage: Usage | None) -> None:
    parser = SseUsageParser()
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
    assert parser.finish() == usage


def test_sse_parser_stops_after_the_first_usage() -> None:
    parser = SseUsageParser()
    assert parser.feed(CHAT_STREAM) == Usage(10, 2, 0)
    assert parser.done
    parser.feed(b"data: " + b"x" * 1000)  # ignored: nothing more is buffered
    assert parser.feed(b'data: {"usage":{"prompt_tokens":1}}\n') == Usage(10, 2, 0)
