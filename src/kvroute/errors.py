"""Errors that carry a code and an HTTP status; translated to responses only at the edges.

Hierarchy::

    EppError (Internal, 500)
    ├── BadRequestError (BadRequest, 400)
    │   ├── ModelNotFoundError (NotFound, 404)   -- only when configured to reject unknown models
    │   └── PayloadTooLargeError (PayloadTooLarge, 413) -- body over --max-request-body-bytes
    ├── PoolExhaustedError (ResourceExhausted, 429)   -- shed, or no endpoint left after filtering
    ├── ServiceUnavailableError (ServiceUnavailable, 503)
    │   └── NoCandidatesError                     -- empty pool / subset matched nothing
    ├── ModelServerError (ModelServerError, 502)
    └── ConfigError (BadConfiguration, 500)       -- startup only; never on the request path
        └── PluginValidationError

The ext_proc server turns an ``EppError`` into an ``ImmediateResponse`` whose body is
``inference error: <Code> - <message>`` as upstream does; the CLI prints ``message``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    BAD_REQUEST = "BadRequest"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    NOT_FOUND = "NotFound"
    INTERNAL = "Internal"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    MODEL_SERVER_ERROR = "ModelServerError"
    BAD_CONFIGURATION = "BadConfiguration"
    RESOURCE_EXHAUSTED = "ResourceExhausted"


class EppError(Exception):
    """Base error: a stable code, an HTTP status and a human message."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    http_status: ClassVar[int] = 500
    reason_header: ClassVar[str | None] = None  # x-llm-d-request-dropped-reason, if any

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def response_body(self) -> str:
        return f"inference error: {self.code.value} - {self.message}"


class BadRequestError(EppError):
    code = ErrorCode.BAD_REQUEST
    http_status = 400


class ModelNotFoundError(BadRequestError):
    code = ErrorCode.NOT_FOUND
    http_status = 404


class PayloadTooLargeError(BadRequestError):
    """A request body over the EPP's limit: a bad request, answered with HTTP 413.

    Labelled ``PayloadTooLarge`` (issue 20 finding 8: the body used to say ``BadRequest``)."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = 413


class PoolExhaustedError(EppError):
    code = ErrorCode.RESOURCE_EXHAUSTED
    http_status = 429
    # the ``x-llm-d-request-dropped-reason`` value, as upstream sends it when admission sheds or
    # the filters leave no candidate (the body stays upstream's plain-text error)
    reason_header: ClassVar[str | None] = "rejected-saturated"


class ServiceUnavailableError(EppError):
    code = ErrorCode.SERVICE_UNAVAILABLE
    http_status = 503


class NoCandidatesError(ServiceUnavailableError):
    pass


class ModelServerError(EppError):
    code = ErrorCode.MODEL_SERVER_ERROR
    http_status = 502


class ConfigError(EppError):
    """Invalid configuration. ``message`` names the file, document and field path."""

    code = ErrorCode.BAD_CONFIGURATION
    http_status = 500


class PluginValidationError(ConfigError):
    pass
