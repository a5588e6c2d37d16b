"""What a client gets when the EPP refuses a request: status, body and headers, sans-IO.

Shared by the ext_proc stream (an ``ImmediateResponse``) and whatever else answers for it. A
request dropped by flow control or admission (the error carries a ``dropped_reason``) gets
llm-d-router's ``x-llm-d-request-dropped-reason`` header and an OpenAI error document whose
``code`` is that reason; any other error its own text body (``inference error: <Code> -
<message>``) and, where it names one, the reason header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvroute.errors import EppError
from kvroute.requestcontrol.headers import DROPPED_REASON_HEADER

_OPENAI_ERROR_TYPES = {429: "rate_limit_exceeded", 503: "service_unavailable"}


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    body: str
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()
    details: str | None = None  # Envoy's response-code details; None: from the body


def rejection(error: EppError) -> Rejection:
    reason: str | None = getattr(error, "dropped_reason", None)
    if reason is None:
        extra = (
            () if error.reason_header is None else ((DROPPED_REASON_HEADER, error.reason_header),)
        )
        return Rejection(error.http_status, error.response_body(), headers=extra)
    return Rejection(
        error.http_status,
        openai_error_json(error, reason),
        content_type="application/json",
        headers=((DROPPED_REASON_HEADER, reason),),
        details=reason,
    )


def openai_error_json(error: EppError, reason: str) -> str:
    """The OpenAI error document for a dropped request (``code`` = the dropped reason)."""
    return json.dumps(
        {
            "error": {
                "message": error.response_body(),
                "type": _OPENAI_ERROR_TYPES.get(error.http_status, "server_error"),
                "param": None,
                "code": reason,
            }
        }
    )
