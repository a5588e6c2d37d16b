"""The answer for a refused request: plain text for EPP errors, the OpenAI error document and
the dropped-reason header for flow control's drops."""

from __future__ import annotations

import json

from kvroute.errors import BadRequestError, PoolExhaustedError
from kvroute.extproc.rejection import rejection
from kvroute.requestcontrol.headers import DROPPED_REASON_HEADER


def test_plain_error_is_text_with_its_code() -> None:
    a = rejection(BadRequestError("no model"))
    assert (a.status, a.content_type, a.headers, a.details) == (400, "text/plain", (), None)
    assert a.body.startswith("inference error: BadRequest - no model")


def test_saturation_names_its_reason_header() -> None:
    a = rejection(PoolExhaustedError("saturated"))
    assert a.status == 429
    assert a.headers == ((DROPPED_REASON_HEADER, "rejected-saturated"),)
    assert a.content_type == "text/plain"


def test_dropped_request_gets_the_openai_error_document() -> None:
    error = PoolExhaustedError("queued past its TTL")
    error.dropped_reason = "rejected-ttl-expired"  # type: ignore[attr-defined]
    a = rejection(error)
    assert (a.status, a.content_type, a.details) == (
        429,
        "application/json",
        "rejected-ttl-expired",
    )
    assert a.headers == ((DROPPED_REASON_HEADER, "rejected-ttl-expired"),)
    doc = json.loads(a.body)["error"]
    assert doc["code"] == "rejected-ttl-expired"
    assert doc["type"] == "rate_limit_exceeded"
    assert "queued past its TTL" in doc["message"]
