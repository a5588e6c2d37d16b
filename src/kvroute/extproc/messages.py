"""Builders for the ext_proc ``ProcessingResponse`` messages the EPP sends (pure, no I/O).

Kept apart from the state machine so the protocol shapes (which field carries what, the 62,000
byte chunk limit, raw header values) are in one place and the state machine reads as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from kvroute.requestcontrol.headers import STRIPPED_REQUEST_HEADERS

# pkg/common/envoy/chunking.go: "Certain envoy implementations set a max limit of 64Kb".
BODY_BYTE_LIMIT = 62_000

DESTINATION_ENDPOINT_HEADER = "x-gateway-destination-endpoint"
DESTINATION_SERVED_HEADER = "x-gateway-destination-endpoint-served"
DESTINATION_SUBSET_KEY = "x-gateway-destination-endpoint-subset"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
REQUEST_ID_HEADER = "x-request-id"
LB_METADATA_NAMESPACE = "envoy.lb"
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"

# Headers the EPP owns: never forwarded from the client (upstream util/request/headers.go):
# both names of every aliased control header, the video and dropped-reason headers, and the
# destination headers.
SYSTEM_OWNED_HEADERS = (
    *STRIPPED_REQUEST_HEADERS,
    DESTINATION_SUBSET_KEY,
    DESTINATION_ENDPOINT_HEADER,
    DESTINATION_SERVED_HEADER,
)


def header_option(key: str, value: str) -> Any:
    """A header set that overwrites (Envoy reads ``raw_value`` when set)."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def decode_headers(http_headers: Any) -> dict[str, str]:
    """ext_proc ``HttpHeaders`` -> lower-cased dict (``raw_value`` preferred, as Envoy sends)."""
    out: dict[str, str] = {}
    for h in http_headers.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out[h.key.lower()] = value
    return out


def metadata_struct(values: Mapping[str, Mapping[str, Any]]) -> Any:
    """Dynamic metadata: namespace -> {key: value} as a ``google.protobuf.Struct``."""
    st = struct_pb2.Struct()
    for namespace, fields in values.items():
        st.fields[namespace].struct_value.update(dict(fields))
    return st


def routing_headers_response(
    *,
    endpoint_header: str,
    content_length: int | None,
    request_id: str | None,
    remove: Iterable[str],
    extra_metadata: Mapping[str, Mapping[str, Any]],
    extra_headers: Mapping[str, str] | None = None,
) -> Any:
    """The deferred request-headers answer that carries the routing decision.

    ``x-gateway-destination-endpoint`` goes both as a header and as ``envoy.lb`` dynamic
    metadata (the ORIGINAL_DST cluster reads the header; metadata-based proxies read the other),
    with ``clear_route_cache`` so the route is recomputed with the new header.
    """
    sets = [header_option(DESTINATION_ENDPOINT_HEADER, endpoint_header)]
    if content_length is not None:
        sets.append(header_option("content-length", str(content_length)))
    if request_id is not None:
        sets.append(header_option(REQUEST_ID_HEADER, request_id))
    for key, value in (extra_headers or {}).items():
        sets.append(header_option(key, value))
    common = pb.CommonResponse(
        clear_route_cache=True,
        header_mutation=pb.HeaderMutation(set_headers=sets, remove_headers=list(remove)),
    )
    metadata: dict[str, dict[str, Any]] = {
        ns: dict(fields) for ns, fields in extra_metadata.items()
    }
    metadata.setdefault(LB_METADATA_NAMESPACE, {})[DESTINATION_ENDPOINT_HEADER] = endpoint_header
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=common),
        dynamic_metadata=metadata_struct(metadata),
    )


def body_chunks(body: bytes, *, request: bool, end_of_stream: bool = True) -> list[Any]:
    """The body as ``StreamedBodyResponse`` messages of at most 62,000 bytes.

    The last one carries ``end_of_stream`` (true by default: a whole body); an empty body is
    still one message.
    """
    return list(iter_body_chunks(body, request=request, end_of_stream=end_of_stream))


def iter_body_chunks(body: bytes, *, request: bool, end_of_stream: bool = True) -> Iterator[Any]:
    """:func:`body_chunks` one message at a time: a caller that sends each before asking for
    the next holds one chunk beside the body, not a second copy of it (issue 14: 20 MB
    images). ``body`` may be the stream's bytearray (handed over without a copy); protobuf
    wants bytes per chunk, sliced from a memoryview."""
    if len(body) <= BODY_BYTE_LIMIT:  # the common case: one message, no slicing
        yield streamed_body(bytes(body), end_of_stream, request=request)
        return
    view = memoryview(body)
    last = (len(body) - 1) // BODY_BYTE_LIMIT * BODY_BYTE_LIMIT
    for i in range(0, len(body), BODY_BYTE_LIMIT):
        chunk = bytes(view[i : i + BODY_BYTE_LIMIT])
        yield streamed_body(chunk, end_of_stream and i == last, request=request)


def streamed_body(chunk: bytes, end_of_stream: bool, *, request: bool) -> Any:
    common = pb.CommonResponse(
        body_mutation=pb.BodyMutation(
            streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream)
        )
    )
    if request:
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))


def response_headers_response(add: Mapping[str, str] | None = None) -> Any:
    common = pb.CommonResponse()
    if add:
        common.header_mutation.set_headers.extend(header_option(k, v) for k, v in add.items())
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))


def trailers_response(*, request: bool) -> Any:
    if request:
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def immediate_response(
    status: int,
    body: str,
    *,
    content_type: str = "text/plain",
    headers: Sequence[tuple[str, str]] = (),
    details: str | None = None,
) -> Any:
    """An error answered by Envoy without contacting any upstream."""
    from envoy.type.v3 import http_status_pb2

    options = [header_option("content-type", content_type)]
    options += [header_option(k, v) for k, v in headers]
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),  # enum values are the HTTP codes
            body=body.encode(),
            details=details or body.split(" - ", 1)[0].replace(" ", "_"),
            headers=pb.HeaderMutation(set_headers=options),
        )
    )
