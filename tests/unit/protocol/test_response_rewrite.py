"""The response model-name rewrite, on whole bodies and on chunks split anywhere."""

from __future__ import annotations

import json

import pytest

from kvroute.protocol.response_rewrite import ModelNameRewriter
from kvroute.protocol.usage import parse_usage_body
from kvroute.requestcontrol.hooks import Usage

WHOLE = [
    ("compact", b'{"id":"1","model":"tgt","x":1}', b'{"id":"1","model":"client","x":1}'),
    ("one space (json.dumps)", b'{"id": "1", "model": "tgt"}', b'{"id": "1", "model": "client"}'),
    ("prefix of another model untouched", b'{"model":"tgt-2"}', b'{"model":"tgt-2"}'),
    (
        "other keys untouched",
        b'{"served_model":"tgt","root":"tgt"}',
        b'{"served_model":"tgt","root":"tgt"}',
    ),
    (
        "every SSE event",
        b'data: {"model":"tgt","n":1}\n\ndata: {"model": "tgt","n":2}\n\ndata: [DONE]\n\n',
        b'data: {"model":"client","n":1}\n\ndata: {"model": "client","n":2}\n\ndata: [DONE]\n\n',
    ),
]


@pytest.mark.parametrize(("body", "expected"), [w[1:] for w in WHOLE], ids=[w[0] for w in WHOLE])
def test_rewrite_whole_body(body: bytes, expected: bytes) -> None:
    assert ModelNameRewriter("tgt", "client").feed(body, end=True) == expected


@pytest.mark.parametrize(("body", "expected"), [w[1:] for w in WHOLE], ids=[w[0] for w in WHOLE])
def test_rewrite_at_every_two_way_split(body: bytes, expected: bytes) -> None:
    for cut in range(1, len(body)):
        rewriter = ModelNameRewriter("tgt", "client")
        out = rewriter.feed(body[:cut]) + rewriter.feed(body[cut:]) + rewriter.flush()
        assert out == expected, cut


@pytest.mark.parametrize(("body", "expected"), [w[1:] for w in WHOLE], ids=[w[0] for w in WHOLE])
def test_rewrite_byte_by_byte(body: bytes, expected: bytes) -> None:
    rewriter = ModelNameRewriter("tgt", "client")
    out = b"".join(rewriter.feed(body[i : i + 1]) for i in range(len(body)))
    assert out + rewriter.flush() == expected


def test_complete_events_are_not_held_back() -> None:
    """A streamed event must reach the client in the chunk it arrived in."""
    rewriter = ModelNameRewriter("tgt", "client")
    event = b'data: {"model":"tgt","choices":[]}\n\n'
    assert rewriter.feed(event) == b'data: {"model":"client","choices":[]}\n\n'
    # Only a tail that may start a pattern is held, and only until the next chunk.
    assert rewriter.feed(b'data: {"model":"t') == b"data: {"
    assert rewriter.feed(b'gt"}\n\n') == b'"model":"client"}\n\n'


def test_identity_rewriter_passes_chunks_through() -> None:
    rewriter = ModelNameRewriter("same", "same")
    chunk = b'{"model":"same"}'
    assert not rewriter.active
    assert rewriter.feed(chunk) is chunk


def test_unchanged_chunk_is_not_copied() -> None:
    rewriter = ModelNameRewriter("tgt", "client")
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert rewriter.feed(chunk) is chunk


def test_names_needing_json_escapes() -> None:
    target, incoming = 'we"ird\\name', "org/modèle"
    body = json.dumps({"model": target}, ensure_ascii=False).encode()
    out = ModelNameRewriter(target, incoming).feed(body, end=True)
    assert json.loads(out) == {"model": incoming}


def test_hermetic_response_buffering_multi_chunk_json() -> None:
    """Upstream hermetic case: a JSON response in several chunks is rewritten and counted."""
    body = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "tgt",
            "choices": [{"text": "hello world", "index": 0}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        }
    ).encode()
    chunks = [body[i : i + 17] for i in range(0, len(body), 17)] + [b""]  # empty EOS chunk
    rewriter = ModelNameRewriter("tgt", "client")
    buffered = b"".join(chunks)
    assert parse_usage_body(buffered) == Usage(7, 2, 0)
    out = b"".join(rewriter.feed(c, end=i == len(chunks) - 1) for i, c in enumerate(chunks))
    assert json.loads(out) == {**json.loads(body), "model": "client"}


def test_hermetic_response_buffering_invalid_json_passes_through() -> None:
    """Invalid JSON from the server reaches the client unchanged (only the model is swapped)."""
    rewriter = ModelNameRewriter("tgt", "client")
    assert rewriter.feed(b'{"model":"tgt", broken', end=True) == b'{"model":"client", broken'
    assert ModelNameRewriter("tgt", "client").feed(b"not json at all", end=True) == (
        b"not json at all"
    )
