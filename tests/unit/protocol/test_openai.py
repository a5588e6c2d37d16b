"""OpenAI request parsing (per-API validation, prompt text) and the byte-level model rewrite."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvroute.errors import BadRequestError
from kvroute.protocol.openai import (
    api_kind_for_path,
    parse_request,
    rewrite_request_body,
)
from kvroute.scheduling.request import ApiKind

PATHS = [
    (None, ApiKind.COMPLETIONS),
    ("", ApiKind.COMPLETIONS),
    ("/v1/completions", ApiKind.COMPLETIONS),
    ("/v1/chat/completions", ApiKind.CHAT_COMPLETIONS),
    ("/v1/chat/completions?x=1", ApiKind.CHAT_COMPLETIONS),
    ("/v1/chat/completions/", ApiKind.CHAT_COMPLETIONS),
    ("/v1/embeddings", ApiKind.EMBEDDINGS),
    ("/v1/responses", ApiKind.RESPONSES),
    ("/v1/conversations", ApiKind.CONVERSATIONS),
    ("/v1/models", ApiKind.COMPLETIONS),
    ("/openai/deployments/x/chat/completions", ApiKind.CHAT_COMPLETIONS),
]


@pytest.mark.parametrize(("path", "kind"), PATHS, ids=[str(p) for p, _ in PATHS])
def test_api_kind_from_path(path: str | None, kind: ApiKind) -> None:
    assert api_kind_for_path(path) is kind


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


VALID = [
    ("completion string", "/v1/completions", _body(model="m", prompt="hello"), "hello"),
    ("completion list", "/v1/completions", _body(model="m", prompt=["a", "b"]), "a\nb"),
    ("completion token ids", "/v1/completions", _body(model="m", prompt=[1, 2, 3]), "1 2 3"),
    ("completion batch ids", "/v1/completions", _body(model="m", prompt=[[1, 2], [3]]), "1 2\n3"),
    ("no path means completions", None, _body(model="m", prompt="p"), "p"),
    (
        "chat",
        "/v1/chat/completions",
        _body(
            model="m",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        ),
        "<|system|>\nbe brief\n<|user|>\nhi\n",
    ),
    (
        "chat content parts",
        "/v1/chat/completions",
        _body(
            model="m",
            messages=[
                {
                    "role": "user",
                    "name": "ann",
                    "content": [
                        {"type": "text", "text": "look: "},
                        {"type": "refusal", "refusal": "no"},
                    ],
                }
            ],
        ),
        '<|user name=ann|>\nlook: {"refusal":"no","type":"refusal"}\n',
    ),
    (
        "chat tool calls",
        "/v1/chat/completions",
        _body(
            model="m",
            messages=[
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "42", "tool_call_id": "1"},
            ],
        ),
        '<|assistant|>\n[{"id":"1"}]\n<|tool|>\n42"1"\n',
    ),
    ("embeddings", "/v1/embeddings", _body(model="m", input="text"), "text"),
    (
        "responses string",
        "/v1/responses",
        _body(model="m", input="q", instructions="sys"),
        "<|system|>\nsys\nq",
    ),
    (
        "responses items",
        "/v1/responses",
        _body(model="m", input=[{"role": "user", "content": "q"}]),
        "<|user|>\nq\n",
    ),
    (
        "conversations",
        "/v1/conversations",
        _body(model="m", items=[{"type": "message", "role": "user", "content": "x"}]),
        "<|user|>\nx\n",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "prompt"), [v[1:] for v in VALID], ids=[v[0] for v in VALID]
)
def test_valid_requests(path: str | None, body: bytes, prompt: str) -> None:
    parsed = parse_request(body, path)
    assert parsed.model == "m"
    assert parsed.prompt_text == prompt
    assert parsed.raw is body
    assert parsed.body == json.loads(body)


def test_chat_prompt_text_extends_with_the_conversation() -> None:
    """Prefix hashing needs the serialization of a longer chat to start with the shorter one."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    short = parse_request(_body(model="m", messages=turns[:1]), "/v1/chat/completions")
    long = parse_request(_body(model="m", messages=turns), "/v1/chat/completions")
    assert long.prompt_text.startswith(short.prompt_text)
    assert long.prompt_text != short.prompt_text


def test_stream_usage_and_max_tokens() -> None:
    parsed = parse_request(
        _body(
            model="m", prompt="p", stream=True, stream_options={"include_usage": True}, max_tokens=7
        )
    )
    assert (parsed.stream, parsed.include_usage, parsed.max_tokens) == (True, True, 7)
    chat = parse_request(
        _body(model="m", messages=[{"role": "user", "content": "x"}], max_completion_tokens=9),
        "/v1/chat/completions",
    )
    assert (chat.stream, chat.include_usage, chat.max_tokens) == (False, False, 9)
    resp = parse_request(_body(model="m", input="x", max_output_tokens=3), "/v1/responses")
    assert resp.max_tokens == 3


INVALID = [
    (
        "invalid JSON",
        None,
        b'{"model": "m", ',
        "invalid JSON body: Expecting property name enclosed in double quotes "
        "at line 1 column 16 (char 15)",
    ),
    ("empty body", None, b"", "invalid JSON body: Expecting value at line 1 column 1 (char 0)"),
    ("not UTF-8", None, b'{"model": "\xff"}', "invalid JSON body: not UTF-8"),
    ("array body", None, b"[1]", "invalid JSON body: expected a JSON object"),
    ("missing model", None, _body(prompt="p"), "model not found in request body"),
    ("model not a string", None, _body(model=3, prompt="p"), "model not found in request body"),
    ("empty model", None, _body(model="", prompt="p"), "model not found in request body"),
    (
        "chat no messages",
        "/v1/chat/completions",
        _body(model="m"),
        "invalid request: chat completions need at least one message",
    ),
    (
        "chat empty messages",
        "/v1/chat/completions",
        _body(model="m", messages=[]),
        "invalid request: chat completions need at least one message",
    ),
    (
        "chat message not an object",
        "/v1/chat/completions",
        _body(model="m", messages=["hi"]),
        "invalid request: messages[0] must be an object",
    ),
    (
        "completion no prompt",
        "/v1/completions",
        _body(model="m"),
        "invalid request: 'prompt' is required and must not be empty",
    ),
    (
        "completion empty prompt",
        "/v1/completions",
        _body(model="m", prompt=""),
        "invalid request: 'prompt' must not be empty",
    ),
    (
        "completion empty list",
        "/v1/completions",
        _body(model="m", prompt=[]),
        "invalid request: 'prompt' is required and must not be empty",
    ),
    (
        "completion mixed list",
        "/v1/completions",
        _body(model="m", prompt=["a", 1]),
        "invalid request: 'prompt' must be a string, a list of strings or token ids",
    ),
    (
        "embeddings no input",
        "/v1/embeddings",
        _body(model="m"),
        "invalid request: 'input' is required and must not be empty",
    ),
    (
        "responses no input",
        "/v1/responses",
        _body(model="m"),
        "invalid request: responses need 'input'",
    ),
    (
        "conversations no items",
        "/v1/conversations",
        _body(model="m"),
        "invalid request: conversations need 'items'",
    ),
    (
        "stream not a boolean",
        None,
        _body(model="m", prompt="p", stream="yes"),
        "invalid request: 'stream' must be a boolean",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "message"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid_requests(path: str | None, body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError) as exc:
        parse_request(body, path)
    assert exc.value.message.startswith(message)
    assert exc.value.http_status == 400
    assert exc.value.response_body().startswith("inference error: BadRequest - ")


# --- model rewrite --------------------------------------------------------------------------

SPLICE = [
    ("model first", b'{"model":"a","prompt":"p"}', b'{"model":"target","prompt":"p"}'),
    ("model last", b'{"prompt":"p","model":"a"}', b'{"prompt":"p","model":"target"}'),
    (
        "spaces kept",
        b'{ "prompt" : "p" ,  "model"  :  "a" }',
        b'{ "prompt" : "p" ,  "model"  :  "target" }',
    ),
    (
        "escaped quotes in a prompt",
        b'{"prompt":"say \\"model\\": \\"a\\"","model":"a"}',
        b'{"prompt":"say \\"model\\": \\"a\\"","model":"target"}',
    ),
    (
        "braces inside strings",
        b'{"prompt":"}}]] {{","stop":["}"],"model":"a","n":1}',
        b'{"prompt":"}}]] {{","stop":["}"],"model":"target","n":1}',
    ),
    ("escaped value", b'{"model":"\\u0061","prompt":"p"}', b'{"model":"target","prompt":"p"}'),
    (
        "trailing backslashes",
        b'{"prompt":"c:\\\\","model":"a"}',
        b'{"prompt":"c:\\\\","model":"target"}',
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [s[1:] for s in SPLICE], ids=[s[0] for s in SPLICE])
def test_rewrite_splices_the_top_level_model(raw: bytes, expected: bytes) -> None:
    parsed = parse_request(raw)
    out = rewrite_request_body(parsed, "target")
    assert out == expected
    assert json.loads(out) == {**parsed.body, "model": "target"}


AMBIGUOUS = [
    (
        "nested model key first",
        {"messages": [{"role": "user", "content": "x", "model": "a"}], "model": "a"},
    ),
    ("nested model key after", {"model": "a", "metadata": {"model": "a"}, "prompt": "p"}),
    ("model string as a value", {"model": "a", "prompt": "p", "user": "model"}),
    ("model string value last", {"prompt": "p", "model": "a", "user": "model"}),
]


@pytest.mark.parametrize("body", [f[1] for f in AMBIGUOUS], ids=[f[0] for f in AMBIGUOUS])
def test_rewrite_only_touches_the_top_level_key(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    parsed = parse_request(raw, "/v1/chat/completions" if "messages" in body else None)
    out_bytes = rewrite_request_body(parsed, "target")
    out = json.loads(out_bytes)
    assert out == {**body, "model": "target"}
    assert list(out) == list(body)  # key order kept
    assert len(out_bytes) == len(raw) + len("target") - len("a")  # spliced, not re-encoded


def test_rewrite_falls_back_when_the_key_is_deep_in_a_huge_body() -> None:
    """Key in the middle, thousands of strings on both sides: json.dumps is cheaper."""
    filler = [{"role": "user", "content": f"m{i}"} for i in range(5000)]
    body = {"messages": filler, "model": "a", "tools": [{"name": f"t{i}"} for i in range(5000)]}
    raw = json.dumps(body).encode()
    out_bytes = rewrite_request_body(parse_request(raw, "/v1/chat/completions"), "target")
    assert json.loads(out_bytes) == {**body, "model": "target"}
    assert b'"model":"target"' in out_bytes  # compact separators: the fallback ran


def test_rewrite_uses_the_last_duplicate_key_like_the_decoder() -> None:
    raw = b'{"model":"x","prompt":"p","model":"a"}'
    parsed = parse_request(raw)
    assert parsed.model == "a"
    out = rewrite_request_body(parsed, "target")
    assert out == b'{"model":"x","prompt":"p","model":"target"}'
    assert json.loads(out)["model"] == "target"


def test_rewrite_never_touches_a_nested_model_when_top_level_key_is_escaped() -> None:
    raw = b'{"mod\\u0065l":"a","meta":{"model":"a"},"prompt":"p"}'
    parsed = parse_request(raw)
    out = json.loads(rewrite_request_body(parsed, "target"))
    assert out == {"model": "target", "meta": {"model": "a"}, "prompt": "p"}


def test_rewrite_same_model_returns_the_original_bytes() -> None:
    raw = _body(model="m", prompt="p")
    parsed = parse_request(raw)
    assert rewrite_request_body(parsed, "m") is raw


def test_rewrite_non_ascii_target() -> None:
    parsed = parse_request(_body(prompt="p", model="a"))
    out = rewrite_request_body(parsed, "modèle/ü")
    assert json.loads(out)["model"] == "modèle/ü"


def test_rewrite_large_body_keeps_every_byte_but_the_model() -> None:
    prompt = "token " * 20_000
    raw = json.dumps({"messages": [{"role": "user", "content": prompt}], "model": "a"}).encode()
    out = rewrite_request_body(parse_request(raw, "/v1/chat/completions"), "bb")
    assert out == raw.replace(b'"model": "a"', b'"model": "bb"')


def test_null_stream_means_not_streaming() -> None:
    assert parse_request(b'{"model":"m","prompt":"p","stream":null}').stream is False
