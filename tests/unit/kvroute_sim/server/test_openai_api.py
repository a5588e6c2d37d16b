"""Request validation and response shapes as vLLM serves them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvroute_sim.server.openai_api import ApiError, ResponseBuilder, parse_generation, usage
from kvroute_sim.tokenizer import tokenize

SERVED = frozenset({"base", "lora-a"})


def _parse(kind: str, body: Any, max_model_len: int = 64) -> Any:
    return parse_generation(
        kind,  # type: ignore[arg-type]
        body,
        served=SERVED,
        max_model_len=max_model_len,
        default_chat_max_tokens=10,
    )


@pytest.mark.parametrize(
    ("kind", "body", "status", "param"),
    [
        ("completion", [], 400, None),
        ("completion", {"prompt": "x"}, 400, "model"),
        ("completion", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("completion", {"model": "base"}, 400, "prompt"),
        ("completion", {"model": "base", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("completion", {"model": "base", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ("completion", {"model": "base", "prompt": "x " * 60, "max_tokens": 10}, 400, "max_tokens"),
        ("completion", {"model": "base", "prompt": "x " * 70}, 400, "prompt"),
        ("completion", {"model": "base", "prompt": "x", "stream": "yes"}, 400, "stream"),
        ("chat", {"model": "base", "messages": []}, 400, "messages"),
        ("chat", {"model": "base", "messages": ["hi"]}, 400, "messages"),
    ],
    ids=[
        "not-an-object",
        "no-model",
        "unknown-model",
        "no-prompt",
        "zero-max-tokens",
        "string-max-tokens",
        "prompt-plus-output-too-long",
        "prompt-too-long",
        "bad-stream",
        "empty-messages",
        "message-not-object",
    ],
)
def test_bad_requests_fail_like_vllm(kind: str, body: Any, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as exc:
        _parse(kind, body)
    assert exc.value.status == status
    assert exc.value.param == param
    err = exc.value.body()["error"]
    assert err["code"] == status
    assert err["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    assert err["message"]


def test_too_long_message_names_the_limit_as_vllm_does() -> None:
    with pytest.raises(ApiError) as exc:
        _parse("completion", {"model": "base", "prompt": "x " * 60, "max_tokens": 10})
    assert "maximum context length is 64 tokens" in exc.value.message
    assert "70 tokens (60 in the messages, 10 in the completion)" in exc.value.message


@pytest.mark.parametrize(
    ("kind", "body", "max_tokens"),
    [
        ("completion", {"model": "base", "prompt": "a b c"}, 16),
        ("completion", {"model": "base", "prompt": "a b c", "max_tokens": 3}, 3),
        ("completion", {"model": "base", "prompt": "a", "max_completion_tokens": 4}, 4),
        ("chat", {"model": "lora-a", "messages": [{"role": "user", "content": "hi"}]}, 10),
    ],
    ids=["completion-default-16", "max-tokens", "max-completion-tokens", "chat-default"],
)
def test_valid_requests_parse(kind: str, body: dict[str, Any], max_tokens: int) -> None:
    parsed = _parse(kind, body)
    assert parsed.max_tokens == max_tokens
    assert parsed.model == body["model"]
    assert not parsed.stream


def test_token_id_prompts_are_taken_verbatim() -> None:
    parsed = _parse("completion", {"model": "base", "prompt": [5, 6, 7], "max_tokens": 1})
    assert parsed.prompt_token_ids == [5, 6, 7]
    parsed = _parse("completion", {"model": "base", "prompt": ["hi there"], "max_tokens": 1})
    assert parsed.prompt_token_ids == tokenize("hi there")


def test_stream_options_are_read() -> None:
    parsed = _parse(
        "chat",
        {
            "model": "base",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert parsed.stream
    assert parsed.include_usage
    assert not parsed.continuous_usage


def test_chunks_and_bodies_have_openai_shapes() -> None:
    b = ResponseBuilder("chat", "r1", "lora-a")
    first = json.loads(b.chunk("hi", first=True).removeprefix(b"data: "))
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "lora-a"
    assert first["choices"][0]["delta"] == {"content": "hi", "role": "assistant"}
    last = json.loads(b.chunk(None, usage_body=usage(3, 2, 0)).removeprefix(b"data: "))
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 5
    full = ResponseBuilder("completion", "r2", "base").full("x", usage(3, 1, 2))
    assert full["object"] == "text_completion"
    assert full["choices"][0]["finish_reason"] == "length"
    assert full["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
