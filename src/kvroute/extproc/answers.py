"""How the stream core's request-path answers are written: ext_proc messages, or another form.

:class:`~kvroute.extproc.stream.ExtProcStream` decides *what* to answer (route to this endpoint
with these header mutations, forward this body, or refuse with this status); a
:class:`RequestAnswers` writes it. The default writes Envoy's ext_proc ``ProcessingResponse``
messages; ``kvroute serve --transport lua`` (:mod:`kvroute.extproc.lua_route`) writes its line
format directly, with no protobuf built and read back per request (issue 19).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvroute.extproc import messages as msg
from kvroute.extproc.rejection import Rejection


@dataclass(frozen=True, slots=True)
class RouteAnswer:
    """The routing decision as the request-headers answer carries it."""

    endpoint_header: str  # x-gateway-destination-endpoint (and envoy.lb metadata)
    content_length: int | None  # of the forwarded body; None: header-only request
    request_id: str | None  # set on the request when the EPP generated it
    remove: Sequence[str]  # request headers to strip
    metadata: Mapping[str, Mapping[str, Any]]  # dynamic metadata by namespace
    headers: Mapping[str, str] | None = None  # request headers to set


class RequestAnswers(Protocol):
    def route(self, answer: RouteAnswer) -> Any:
        """The routing decision (the request-headers answer)."""
        ...

    def body(self, body: bytes) -> Iterable[Any]:
        """The request body to forward (whole), after :meth:`route`."""
        ...

    def reject(self, rejection: Rejection) -> Any:
        """Answer the client directly; nothing is forwarded."""
        ...


class ExtProcAnswers:
    """Envoy's ext_proc messages (:mod:`kvroute.extproc.messages`)."""

    def route(self, answer: RouteAnswer) -> Any:
        a = answer
        return msg.routing_headers_response(
            endpoint_header=a.endpoint_header,
            content_length=a.content_length,
            request_id=a.request_id,
            remove=a.remove,
            extra_metadata=a.metadata,
            extra_headers=a.headers,
        )

    def body(self, body: bytes) -> Iterable[Any]:
        return msg.iter_body_chunks(body, request=True)

    def reject(self, rejection: Rejection) -> Any:
        a = rejection
        return msg.immediate_response(
            a.status, a.body, content_type=a.content_type, headers=a.headers, details=a.details
        )


EXT_PROC_ANSWERS = ExtProcAnswers()
