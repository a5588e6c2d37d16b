"""Property-based fuzzing of the request parsers and the response-side parsers (issue 20).

Bounded (``max_examples`` small, no deadline) so it runs in ``make test`` in seconds; raise
``KVROUTE_FUZZ_EXAMPLES`` for a longer run. Properties: a request body is either parsed (and a
model rewrite round-trips) or refused with :class:`BadRequestError`, never another exception;
the SSE usage parser and the usage body parser never raise on any bytes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvroute.errors import BadRequestError
from kvroute.protocol.openai import parse_request, rewrite_request_body
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
