"""Anthropic Messages: request validation, prompt text, usage (kvroute.protocol.anthropic)."""

from __future__ import annotations

import json

import pytest

from kvroute.errors import BadRequestError
from kvroute.protocol.anthropic import (
    AnthropicStreamUsage,
    anthropic_usage_body,
    parse_messages_request,
)
from kvroute.requestcontrol.hooks import Usage


def _body(**extra: object) -> bytes:
    doc = {"model": "claude", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}
    return json.dumps({**doc, **extra}).encode()


def test_system_blocks_and_content_blocks_make_the_prompt_text() -> None:
    parsed = parse_messages_request(
        _body(
            system=[{"type": "text", "text": "Be brief."}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "calc", "input": {}}],
                },
            ],
            stream=True,
        )
    )
    assert parsed.prompt_text == (
        "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n"
        '{"id":"t1","input":{},"name":"calc","type":"tool_use"}\n'
    )
    assert parsed.stream
    assert parsed.max_tokens == 32
    assert parsed.model == "claude"


def test_a_longer_conversation_extends_the_prompt_text() -> None:
    short = parse_messages_request(_body(system="S"))
    longer = parse_messages_request(
        _body(
            system="S",
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        )
    )
    assert longer.prompt_text.startswith(short.prompt_text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(messages=[]), "must have at least one message"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model not found"),
        (_body(stream="yes"), "'stream' must be a boolean"),
        (b"[1]", "expected a JSON object"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_invalid_requests_are_400(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_messages_request(body)


def test_non_streaming_usage() -> None:
    body = (
        b'{"type":"message","usage":{"input_tokens":12,"output_tokens":5,'
        b'"cache_read_input_tokens":8}}'
    )
    assert anthropic_usage_body(body) == Usage(12, 5, 8)
    assert anthropic_usage_body(b'{"type":"message"}') is None


def test_streaming_usage_from_message_start_and_the_last_message_delta() -> None:
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude",'
        b'"usage":{"input_tokens":25,"cache_read_input_tokens":16,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta",'
        b'"delta":{"text":"usage"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    for size in (1, 7, len(events)):  # any chunking gives the same answer
        reader = AnthropicStreamUsage()
        for i in range(0, len(events), size):
            reader.feed(events[i : i + size])
        assert reader.finish() == Usage(prompt_tokens=25, completion_tokens=15, cached_tokens=16)


def test_stream_without_usage_events_has_no_usage() -> None:
    reader = AnthropicStreamUsage()
    reader.feed(b'data: {"type":"ping"}\n\n')
    assert reader.finish() is None
