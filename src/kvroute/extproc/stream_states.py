"""The ext_proc stream's states, the messages that drive it, and which message each state takes.

Kept apart from :mod:`kvroute.extproc.stream` (the state machine itself), which re-exports them.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AWAIT_REQUEST_HEADERS = "await-request-headers"
    REQUEST_BODY = "request-body"
    ROUTED = "routed"  # request answered; waiting for the upstream's response headers
    RESPONSE_BODY = "response-body"
    COMPLETE = "complete"  # response fully seen; completion recorded
    REJECTED = "rejected"  # an ImmediateResponse was sent; nothing else follows


class Event(enum.Enum):
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY = "request_body"
    REQUEST_TRAILERS = "request_trailers"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY = "response_body"
    RESPONSE_TRAILERS = "response_trailers"


# Which events each state accepts; anything else is a protocol violation by the proxy.
# A response before the request was routed is a local reply of a filter ahead of ext_proc (the
# gateway's header limit, Envoy's own errors): passed through untouched, nothing is recorded.
TRANSITIONS: dict[State, frozenset[Event]] = {
    State.AWAIT_REQUEST_HEADERS: frozenset({Event.REQUEST_HEADERS, Event.RESPONSE_HEADERS}),
    State.REQUEST_BODY: frozenset(
        {Event.REQUEST_BODY, Event.REQUEST_TRAILERS, Event.RESPONSE_HEADERS}
    ),
    # RESPONSE_TRAILERS: light/tap skip the response headers and body, so a gRPC response's
    # trailers are the first response message the EPP sees.
    State.ROUTED: frozenset(
        {Event.REQUEST_TRAILERS, Event.RESPONSE_HEADERS, Event.RESPONSE_TRAILERS}
    ),
    State.RESPONSE_BODY: frozenset({Event.RESPONSE_BODY, Event.RESPONSE_TRAILERS}),
    State.COMPLETE: frozenset({Event.RESPONSE_TRAILERS, Event.RESPONSE_BODY}),
    State.REJECTED: frozenset(Event),
}


class ProtocolViolation(Exception):
    """The proxy sent a message the protocol does not allow here (aborts the gRPC stream)."""
