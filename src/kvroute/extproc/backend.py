"""What the ext_proc stream needs from the rest of the EPP, as consumer-defined protocols.

The stream state machine (:mod:`kvroute.extproc.stream`) is pure protocol handling: it decodes
Envoy's messages and encodes the answers. Everything that *decides* (parse the body, schedule,
rewrite the model, restore it on the way back, count usage, keep in-flight counters exact) sits
behind :class:`RoutingBackend`. The composition root plugs in the real director
(:mod:`kvroute.extproc.director_backend`); unit tests plug in a small deterministic backend.
Keeping this seam narrow is what lets the stream be tested message by message without a scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from kvroute.errors import EppError
from kvroute.requestcontrol.hooks import Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingInput:
    """One fully received request, as the stream hands it to the backend.

    ``headers`` are lower-cased and still contain the control headers (the backend may read
    ``x-gateway-inference-objective`` etc. itself); the stream strips them towards the upstream.
    ``subset_hint`` is ``None`` when Envoy sent no subset metadata (all endpoints are candidates)
    and a possibly empty tuple of ``ip:port`` strings when it did.
    """

    body: bytes
    headers: Mapping[str, str]
    path: str
    request_id: str
    subset_hint: tuple[str, ...] | None = None
    objective: str | None = None
    fairness_id: str = "default-flow"
    model_rewrite: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Routed:
    """The backend's answer: where to send the request and what body to send.

    ``endpoints`` are ``host:port`` strings in picker order (first = target, rest = fallbacks).
    ``handle`` is opaque to the stream and given back on completion.
    """

    endpoints: tuple[str, ...]
    body: bytes
    incoming_model: str = ""
    target_model: str = ""
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    handle: object = None
    # Headers set on the forwarded request by PreRequest plugins (``x-prefiller-host-port``).
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Headers added to the client's response (e.g. the opt-in decision summary).
    response_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Dynamic metadata for the proxy, filled by ``complete`` (e.g. request-attribute-reporter);
    # the stream sends it on its last response message (full mode).
    response_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def endpoint_header(self) -> str:
        return ",".join(self.endpoints)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one routed exchange ended; given to :meth:`RoutingBackend.complete` exactly once."""

    status: int | None = None  # upstream :status, None if response headers never arrived
    usage: Usage | None = None
    served_endpoint: str | None = None  # as reported back by the proxy
    response_bytes: int = 0
    disconnected: bool = False  # the stream ended before the response did
    first_chunk_at: float | None = None  # time.monotonic() of the first response body chunk
    # tap mode: the body was read from Envoy's end-of-response report, not chunk by chunk here
    # (a response filter saw it only at the end; first_chunk_at is the report's own timing).
    via_tap: bool = False


class ResponseFilter(Protocol):
    """Transforms the response body on the way back (model name restore) and reads usage.

    ``feed`` returns the bytes to forward now; a chunk-safe implementation may hold back a short
    tail that could be the start of a ``"model"`` field split across chunks, and must return
    everything it held once ``end_of_stream`` is true.
    """

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes: ...

    @property
    def usage(self) -> Usage | None: ...


class RoutingBackend(Protocol):
    """Decisions the stream delegates; see the module docstring."""

    async def route(self, request: RoutingInput) -> Routed:
        """Schedule one request; may wait (flow control). Raises
        :class:`~kvroute.errors.EppError` to reject it; cancellation means the client left."""
        ...

    def route_any(self, request_id: str) -> str | None:
        """``host:port`` of any endpoint for a header-only request; None (or an EppError) when
        there is none."""
        ...

    def response_filter(self, routed: Routed, streaming: bool) -> ResponseFilter:
        """A fresh filter for this response (SSE when ``streaming``, else one JSON document)."""
        ...

    def complete(self, routed: Routed, outcome: Outcome) -> None:
        """Called exactly once per routed request, including on client disconnect."""
        ...

    def rejected(self, error: EppError, request: RoutingInput | None) -> None:
        """Called when a request is answered with an error (for error metrics)."""
        ...


def subset_from_metadata(values: Sequence[Any] | None) -> tuple[str, ...] | None:
    """Normalise the ``x-gateway-destination-endpoint-subset`` metadata list."""
    if values is None:
        return None
    return tuple(str(v) for v in values)
