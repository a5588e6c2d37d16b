"""``tap`` response processing, message by message (sans-IO): metadata out, report in.

The Lua filter's side runs in tests/integration/test_response_tap.py (real Envoy); here the
stream's rules: the routing answer carries the report id and the rewrite, the report's bytes
give usage, completion waits for the report when the stream ends first, and a stream that ends
without one is a disconnect.
"""

from __future__ import annotations

import json

import pytest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.extproc.backend import Outcome
from kvroute.extproc.stream import ExtProcStream, StreamOptions
from kvroute.extproc.tap import TAP_NAMESPACE, TapReportError, parse_report
from kvroute.requestcontrol.hooks import Usage
from tests.unit.extproc.test_stream import (
    COMPLETION,
    REWRITE,
    _Backend,
    feed,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
    run,
)

SSE = (
    b'data: {"model":"served-name","choices":[{"text":"a"}]}\n\n'
    b'data: {"model":"served-name","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def _payload(
    tap_id: str,
    kind: str,
    head: bytes,
    tail: bytes = b"",
    total: int = -1,
    *,
    status: int = 200,
    sse: bool = True,
    served: str = "10.0.0.1:8000",
) -> bytes:
    total = len(head) + len(tail) if total < 0 else total
    lines = [tap_id, kind, str(total), "12", str(status), "1" if sse else "0", served]
    return "\n".join([*lines, str(len(head))]).encode() + b"\n" + head + tail


def _tap_stream(backend: _Backend, rewrite: bool = True) -> tuple[ExtProcStream, dict[str, str]]:
    stream = ExtProcStream(backend, StreamOptions(response_processing=ResponseProcessing.TAP))
    out = run(stream, [req_headers(REWRITE if rewrite else None), req_body(COMPLETION)])
    md = out[0].dynamic_metadata.fields[TAP_NAMESPACE].struct_value.fields
    return stream, {k: v.string_value for k, v in md.items()}


def test_routing_answer_names_the_report_and_the_rewrite() -> None:
    stream, md = _tap_stream(_Backend())
    assert md == {
        "id": stream.tap_id,
        "from": json.dumps("served-name"),
        "to": json.dumps("food-review"),
    }
    other, md2 = _tap_stream(_Backend(), rewrite=False)
    assert md2 == {"id": other.tap_id}  # nothing to restore
    assert other.tap_id != stream.tap_id


def test_report_gives_usage_and_completes() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("text/event-stream"))
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", SSE)))
    # The response's last bytes wait for the report: the exchange is complete now.
    assert len(backend.completions) == 1
    assert stream.close() is False
    (outcome,) = backend.completions
    assert outcome.usage == Usage(prompt_tokens=5, completion_tokens=2)
    assert not outcome.disconnected
    assert outcome.response_bytes == len(SSE)
    assert outcome.first_chunk_at is not None


def test_report_without_response_headers_gives_status_and_kind() -> None:
    """The generated tap config skips the response headers: the report carries them."""
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    assert stream.close() is True  # ended while ROUTED: wait for the report
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", SSE, status=200, sse=True)))
    (outcome,) = backend.completions
    assert outcome.status == 200
    assert outcome.served_endpoint == "10.0.0.1:8000"
    assert outcome.usage == Usage(prompt_tokens=5, completion_tokens=2)
    assert not outcome.disconnected


def test_report_of_an_error_json_without_response_headers() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    doc = b'{"error":{"message":"bad"}}'
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", doc, status=400, sse=False)))
    assert stream.close() is False
    (outcome,) = backend.completions
    assert outcome.status == 400
    assert outcome.usage is None


def test_header_only_request_completes_at_stream_end() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend, StreamOptions(response_processing=ResponseProcessing.TAP))
    run(stream, [req_headers(eos=True)])
    assert stream.close() is False
    assert backend.completions == [Outcome(status=None, disconnected=False)]


def test_stream_end_before_report_waits_for_it() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("application/json"))
    assert stream.close() is True  # the server must wait for the report
    assert backend.completions == []
    doc = b'{"model":"served-name","usage":{"prompt_tokens":3,"completion_tokens":4}}'
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", doc)))
    (outcome,) = backend.completions
    assert outcome.usage == Usage(prompt_tokens=3, completion_tokens=4)
    assert not outcome.disconnected
    stream.expire_tap()  # a late timer changes nothing
    assert len(backend.completions) == 1


def test_no_report_is_a_disconnect() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("text/event-stream"))
    assert stream.close() is True
    stream.expire_tap()
    assert backend.completions == [Outcome(status=200, disconnected=True)]


def test_body_through_the_stream_wins_over_a_report() -> None:
    """An upstream-shaped gateway (FULL_DUPLEX_STREAMED) sends the body: processed as ``full``."""
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("text/event-stream"))
    out = feed(stream, resp_body(SSE, True))
    assert b"food-review" in out[0].response_body.response.body_mutation.streamed_response.body
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", b"garbage")))
    assert stream.close() is False
    (outcome,) = backend.completions
    assert outcome.usage == Usage(prompt_tokens=5, completion_tokens=2)


def test_edges_of_a_long_stream_keep_first_and_last_events() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("text/event-stream"))
    head = b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choi'  # cut mid-event
    tail = b'ces":[]}\n\n' + SSE.split(b"\n\n", 1)[1]  # starts mid-event
    stream.tap_report(parse_report(_payload(stream.tap_id, "edges", head, tail, total=10**6)))
    stream.close()
    (outcome,) = backend.completions
    assert outcome.usage == Usage(prompt_tokens=5, completion_tokens=2)
    assert outcome.response_bytes == 10**6


def test_edges_of_a_long_json_document_read_its_usage() -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("application/json"))
    tail = b'xt":"..."}],"usage": {"prompt_tokens":7,"completion_tokens":9},"id":"x"}'
    stream.tap_report(parse_report(_payload(stream.tap_id, "edges", b'{"model":', tail, 10**6)))
    stream.close()
    (outcome,) = backend.completions
    assert outcome.usage == Usage(prompt_tokens=7, completion_tokens=9)


@pytest.mark.parametrize(
    ("kind", "tail"),
    [("skip", b'"usage":{"prompt_tokens":1}}'), ("edges", b'"usage":{"prompt_tok'), ("edges", b"")],
    ids=["compressed", "usage-cut", "no-usage"],
)
def test_unreadable_json_report_has_no_usage(kind: str, tail: bytes) -> None:
    backend = _Backend()
    stream, _ = _tap_stream(backend)
    feed(stream, resp_headers("application/json"))
    stream.tap_report(parse_report(_payload(stream.tap_id, kind, b'{"model":', tail, 10**6)))
    stream.close()
    (outcome,) = backend.completions
    assert outcome.usage is None
    assert not outcome.disconnected


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"1\nwhole\n",
        b"1\nodd\n0\n0\n200\n1\ns\n0\n",
        b"1\nwhole\nx\n0\n200\n1\ns\n0\n",
        b"1\nwhole\n5\n0\n200\n1\ns\n9\nabc",
    ],
    ids=["empty", "short", "kind", "number", "head-too-long"],
)
def test_bad_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(TapReportError):
        parse_report(payload)


class _Aborted(Exception):
    pass


class _Context:
    """Stands in for grpc.aio's servicer context: only ``abort`` is used by the handler."""

    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None

    async def abort(self, code: object, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


def test_server_hands_a_report_to_its_stream_and_counts_late_ones() -> None:
    import asyncio

    import grpc

    from kvroute.extproc.server import ExternalProcessor

    backend = _Backend()
    processor = ExternalProcessor(
        backend, StreamOptions(response_processing=ResponseProcessing.TAP)
    )
    stream, _ = _tap_stream(backend)
    processor._tapped[stream.tap_id] = stream  # as Process registers it
    ctx = _Context()
    payload = _payload(stream.tap_id, "whole", SSE)
    assert asyncio.run(processor.tap_report(payload, ctx)) == b""  # type: ignore[arg-type]
    assert len(backend.completions) == 1
    assert stream.tap_id not in processor._tapped  # completed: forgotten
    # The same id again (its stream is gone): counted, nothing recorded twice.
    asyncio.run(processor.tap_report(payload, ctx))  # type: ignore[arg-type]
    assert processor.late_tap_reports == 1
    assert len(backend.completions) == 1
    with pytest.raises(_Aborted):
        asyncio.run(processor.tap_report(b"not a report", ctx))  # type: ignore[arg-type]
    assert ctx.aborted is not None
    assert ctx.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
