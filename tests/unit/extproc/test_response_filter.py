"""The OpenAI response filter: model-name restore and usage, streamed and whole."""

from __future__ import annotations

import json

import pytest

from kvroute.extproc.response_filter import OpenAIResponseFilter
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.request import ApiKind

SSE = (
    b'data: {"object":"text_completion","model":"target","choices":[{"text":"a"}]}\n\n'
    b'data: {"object":"text_completion","model":"target","choices":[],'
    b'"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("cut", [1, 17, 40, 90, len(SSE) - 3], ids=lambda c: f"cut-{c}")
def test_sse_split_anywhere_restores_model_and_reads_usage(cut: int) -> None:
    f = OpenAIResponseFilter("client-name", "target", streaming=True)
    out = f.feed(SSE[:cut], False) + f.feed(SSE[cut:], True)
    assert out == SSE.replace(b'"model":"target"', b'"model":"client-name"')
    assert f.usage == Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=0)


def test_json_body_usage_and_model() -> None:
    doc = {
        "object": "chat.completion",
        "model": "target",
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    f = OpenAIResponseFilter("client-name", "target", streaming=False)
    out = f.feed(json.dumps(doc).encode(), True)
    assert json.loads(out)["model"] == "client-name"
    assert f.usage == Usage(prompt_tokens=5, completion_tokens=2, cached_tokens=4)


def test_same_model_is_passed_through_untouched() -> None:
    f = OpenAIResponseFilter("m", "m", streaming=True)
    assert f.feed(SSE, True) is SSE


def test_anthropic_stream_restores_the_model_and_counts_usage() -> None:
    f = OpenAIResponseFilter("claude", "claude-v2", streaming=True, api=ApiKind.MESSAGES)
    out = f.feed(
        b'data: {"type":"message_start","message":{"model":"claude-v2",'
        b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n',
        False,
    )
    out += f.feed(b'data: {"type":"message_delta","usage":{"output_tokens":4}}\n\n', True)
    assert b'"model":"claude"' in out
    assert b"claude-v2" not in out
    assert f.usage == Usage(prompt_tokens=9, completion_tokens=4, cached_tokens=0)


def test_raw_forwarded_apis_are_not_read_or_rewritten() -> None:
    body = b'{"model":"target","usage":{"prompt_tokens":1}}'
    f = OpenAIResponseFilter("m", "target", streaming=False, api=ApiKind.PASSTHROUGH)
    assert f.feed(body, True) == body
    assert f.usage is None
