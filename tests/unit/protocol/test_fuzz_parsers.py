"""Property-based fuzzing of the request parsers and the response-side parsers (issue 20).

Bounded (``max_examples`` small, no deadline) so it runs in ``make test`` in seconds; raise
``KVROUTE_FUZZ_EXAMPLES`` for a longer run. Properties: a request body is either parsed (and a
model rewrite round-trips) or refused with :class:`BadRequestError`, never another exception;
the SSE usage parser and the usage body parser never raise on any bytes. The second half runs
the same properties through :class:`~kvroute.protocol.parsers.ParserSet` with every parser type
of ``requestHandler.parsers`` (Anthropic Messages, Responses, embeddings, vLLM and SGLang
generate, passthrough) on every path they claim, and every response usage parser. A run with
``KVROUTE_FUZZ_EXAMPLES=2000`` found nothing to fix (2026-12-02).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvroute.errors import BadRequestError
from kvroute.framework.request import ApiKind
from kvroute.protocol.openai import parse_request, rewrite_request_body
from kvroute.protocol.parsers import (
    ANTHROPIC,
    OPENAI,
    PARSER_TYPES,
    PASSTHROUGH,
    SGLANG_HTTP,
    VLLM_HTTP,
    ParserSet,
    body_usage,
    stream_usage,
)
from kvroute.protocol.paths import INFERENCE_PATHS
from kvroute.protocol.sse import SseUsageParser
from kvroute.protocol.usage import parse_usage_body

EXAMPLES = int(os.environ.get("KVROUTE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PATHS = st.sampled_from([*INFERENCE_PATHS, "", "/v1/other", "/v1/chat/completions/?x=1"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", 3, None])},
        optional={"content": JSON},
    )
    | JSON,
    max_size=4,
)
# Request-shaped objects: the known fields with any types, plus arbitrary extra ones.
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(max_size=12) | JSON,
        "prompt": st.text(max_size=40) | JSON,
        "messages": MESSAGES,
        "input": JSON,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}) | JSON,
        "max_tokens": st.integers() | JSON,
        "max_completion_tokens": st.integers() | JSON,
        "system": JSON,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=3).map(lambda x: {**x, **d})
)


def _parse_or_refuse(body: bytes, path: str) -> Any:
    try:
        return parse_request(body, path)
    except BadRequestError:  # 400 (404 for unknown models is a subclass): a clean refusal
        return None


@FUZZ
@given(body=st.binary(max_size=300), path=PATHS)
def test_any_bytes_parse_or_are_a_bad_request(body: bytes, path: str) -> None:
    _parse_or_refuse(body, path)


@FUZZ
@given(doc=REQUESTS, path=PATHS, target=st.text(min_size=1, max_size=12))
def test_request_shaped_json_parses_or_is_refused_and_rewrites_round_trip(
    doc: dict[str, Any], path: str, target: str
) -> None:
    body = json.dumps(doc).encode()
    parsed = _parse_or_refuse(body, path)
    if parsed is None:
        return
    assert parsed.model == doc["model"]
    try:
        rewritten = rewrite_request_body(parsed, target)
    except BadRequestError:
        return  # e.g. a target with a lone surrogate: refused, not crashed
    again = parse_request(rewritten, path)
    assert again.model == target
    assert again.stream == parsed.stream


@FUZZ
@given(chunks=st.lists(st.binary(max_size=80), max_size=8), model=st.text(max_size=8))
def test_sse_usage_parser_never_raises(chunks: list[bytes], model: str) -> None:
    parser = SseUsageParser()
    for c in chunks:
        parser.feed(c)
    final = b"data: " + json.dumps({"model": model, "usage": {"prompt_tokens": 1}}).encode()
    parser.feed(final + b"\n\n")


@FUZZ
@given(body=st.binary(max_size=300) | JSON.map(lambda d: json.dumps(d).encode()))
def test_usage_body_parser_never_raises(body: bytes) -> None:
    parse_usage_body(body)


# -- every parser type of requestHandler.parsers -------------------------------------------------
# The same properties through ParserSet (the EPP's dispatch), with every type configured
# (sglanghttp-parser is not in the default list) and the paths each one claims.

ALL_PARSERS = ParserSet([OPENAI, ANTHROPIC, VLLM_HTTP, SGLANG_HTTP, PASSTHROUGH])
CLAIMED = sorted({suffix for kind in PARSER_TYPES.values() for suffix in kind.claims})
ALL_PATHS = st.sampled_from(
    [f"/v1/{s}" for s in CLAIMED] + ["/generate", "/v1/unknown", "/", "/v1/messages/?beta=1"]
)
TEXT_OR_JSON = st.text(max_size=30) | JSON
CONTENT_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "image", "input_audio", "tool_result", 7])},
    optional={
        "text": TEXT_OR_JSON,
        "image_url": st.fixed_dictionaries(
            {"url": st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:,", "http://x"])}
        )
        | JSON,
        "source": st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url"]), "data": TEXT_OR_JSON}
        )
        | JSON,
        "content": TEXT_OR_JSON,
    },
)
RICH_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", 3, None])},
        optional={"content": st.text(max_size=20) | st.lists(CONTENT_PART, max_size=3) | JSON},
    )
    | JSON,
    max_size=4,
)
# The fields of every API the parsers read (Anthropic Messages, Responses, embeddings, vLLM and
# SGLang generate), each with its own shape or any JSON.
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "prompt": TEXT_OR_JSON | st.lists(st.integers(), max_size=5),
        "messages": RICH_MESSAGES,
        "system": TEXT_OR_JSON | st.lists(CONTENT_PART, max_size=2),
        "input": TEXT_OR_JSON | RICH_MESSAGES | st.lists(st.integers(), max_size=5),
        "instructions": TEXT_OR_JSON,
        "text": TEXT_OR_JSON,
        "input_ids": st.lists(st.integers(), max_size=5) | JSON,
        "prompt_token_ids": st.lists(st.integers(), max_size=5) | JSON,
        "sampling_params": st.fixed_dictionaries({}, optional={"max_new_tokens": JSON}) | JSON,
        "stream": st.booleans() | JSON,
        "stream_options": JSON,
        "max_tokens": st.integers() | JSON,
        "max_output_tokens": st.integers() | JSON,
        "tools": JSON,
    },
)
# Half with a plain model name (so that many parse and the rewrite is exercised), half with
# any model value or none.
_MODEL = st.fixed_dictionaries({"model": st.text(min_size=1, max_size=12)}) | st.fixed_dictionaries(
    {}, optional={"model": JSON}
)
_IDS = st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=6)
_PARTS = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}), max_size=2
)
# One body that is valid for every API at once (each parser reads its own fields), so that
# most examples parse; its fields are then partly replaced by anything (``_FIELDS``).
_GOOD = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=12),
        "prompt": st.text(max_size=30),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "assistant", "system"]),
                    "content": st.text(max_size=20) | _PARTS,
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "input": st.text(max_size=20),
        "text": st.text(max_size=20),
        "token_ids": _IDS,
        "input_ids": _IDS,
        "max_tokens": st.integers(min_value=1, max_value=64),
        "stream": st.booleans(),
    }
)
_SOME_FIELDS = st.fixed_dictionaries({}, optional={"model": JSON, "stream": JSON})
_ARBITRARY = st.tuples(_MODEL, _FIELDS, st.dictionaries(st.text(max_size=6), JSON, max_size=2)).map(
    lambda t: {**t[2], **t[1], **t[0]}
)
ANY_REQUEST = _ARBITRARY | st.tuples(_GOOD, _FIELDS | _SOME_FIELDS).map(lambda t: {**t[0], **t[1]})


def _dispatch_or_refuse(body: bytes, path: str) -> Any:
    try:
        return ALL_PARSERS.parse_request(body, path)
    except BadRequestError:
        return None


@FUZZ
@given(body=st.binary(max_size=300), path=ALL_PATHS)
def test_every_parser_takes_any_bytes_or_refuses_them(body: bytes, path: str) -> None:
    _dispatch_or_refuse(body, path)


@FUZZ
@given(doc=ANY_REQUEST, path=ALL_PATHS, target=st.text(min_size=1, max_size=12))
def test_every_parser_parses_or_refuses_and_its_rewrite_round_trips(
    doc: dict[str, Any], path: str, target: str
) -> None:
    body = json.dumps(doc).encode()
    parsed = _dispatch_or_refuse(body, path)
    if parsed is None:
        return
    assert isinstance(parsed.prompt_text, str)
    try:
        rewritten = ALL_PARSERS.rewrite_request_body(parsed, target)
    except BadRequestError:
        return  # e.g. a target with a lone surrogate: refused, not crashed
    if not parsed.model or parsed.api in {
        ApiKind.PASSTHROUGH,
        ApiKind.MESSAGES_COUNT_TOKENS,
        ApiKind.SGLANG_GENERATE,
    }:
        assert rewritten == body  # forwarded byte for byte
        return
    again = ALL_PARSERS.parse_request(rewritten, path)
    assert again.model == target
    assert again.api is parsed.api
    assert again.stream == parsed.stream


@FUZZ
@given(
    api=st.sampled_from([*ApiKind, None]),
    chunks=st.lists(st.binary(max_size=80) | JSON.map(lambda d: _sse(d)), max_size=8),
)
def test_every_response_usage_parser_never_raises(api: ApiKind | None, chunks: list[bytes]) -> None:
    parser = stream_usage(api)
    for c in chunks:
        parser.feed(c)
    parser.finish()
    body_usage(api, b"".join(chunks))


def _sse(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"
