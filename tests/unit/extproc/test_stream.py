"""Message-by-message tests of the ext_proc state machine (upstream hermetic_test.go cases).

The backend here is a small deterministic stand-in for the director (the state machine's only
collaborator): it parses the body with ``json`` and routes to a fixed endpoint list. Responses go
through the real :class:`OpenAIResponseFilter`. The real director is wired in
``kvroute.extproc.director_backend`` and exercised by the integration tests; this file pins the
protocol rules that do not depend on scheduling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.errors import (
    BadRequestError,
    EppError,
    NoCandidatesError,
    PoolExhaustedError,
)
from kvroute.extproc.backend import Outcome, Routed, RoutingInput
from kvroute.extproc.messages import BODY_BYTE_LIMIT
from kvroute.extproc.response_filter import OpenAIResponseFilter
from kvroute.extproc.stream import (
    ExtProcStream,
    ProtocolViolation,
    State,
    StreamOptions,
)
from kvroute.requestcontrol.hooks import Usage

# -- a deterministic backend -------------------------------------------------------------------


@dataclass
class _Backend:
    endpoints: tuple[str, ...] = ("10.0.0.1:8000", "10.0.0.2:8000")
    error: EppError | None = None
    routed_inputs: list[RoutingInput] = field(default_factory=list)
    completions: list[Outcome] = field(default_factory=list)
    rejections: list[EppError] = field(default_factory=list)
    filters: list[OpenAIResponseFilter] = field(default_factory=list)

    async def route(self, request: RoutingInput) -> Routed:
        self.routed_inputs.append(request)
        if self.error is not None:
            raise self.error
        try:
            body = json.loads(request.body)
        except json.JSONDecodeError as exc:
            raise BadRequestError(f"error unmarshaling request body: {exc}") from exc
        if "model" not in body:
            raise BadRequestError("model not found in request body")
        incoming = body["model"]
        target = request.model_rewrite or incoming
        if request.subset_hint is not None:
            ips = {s.rsplit(":", 1)[0] for s in request.subset_hint}
            eps = tuple(e for e in self.endpoints if e.rsplit(":", 1)[0] in ips)
            if not eps:
                raise NoCandidatesError("failed to find endpoint candidates")
        else:
            eps = self.endpoints
        body["model"] = target
        return Routed(
            endpoints=eps,
            body=json.dumps(body, separators=(",", ":")).encode(),
            incoming_model=incoming,
            target_model=target,
        )

    def route_any(self, request_id: str) -> str | None:
        return self.endpoints[0] if self.endpoints else None

    def response_filter(self, routed: Routed, streaming: bool) -> OpenAIResponseFilter:
        f = OpenAIResponseFilter(routed.incoming_model, routed.target_model, streaming)
        self.filters.append(f)
        return f

    def complete(self, routed: Routed, outcome: Outcome) -> None:
        self.completions.append(outcome)

    def rejected(self, error: EppError, request: RoutingInput | None) -> None:
        self.rejections.append(error)


# -- message builders ----------------------------------------------------------------------------


def _headers(pairs: dict[str, str], eos: bool = False) -> Any:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    return pb.HttpHeaders(headers=hm, end_of_stream=eos)


def req_headers(extra: dict[str, str] | None = None, eos: bool = False, **meta: Any) -> Any:
    # A bodyless request is a GET of a non-inference path (one on an inference path is a 400).
    h = {":method": "POST", ":path": "/v1/completions"} if not eos else {":method": "GET"}
    if eos:
        h[":path"] = "/v1/models"
    h.update(extra or {})
    msg = pb.ProcessingRequest(request_headers=_headers(h, eos))
    if "subset" in meta:
        st = struct_pb2.Struct()
        st.update({"x-gateway-destination-endpoint-subset": meta["subset"]})
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(st)
    return msg


def req_body(data: bytes, eos: bool = True) -> Any:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def resp_headers(content_type: str = "application/json", status: str = "200") -> Any:
    return pb.ProcessingRequest(
        response_headers=_headers({":status": status, "content-type": content_type})
    )


def resp_body(data: bytes, eos: bool) -> Any:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def feed(stream: ExtProcStream, message: Any) -> list[Any]:
    """One message through the stream's async entry point (routing is awaited there)."""
    return asyncio.run(stream.areceive(message))


def run(stream: ExtProcStream, messages: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for m in messages:
        out.extend(feed(stream, m))
    return out


def set_headers(resp: Any) -> dict[str, str]:
    mut = resp.request_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mut.set_headers}


def streamed(resps: Sequence[Any], field_name: str) -> list[tuple[bytes, bool]]:
    out = []
    for r in resps:
        if r.WhichOneof("response") == field_name:
            sr = getattr(r, field_name).response.body_mutation.streamed_response
            out.append((sr.body, sr.end_of_stream))
    return out


COMPLETION = json.dumps({"model": "food-review", "prompt": "hi"}).encode()

# -- request path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bodies",
    [[COMPLETION], [COMPLETION[:7], COMPLETION[7:19], COMPLETION[19:]], [COMPLETION, b""]],
    ids=["one-chunk", "split-across-chunks", "empty-eos-chunk"],
)
def test_routes_after_body_end_with_deferred_header_response(bodies: list[bytes]) -> None:
    backend = _Backend()
    stream = ExtProcStream(backend, request_id_factory=lambda: "rid-1")
    msgs = [req_headers(), *(req_body(b, eos=i == len(bodies) - 1) for i, b in enumerate(bodies))]
    # Nothing may be answered before the body's end of stream.
    assert run(stream, msgs[:-1]) == []
    out = feed(stream, msgs[-1])
    head, *body = out
    assert head.WhichOneof("response") == "request_headers"
    hdrs = set_headers(head)
    assert hdrs["x-gateway-destination-endpoint"] == "10.0.0.1:8000,10.0.0.2:8000"
    assert hdrs["x-request-id"] == "rid-1"
    assert head.request_headers.response.clear_route_cache
    lb = head.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000,10.0.0.2:8000"
    sent = b"".join(b for b, _ in streamed(body, "request_body"))
    assert json.loads(sent) == json.loads(COMPLETION)
    assert int(hdrs["content-length"]) == len(sent)
    assert streamed(body, "request_body")[-1][1] is True
    assert stream.state is State.ROUTED
    assert backend.routed_inputs[0].path == "/v1/completions"


def test_existing_request_id_is_kept_and_not_reset() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend, request_id_factory=lambda: "generated")
    head = run(stream, [req_headers({"x-request-id": "client-id"}), req_body(COMPLETION)])[0]
    assert "x-request-id" not in set_headers(head)
    assert backend.routed_inputs[0].request_id == "client-id"


def test_one_megabyte_body_is_chunked_at_62000_bytes() -> None:
    prompt = "x" * (1024 * 1024)
    data = json.dumps({"model": "m", "prompt": prompt}).encode()
    stream = ExtProcStream(_Backend())
    pieces = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    msgs = [req_headers(), *(req_body(p, eos=i == len(pieces) - 1) for i, p in enumerate(pieces))]
    out = run(stream, msgs)
    chunks = streamed(out[1:], "request_body")
    assert all(len(b) <= BODY_BYTE_LIMIT for b, _ in chunks)
    assert [eos for _, eos in chunks] == [False] * (len(chunks) - 1) + [True]
    whole = b"".join(b for b, _ in chunks)
    assert json.loads(whole)["prompt"] == prompt
    assert int(set_headers(out[0])["content-length"]) == len(whole)
    assert len(chunks) == -(-len(whole) // BODY_BYTE_LIMIT)


def test_control_headers_are_read_and_stripped() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    control = {
        "x-gateway-inference-objective": "critical-chat",
        "x-gateway-inference-fairness-id": "tenant-a",
        "x-gateway-model-name-rewrite": "llama-base",
    }
    head, *body = run(stream, [req_headers(control), req_body(COMPLETION)])
    rin = backend.routed_inputs[0]
    assert (rin.objective, rin.fairness_id, rin.model_rewrite) == (
        "critical-chat",
        "tenant-a",
        "llama-base",
    )
    removed = set(head.request_headers.response.header_mutation.remove_headers)
    assert removed == set(control)
    assert json.loads(b"".join(b for b, _ in streamed(body, "request_body")))["model"] == (
        "llama-base"
    )


def test_new_control_header_names_are_read_win_over_aliases_and_both_are_stripped() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    control = {
        "x-llm-d-inference-objective": "critical-chat",
        "x-gateway-inference-objective": "batch",  # conflicting alias: the new name wins
        "x-llm-d-model-name-rewrite": "llama-base",
        "x-llm-d-slo-ttft-ms": "250",
        "x-slo-tpot-ms": "20",
        "x-llm-d-video-fps": "2",
        "x-llm-d-request-dropped-reason": "forged",
    }
    head, *_ = run(stream, [req_headers(control), req_body(COMPLETION)])
    rin = backend.routed_inputs[0]
    assert (rin.objective, rin.model_rewrite) == ("critical-chat", "llama-base")
    removed = set(head.request_headers.response.header_mutation.remove_headers)
    assert removed == set(control)


def test_header_only_request_goes_to_any_endpoint() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    (head,) = feed(stream, req_headers(eos=True))
    assert set_headers(head)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert "content-length" not in set_headers(head)
    assert backend.routed_inputs == []


def _error_status(resp: Any) -> tuple[int, str]:
    ir = resp.immediate_response
    return ir.status.code, ir.body.decode()


@pytest.mark.parametrize(
    ("backend", "messages", "status", "body_prefix"),
    [
        (_Backend(), [req_headers(), req_body(b"{not json")], 400, "inference error: BadRequest"),
        (
            _Backend(),
            [req_headers(), req_body(b'{"prompt":"x"}')],
            400,
            "inference error: BadRequest - model not found in request body",
        ),
        (
            _Backend(error=PoolExhaustedError("failed to find target endpoint: shed")),
            [req_headers(), req_body(COMPLETION)],
            429,
            "inference error: ResourceExhausted - failed to find target endpoint",
        ),
        (
            _Backend(),
            [req_headers(subset=["192.168.9.9:8000"]), req_body(COMPLETION)],
            503,
            "inference error: ServiceUnavailable",
        ),
        (
            _Backend(endpoints=()),
            [req_headers(eos=True)],
            500,
            "inference error: Internal - no pods available in datastore",
        ),
    ],
    ids=["bad-json", "missing-model", "shed-429", "subset-matches-nothing", "header-only-no-pods"],
)
def test_errors_become_immediate_responses(
    backend: _Backend, messages: list[Any], status: int, body_prefix: str
) -> None:
    stream = ExtProcStream(backend)
    out = run(stream, messages)
    assert len(out) == 1
    code, body = _error_status(out[0])
    assert code == status
    assert body.startswith(body_prefix)
    assert stream.state is State.REJECTED
    assert len(backend.rejections) == 1
    stream.close()
    assert backend.completions == []  # nothing was scheduled, nothing to complete


def test_subset_hint_restricts_candidates_by_ip() -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    head = run(stream, [req_headers(subset=["10.0.0.2:9999"]), req_body(COMPLETION)])[0]
    assert backend.routed_inputs[0].subset_hint == ("10.0.0.2:9999",)
    assert set_headers(head)["x-gateway-destination-endpoint"] == "10.0.0.2:8000"


def test_message_out_of_order_is_a_protocol_violation() -> None:
    stream = ExtProcStream(_Backend())
    with pytest.raises(ProtocolViolation):
        feed(stream, req_body(COMPLETION))


def test_local_reply_before_routing_passes_through_unrecorded() -> None:
    """Issue 20 finding 6: a filter ahead of ext_proc answered (the gateway's 431); Envoy sends
    that reply's headers through ext_proc without any request headers. It used to abort the
    stream, which turned the 431 into an empty 503."""
    backend = _Backend()
    stream = ExtProcStream(backend)
    out = stream.receive(resp_headers())
    assert [m.WhichOneof("response") for m in out] == ["response_headers"]
    stream.close()
    assert backend.completions == []
    assert backend.rejections == []


def test_bodyless_request_on_an_inference_path_is_a_400() -> None:
    """Issue 20 finding 1: it used to be routed to a random endpoint, unvalidated."""
    stream = ExtProcStream(_Backend())
    hm = _headers({":method": "POST", ":path": "/v1/chat/completions?x=1"}, eos=True)
    (out,) = stream.receive(pb.ProcessingRequest(request_headers=hm))
    assert out.immediate_response.status.code == 400
    assert b"/v1/chat/completions needs a JSON request body" in out.immediate_response.body


# -- response path -----------------------------------------------------------------------------

REWRITE = {"x-gateway-model-name-rewrite": "served-name"}


def _routed_stream(backend: _Backend, **opts: Any) -> ExtProcStream:
    stream = ExtProcStream(backend, StreamOptions(**opts))
    run(stream, [req_headers(REWRITE), req_body(COMPLETION)])
    return stream


def test_streaming_response_restores_model_chunk_by_chunk_and_reads_usage() -> None:
    backend = _Backend()
    stream = _routed_stream(backend)
    chunks = [
        b'data: {"model":"served-name","choices":[{"text":"a"}]}\n\n',
        b'data: {"model":"served-name","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert len(feed(stream, resp_headers("text/event-stream"))) == 1
    per_chunk = [feed(stream, resp_body(c, eos=i == 2)) for i, c in enumerate(chunks)]
    # Each chunk is answered immediately (no buffering of a stream).
    assert [len(o) for o in per_chunk] == [1, 1, 1]
    out = b"".join(b for o in per_chunk for b, _ in streamed(o, "response_body"))
    assert b"served-name" not in out
    assert out.count(b'"model":"food-review"') == 2
    (done,) = backend.completions
    # the first body chunk is time-stamped (the latency predictor's TTFT)
    assert isinstance(done.first_chunk_at, float)
    assert dataclasses.replace(done, first_chunk_at=None) == Outcome(
        status=200, usage=Usage(5, 2, 0), response_bytes=sum(map(len, chunks))
    )
    assert stream.state is State.COMPLETE


def test_json_response_is_buffered_then_restored() -> None:
    backend = _Backend()
    stream = _routed_stream(backend)
    doc = json.dumps(
        {"model": "served-name", "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        separators=(",", ":"),
    ).encode()
    feed(stream, resp_headers())
    assert feed(stream, resp_body(doc[:10], eos=False)) == []
    out = feed(stream, resp_body(doc[10:], eos=True))
    body = b"".join(b for b, _ in streamed(out, "response_body"))
    assert json.loads(body)["model"] == "food-review"
    assert backend.completions[0].usage == Usage(3, 4, 0)


@pytest.mark.parametrize(
    "cut_after",
    ["request-headers", "routed", "response-headers", "mid-body", "complete"],
)
def test_completion_recorded_exactly_once(cut_after: str) -> None:
    backend = _Backend()
    stream = ExtProcStream(backend)
    steps = {
        "request-headers": [req_headers()],
        "routed": [req_headers(), req_body(COMPLETION)],
        "response-headers": [req_headers(), req_body(COMPLETION), resp_headers()],
        "mid-body": [req_headers(), req_body(COMPLETION), resp_headers(), resp_body(b"{", False)],
        "complete": [req_headers(), req_body(COMPLETION), resp_headers(), resp_body(b"{}", True)],
    }[cut_after]
    run(stream, steps)
    stream.close()  # the gRPC stream ends (normally or by cancellation)
    stream.close()
    expected = 0 if cut_after == "request-headers" else 1
    assert len(backend.completions) == expected
    if expected:
        assert backend.completions[0].disconnected is (cut_after != "complete")


def test_light_mode_completes_when_stream_ends_without_body() -> None:
    backend = _Backend()
    stream = _routed_stream(backend, response_processing=ResponseProcessing.LIGHT)
    feed(stream, resp_headers("text/event-stream"))
    assert backend.completions == []
    stream.close()
    assert backend.completions == [Outcome(status=200, disconnected=False)]
    assert backend.filters == []  # light mode never builds a response filter


def test_light_mode_grpc_trailers_complete_the_exchange() -> None:
    """light/tap skip the response headers and body: a gRPC response's trailers are the first
    response message (they used to abort the ext_proc stream, and Envoy reset the call)."""
    backend = _Backend()
    stream = _routed_stream(backend, response_processing=ResponseProcessing.LIGHT)
    trailers = pb.ProcessingRequest(response_trailers=pb.HttpTrailers())
    out = feed(stream, trailers)
    assert [m.WhichOneof("response") for m in out] == ["response_trailers"]
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected is False


def test_grpc_response_passes_chunk_by_chunk() -> None:
    backend = _Backend()
    stream = _routed_stream(backend)
    feed(stream, resp_headers("application/grpc"))
    out = feed(stream, resp_body(b"\x00\x00\x00\x00\x01a", eos=False))
    assert streamed(out, "response_body") == [(b"\x00\x00\x00\x00\x01a", False)]


@pytest.mark.parametrize(
    ("content_type", "chunks"),
    [
        ("application/json", [b"{not json", b" at all"]),
        ("application/json", [b'{"model":"served-name","x":1}', b""]),
        ("text/event-stream", [b'data: {"model":"served-name"}\n\n', b""]),
    ],
    ids=["invalid-json-passes-through", "json-empty-eos-chunk", "sse-empty-eos-chunk"],
)
def test_response_edge_cases(content_type: str, chunks: list[bytes]) -> None:
    backend = _Backend()
    stream = _routed_stream(backend)
    feed(stream, resp_headers(content_type))
    out: list[Any] = []
    for i, c in enumerate(chunks):
        out += feed(stream, resp_body(c, eos=i == len(chunks) - 1))
    body = b"".join(b for b, _ in streamed(out, "response_body"))
    expected = b"".join(chunks).replace(b'"model":"served-name"', b'"model":"food-review"')
    assert body == expected
    assert streamed(out, "response_body")[-1][1] is True
    assert len(backend.completions) == 1
    assert backend.completions[0].usage is None
