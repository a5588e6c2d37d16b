"""vLLM and SGLang native generate requests and SGLang usage (kvroute.protocol.generate)."""

from __future__ import annotations

import json

import pytest

from kvroute.errors import BadRequestError
from kvroute.protocol.generate import (
    SglangStreamUsage,
    parse_sglang_generate,
    parse_vllm_generate,
    sglang_usage_body,
)
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.request import ApiKind


def test_vllm_generate() -> None:
    body = json.dumps(
        {"model": "m", "token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 9}, "stream": True}
    ).encode()
    parsed = parse_vllm_generate(body, "/inference/v1/generate")
    assert (parsed.api, parsed.model, parsed.prompt_text, parsed.max_tokens, parsed.stream) == (
        ApiKind.VLLM_GENERATE,
        "m",
        "1 2 3",
        9,
        True,
    )
    assert parse_vllm_generate(b'{"token_ids": [5]}').model == ""  # model is optional


@pytest.mark.parametrize(
    "body", [b"{}", b'{"token_ids": []}', b'{"token_ids": ["a"]}', b'{"token_ids": [-1]}']
)
def test_vllm_generate_needs_token_ids(body: bytes) -> None:
    with pytest.raises(BadRequestError, match="token_ids"):
        parse_vllm_generate(body)


def test_sglang_generate_salt_and_path() -> None:
    body = (
        b'{"input_ids": [7, 8], "extra_key": "tenant-a", "sampling_params": {"max_new_tokens": 4}}'
    )
    parsed = parse_sglang_generate(body, "/generate")
    assert parsed.prompt_text == "<|salt|>\ntenant-a\n7 8"
    assert parsed.max_tokens == 4
    assert parsed.model == ""
    assert parsed.api is ApiKind.SGLANG_GENERATE
    with pytest.raises(BadRequestError, match="unsupported path '/v1/generate'"):
        parse_sglang_generate(body, "/v1/generate")
    with pytest.raises(BadRequestError, match="extra_key must be a string"):
        parse_sglang_generate(b'{"input_ids": [1], "extra_key": 3}', "/generate")


def test_sglang_usage_body_and_stream() -> None:
    done = (
        b'{"text":"x","meta_info":{"finish_reason":{"type":"stop"},"prompt_tokens":10,'
        b'"completion_tokens":3,"cached_tokens":4}}'
    )
    assert sglang_usage_body(done) == Usage(10, 3, 4)
    stream = (
        b'data: {"text":"a","meta_info":{"finish_reason":null,"prompt_tokens":10,'
        b'"completion_tokens":1}}\n\n'
        b"data: " + done + b"\n\ndata: [DONE]\n\n"
    )
    reader = SglangStreamUsage()
    for i in range(0, len(stream), 5):
        reader.feed(stream[i : i + 5])
    assert reader.finish() == Usage(10, 3, 4)
