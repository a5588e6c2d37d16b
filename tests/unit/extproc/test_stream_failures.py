"""The stream's failure paths: every request still gets an answer, nothing is left in flight.

Oversized bodies (413), a backend that fails in an unexpected way (500 instead of a broken
gRPC stream), a response filter that cannot be built, compressed responses (never rewritten)
and rewritten chunks that grow past the 62,000-byte message limit. The backends are the
deterministic stand-in from ``test_stream`` with one fault injected each, since a real director
cannot be made to raise arbitrary exceptions on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvroute.config.extproc_options import DEFAULT_MAX_REQUEST_BODY_BYTES
from kvroute.errors import EppError
from kvroute.extproc.backend import Outcome, Routed, RoutingInput
from kvroute.extproc.messages import BODY_BYTE_LIMIT
from kvroute.extproc.response_filter import OpenAIResponseFilter
from kvroute.extproc.stream import (
    ExtProcStream,
    State,
    StreamOptions,
)
from tests.unit.extproc.test_stream import (
    COMPLETION,
    REWRITE,
    _Backend,
    _headers,
    feed,
    req_body,
    req_headers,
    resp_body,
    run,
    streamed,
)


def _immediate(out: list[Any]) -> tuple[int, str]:
    (resp,) = out
    assert resp.WhichOneof("response") == "immediate_response"
    return resp.immediate_response.status.code, resp.immediate_response.body.decode()


def test_default_body_limit_is_generous() -> None:
    assert StreamOptions().max_request_body_bytes == DEFAULT_MAX_REQUEST_BODY_BYTES == 64 << 20


LIMIT = 1000


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        ({"content-length": "2500"}, [b"x" * 1000, b"x" * 1000, b"x" * 500]),
        ({}, [b"x" * 600, b"x" * 401, b"x" * 1499]),
        ({"content-length": "10"}, [b"x" * 600, b"x" * 600, b"x" * 1300]),
    ],
    ids=["declared-content-length", "chunks-without-length", "lying-content-length"],
)
def test_oversized_body_is_drained_then_answered_413(
    headers: dict[str, str], chunks: list[bytes]
) -> None:
    """Answered at the body's end (clients read only after writing it all), never buffered."""
    backend = _Backend()
    stream = ExtProcStream(backend, StreamOptions(max_request_body_bytes=LIMIT))
    assert feed(stream, req_headers(headers)) == []
    for c in chunks:
        assert feed(stream, req_body(c, eos=False)) == []
        assert len(stream._body) <= LIMIT  # the excess is counted, not kept
    code, body = _immediate(feed(stream, req_body(b"", eos=True)))
    assert code == 413
    assert body == (
        "inference error: PayloadTooLarge - request body of 2500 bytes exceeds the limit of "
        f"{LIMIT} bytes (EPP flag --max-request-body-bytes)"
    )
    assert stream.state is State.REJECTED
    stream.close()
    assert backend.routed_inputs == []
    assert backend.completions == []
    assert len(backend.rejections) == 1


def test_oversized_body_ended_by_trailers_is_answered_413() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend, StreamOptions(max_request_body_bytes=LIMIT))
    run(stream, [req_headers(), req_body(b"x" * 2000, eos=False)])
    trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
    code, _ = _immediate(feed(stream, trailers)[:1])
    assert code == 413


def test_body_at_the_limit_is_routed() -> None:
    body = json.dumps({"model": "m", "prompt": "p" * 200}).encode()
    backend = _Backend()
    stream = ExtProcStream(backend, StreamOptions(max_request_body_bytes=len(body)))
    out = run(
        stream,
        [
            req_headers({"content-length": str(len(body))}),
            req_body(body[:50], False),
            req_body(body[50:]),
        ],
    )
    assert out[0].WhichOneof("response") == "request_headers"
    assert len(backend.routed_inputs) == 1


@pytest.mark.parametrize(
    "bad",
    ["-5", "abc", "1e3", "", "\u00b2", "\u0663"],
    ids=["negative", "word", "float", "empty", "superscript-two", "arabic-indic-three"],
)
def test_unparseable_content_length_does_not_reject_by_itself(bad: str) -> None:
    backend = _Backend()
    stream = ExtProcStream(backend, StreamOptions(max_request_body_bytes=LIMIT))
    out = run(stream, [req_headers({"content-length": bad}), req_body(COMPLETION)])
    assert out[0].WhichOneof("response") == "request_headers"


class _Boom(Exception):
    pass


@dataclass
class _FailingBackend(_Backend):
    fail_route: bool = False
    fail_route_any: bool = False
    fail_filter: bool = False
    fail_rejected: bool = False
    fail_complete: bool = False

    async def route(self, request: RoutingInput) -> Routed:
        if self.fail_route:
            raise _Boom("scorer blew up")
        return await super().route(request)

    def route_any(self, request_id: str) -> str | None:
        if self.fail_route_any:
            raise _Boom("datastore blew up")
        return super().route_any(request_id)

    def response_filter(self, routed: Routed, streaming: bool) -> OpenAIResponseFilter:
        if self.fail_filter:
            raise _Boom("filter blew up")
        return super().response_filter(routed, streaming)

    def rejected(self, error: EppError, request: RoutingInput | None) -> None:
        super().rejected(error, request)
        if self.fail_rejected:
            raise _Boom("metrics blew up")

    def complete(self, routed: Routed, outcome: Outcome) -> None:
        super().complete(routed, outcome)
        if self.fail_complete:
            raise _Boom("completion hook blew up")


@pytest.mark.parametrize(
    ("backend", "messages", "status", "prefix"),
    [
        (
            _FailingBackend(fail_route=True),
            [req_headers(), req_body(COMPLETION)],
            500,
            "inference error: Internal - internal error while routing the request: _Boom",
        ),
        (
            _FailingBackend(fail_route_any=True),
            [req_headers(eos=True)],
            500,
            "inference error: Internal - internal error while routing the request: _Boom",
        ),
        (
            _FailingBackend(fail_rejected=True),
            [req_headers(), req_body(b"{not json")],
            400,
            "inference error: BadRequest",
        ),
    ],
    ids=["route-raises", "route-any-raises", "error-metrics-raise"],
)
def test_unexpected_backend_failure_still_answers(
    backend: _FailingBackend, messages: list[Any], status: int, prefix: str
) -> None:
    stream = ExtProcStream(backend)
    out = run(stream, messages)
    code, body = _immediate(out)
    assert (code, body[: len(prefix)]) == (status, prefix)
    assert stream.state is State.REJECTED
    stream.close()
    assert backend.completions == []


def _resp_headers(pairs: dict[str, str]) -> Any:
    return pb.ProcessingRequest(response_headers=_headers({":status": "200", **pairs}))


def test_response_filter_failure_passes_the_body_through_and_completes() -> None:
    backend = _FailingBackend(fail_filter=True)
    stream = ExtProcStream(backend)
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    feed(stream, _resp_headers({"content-type": "application/json"}))
    doc = b'{"model":"served-name"}'
    out = feed(stream, resp_body(doc, eos=True))
    assert b"".join(b for b, _ in streamed(out, "response_body")) == doc
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected is False


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_compressed_response_is_never_rewritten(encoding: str, content_type: str) -> None:
    """The rewrite works on bytes: on compressed bytes a match would be corruption."""
    backend = _Backend()
    stream = ExtProcStream(backend)
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    feed(stream, _resp_headers({"content-type": content_type, "content-encoding": encoding}))
    chunks = [b'\x1f\x8b"model":"served-name"', b'\x00"usage":{"prompt_tokens":1}}']
    out = [
        *feed(stream, resp_body(chunks[0], False)),
        *feed(stream, resp_body(chunks[1], True)),
    ]
    assert b"".join(b for b, _ in streamed(out, "response_body")) == b"".join(chunks)
    assert backend.filters == []
    assert len(backend.completions) == 1
    assert backend.completions[0].usage is None


def test_identity_encoding_is_still_rewritten() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    feed(
        stream, _resp_headers({"content-type": "application/json", "content-encoding": "identity"})
    )
    out = feed(stream, resp_body(b'{"model":"served-name"}', True))
    assert json.loads(b"".join(b for b, _ in streamed(out, "response_body")))["model"] == (
        "food-review"
    )


def test_grown_streamed_chunk_is_split_at_the_message_limit() -> None:
    """A model name restored many times in one big chunk can push it past 62,000 bytes."""
    backend = _Backend()
    stream = ExtProcStream(backend)
    run(stream, [req_headers({"x-gateway-model-name-rewrite": "m"}), req_body(COMPLETION)])
    feed(stream, _resp_headers({"content-type": "text/event-stream"}))
    event = b'data: {"model":"m"}\n\n'
    big = event * (BODY_BYTE_LIMIT // len(event))
    assert len(big) <= BODY_BYTE_LIMIT
    first = streamed(feed(stream, resp_body(big, False)), "response_body")
    last = streamed(feed(stream, resp_body(event, True)), "response_body")
    assert all(len(b) <= BODY_BYTE_LIMIT for b, _ in first + last)
    assert [eos for _, eos in first] == [False] * len(first)
    assert last[-1][1] is True
    whole = b"".join(b for b, _ in first + last)
    assert whole == (big + event).replace(b'"model":"m"', b'"model":"food-review"')
    assert len(first) > 1


@pytest.mark.parametrize("gateway", [False, True], ids=["kvroute-epp", "kvroute-serve"])
def test_body_limit_flag(gateway: bool) -> None:
    import argparse

    from kvroute.errors import ConfigError
    from kvroute.settings import add_epp_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_epp_arguments(parser, gateway=gateway)
    default = settings_from_args(parser.parse_args([]))
    assert default.max_request_body_bytes == DEFAULT_MAX_REQUEST_BODY_BYTES
    set_ = settings_from_args(parser.parse_args(["--max-request-body-bytes", "1048576"]))
    assert set_.max_request_body_bytes == 1048576
    with pytest.raises(ConfigError, match="--max-request-body-bytes must be positive"):
        settings_from_args(parser.parse_args(["--max-request-body-bytes", "0"]))


def test_event_stream_content_type_is_case_insensitive() -> None:
    """RFC 9110 media types are case-insensitive: an SSE response must be filtered per chunk."""
    backend = _Backend()
    stream = ExtProcStream(backend)
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    feed(stream, _resp_headers({"content-type": "Text/Event-Stream; charset=utf-8"}))
    out = feed(stream, resp_body(b'data: {"model":"served-name"}\n\n', False))
    assert streamed(out, "response_body") == [(b'data: {"model":"food-review"}\n\n', False)]


def test_failing_completion_bookkeeping_does_not_cut_off_the_response() -> None:
    backend = _FailingBackend(fail_complete=True)
    stream = ExtProcStream(backend)
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    feed(stream, _resp_headers({"content-type": "application/json", ":status": "\u00b2"}))
    out = feed(stream, resp_body(b'{"model":"served-name"}', True))
    assert streamed(out, "response_body") == [(b'{"model":"food-review"}', True)]
    stream.close()  # the server's finally: must not raise either
    assert len(backend.completions) == 1
    assert backend.completions[0].status is None  # a status Envoy would never send: unknown


def test_routed_stream_does_not_pin_the_request_body() -> None:
    """A stream lives for the whole generation; a 1 MB prompt must not stay referenced by it
    after it was sent (thousands of long streams would hold gigabytes)."""
    data = json.dumps({"model": "m", "prompt": "x" * (1 << 20)}).encode()
    stream = ExtProcStream(_Backend())
    out = run(stream, [req_headers(), req_body(data[:70_000], False), req_body(data[70_000:])])
    assert json.loads(b"".join(b for b, _ in streamed(out, "request_body"))) == json.loads(data)
    assert stream.routed is not None
    assert stream.routed.body == b""
    assert len(stream._body) == 0
