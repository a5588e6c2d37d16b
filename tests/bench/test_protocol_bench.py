"""Per-request protocol costs: the body ``model`` rewrite, parsing, resolution, response chunks.

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_protocol_bench.py

Groups ``rewrite-100KB`` and ``rewrite-1MB`` compare, on one chat body of that size,
kvroute's byte-level splice of the top-level ``model`` (with ``model`` last, as the openai
Python client orders it, and first, as curl examples do) with what upstream does
(``body["model"] = target`` then a full re-serialization, here ``json.dumps``). The other
groups price what runs per request (parse, resolve) and per streamed chunk (model-name
rewrite back, SSE usage scan).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kvroute.config.resources import load_resources_text
from kvroute.protocol.openai import ParsedRequest, parse_request, rewrite_request_body
from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.protocol.sse import SseUsageParser
from kvroute.requestcontrol.model_resolution import ModelResolver

pytestmark = pytest.mark.bench

_TEXT = (
    "the model server keeps a cache of attention keys and values per token block so a "
    "request that shares a prefix with an earlier one skips part of its prefill; "
    'quotes like "this" and back\\slashes and braces {} [] appear in real prompts too.'
)
_WORDS = _TEXT.split(" ")


def _chat_body(size: int, model_first: bool) -> bytes:
    rng = random.Random(0)
    messages: list[dict[str, str]] = []
    total = 0
    while total < size:
        text = " ".join(rng.choice(_WORDS) for _ in range(400))
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": text})
        total += len(text) + 40
    body: dict[str, Any] = {"messages": messages, "model": "chat", "stream": True}
    if model_first:
        body = {"model": "chat", **body}
    return json.dumps(body).encode()


def _full_reserialize(parsed: ParsedRequest, target: str) -> bytes:
    """What upstream does: set body["model"] and marshal the whole map again."""
    body = dict(parsed.body)
    body["model"] = target
    return json.dumps(body).encode()


SIZES = [("100KB", 100_000), ("1MB", 1_000_000)]


@pytest.mark.parametrize(("label", "size"), SIZES, ids=[s[0] for s in SIZES])
@pytest.mark.parametrize("variant", ["splice-model-last", "splice-model-first", "json-dumps"])
def test_rewrite_body(benchmark: Any, label: str, size: int, variant: str) -> None:
    benchmark.group = f"rewrite-{label}"
    raw = _chat_body(size, model_first=variant == "splice-model-first")
    parsed = parse_request(raw, "/v1/chat/completions")
    if variant == "json-dumps":
        out = benchmark(_full_reserialize, parsed, "chat-v2")
    else:
        out = benchmark(rewrite_request_body, parsed, "chat-v2")
        # The splice really happened: every other byte is the original.
        assert len(out) == len(raw) + 3
    assert json.loads(out)["model"] == "chat-v2"


@pytest.mark.parametrize(("label", "size"), SIZES, ids=[s[0] for s in SIZES])
def test_parse_request(benchmark: Any, label: str, size: int) -> None:
    benchmark.group = f"parse-{label}"
    raw = _chat_body(size, model_first=False)
    parsed = benchmark(parse_request, raw, "/v1/chat/completions")
    assert parsed.model == "chat"


def test_resolve(benchmark: Any) -> None:
    benchmark.group = "per-request"
    resources = load_resources_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModelRewrite\n"
        "metadata: {name: canary}\nspec:\n  poolRef: {name: pool}\n  rules:\n"
        "  - matches: [{model: {value: chat}}]\n"
        "    targets: [{modelRewrite: v1, weight: 90}, {modelRewrite: v2, weight: 10}]\n"
        "---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
        "metadata: {name: premium}\nspec: {priority: 5, poolRef: {name: pool}}\n"
    )
    resolver = ModelResolver(resources, random.Random(0))
    headers = {"x-gateway-inference-objective": "premium", "x-request-id": "r"}
    result = benchmark(resolver.resolve, "chat", headers)
    assert result.target_model in {"v1", "v2"}
    assert result.priority == 5


_EVENT = (
    b'data: {"id":"cmpl-1","object":"chat.completion.chunk","created":1,"model":"chat-v2",'
    b'"choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}],"usage":null}\n\n'
)


def test_response_chunk_rewrite(benchmark: Any) -> None:
    benchmark.group = "per-chunk"
    rewriter = ModelNameRewriter("chat-v2", "chat")
    out = benchmark(rewriter.feed, _EVENT)
    assert b'"model":"chat"' in out


def test_response_chunk_usage_scan(benchmark: Any) -> None:
    benchmark.group = "per-chunk"
    parser = SseUsageParser()
    benchmark(parser.feed, _EVENT)
    assert parser.usage is None
