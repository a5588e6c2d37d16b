"""The director's RequestHeaderProcessor, Screener and Admitter steps (upstream ``Director``).

Kept out of :mod:`kvroute.requestcontrol.director` so it stays small; the director calls these
in upstream's order: header processors (before admission) -> locate candidates -> screeners ->
PrepareData -> admitters -> scheduling.

* header processors: their attributes are merged into ``InferenceRequest.attributes``; the
  ``agent-identity`` attribute becomes the fairness ID when no fairness header is present.
* screeners: results intersected in candidate order; nothing left -> 503
  ``rejected-no-endpoints`` (:class:`ScreenedOutError`).
* admitters: the first denial -> 500 ``Internal - request cannot be admitted: <reason>``
  (:class:`AdmissionDeniedError`).

A plugin that raises is logged and skipped (it neither adds attributes, narrows, nor denies).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

from kvroute.errors import EppError, ServiceUnavailableError
from kvroute.framework.endpoint import Endpoint
from kvroute.framework.hooks import Admitter, RequestHeaderProcessor, ResponseMetadata, Screener
from kvroute.framework.request import InferenceRequest, Usage

log = logging.getLogger(__name__)

AGENT_IDENTITY_ATTRIBUTE = "agent-identity"
SCREENED_OUT_MESSAGE = "screeners eliminated all endpoint candidates"
NOT_ADMITTED_PREFIX = "request cannot be admitted: "


class ScreenedOutError(ServiceUnavailableError):
    """503: the screeners left no candidate (upstream sends ``rejected-no-endpoints``)."""

    reason_header: ClassVar[str | None] = "rejected-no-endpoints"


class AdmissionDeniedError(EppError):
    """500 ``Internal``: an admitter denied the request (upstream's mapping of a denial)."""


def run_header_processors(
    processors: Sequence[RequestHeaderProcessor], request: InferenceRequest
) -> Mapping[str, str]:
    """The attributes all ``processors`` set on ``request`` (later ones override a key)."""
    attributes: dict[str, str] = dict(request.attributes)
    for proc in processors:
        try:
            attributes.update(proc.process_request_headers(request))
        except Exception:
            log.exception("RequestHeaderProcessor %s failed; continuing", proc.typed_name)
    return MappingProxyType(attributes)


def run_screeners(
    screeners: Sequence[Screener], request: InferenceRequest, endpoints: Sequence[Endpoint]
) -> Sequence[Endpoint]:
    """``endpoints`` every screener kept (candidate order); raises :class:`ScreenedOutError`
    when none is left."""
    if not screeners:
        return endpoints
    kept: list[Endpoint] = list(endpoints)
    for screener in screeners:
        try:
            allowed = {e.name for e in screener.screen(request, tuple(endpoints))}
        except Exception:
            log.exception("Screener %s failed; continuing", screener.typed_name)
            continue
        kept = [e for e in kept if e.name in allowed]
    if not kept:
        raise ScreenedOutError(SCREENED_OUT_MESSAGE)
    return kept


def run_admitters(
    admitters: Sequence[Admitter], request: InferenceRequest, endpoints: Sequence[Endpoint]
) -> None:
    """Raise :class:`AdmissionDeniedError` on the first admitter that denies ``request``."""
    for admitter in admitters:
        try:
            reason = admitter.admit_request(request, endpoints)
        except Exception:
            log.exception("Admitter %s failed; admitting", admitter.typed_name)
            continue
        if reason is not None:
            raise AdmissionDeniedError(NOT_ADMITTED_PREFIX + reason)


def collect_response_metadata(
    writers: Sequence[ResponseMetadata],
    request: InferenceRequest,
    usage: Usage | None,
    into: dict[str, dict[str, float]],
) -> None:
    """Merge every writer's namespace -> {key: value} into ``into`` (a later key wins)."""
    for writer in writers:
        try:
            for namespace, values in writer.response_metadata(request, usage).items():
                into.setdefault(namespace, {}).update(values)
        except Exception:
            log.exception("ResponseMetadata %s failed; continuing", writer.typed_name)
