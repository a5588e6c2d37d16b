"""The per-stream ext_proc state machine of the Endpoint Picker (sans-IO).

One gRPC ``Process`` stream carries one HTTP exchange. :class:`ExtProcStream` is fed the decoded
``ProcessingRequest`` messages in arrival order and returns the ``ProcessingResponse`` messages
to send; it never touches a socket, so every protocol rule is tested message by message.

Protocol (upstream ``pkg/epp/handlers``, ``docs/proposals/004-endpoint-picker-protocol``):

* request headers: read or generate ``x-request-id``, pull the control headers, send nothing
  yet (FULL_DUPLEX_STREAMED lets the header answer wait for the body). A header-only request
  (GET) is routed to any endpoint at once.
* request body: buffer until end of stream, ask the backend to route (``await``: with flow
  control the request may wait for dispatch; :meth:`ExtProcStream.areceive` is the entry point
  that awaits, :meth:`ExtProcStream.receive` stays synchronous for every other message), then
  send the header answer (destination header + ``envoy.lb`` metadata + ``clear_route_cache``
  + content-length) followed by the body in <= 62,000-byte ``StreamedBodyResponse`` chunks.
* response headers/body/trailers: restore the client-facing model name (SSE chunk by chunk,
  JSON buffered until the end), read usage, record completion exactly once.
* any :class:`~kvroute.errors.EppError` becomes an ``ImmediateResponse`` with
  ``inference error: <Code> - <message>``; one that carries a ``dropped_reason`` (flow control)
  is answered with the ``x-llm-d-request-dropped-reason`` header and an OpenAI error JSON
  body; an error class with a ``reason_header`` (a 429 from admission or an empty candidate
  set: ``rejected-saturated``) keeps the plain-text body and carries that header; any other
  exception while routing becomes a 500
  ``Internal`` one (logged with its traceback), so a bug never leaves the client without an
  answer.
* request bodies over ``max_request_body_bytes`` are answered 413. The EPP buffers each body
  whole, so from the moment the limit is known to be exceeded (``content-length`` at the
  headers, else the bytes received) the body is counted and dropped, not kept; the answer goes
  out at the body's end. Answering mid-upload would be sooner but worse: common clients (httpx,
  the openai SDK) write the whole body before reading, and Envoy closes the connection under
  them after an early local reply, so they saw a connection reset instead of the 413 (verified
  with Envoy 1.40 and a 70 MB body).
* response bodies with a ``content-encoding`` (gzip, br, ...) are passed through untouched: the
  model-name restore and usage reading work on plain bytes, on compressed ones a match would be
  corruption. A response filter that cannot be built also degrades to pass-through.

Response processing has three modes, chosen together with the Envoy filter config. ``full`` is
upstream's: every response chunk travels through the EPP. ``light`` pairs with a filter config of
``response_body_mode: NONE`` and ``response_trailer_mode: SEND``: the body never reaches the EPP,
and because trailers are still wanted Envoy keeps the ext_proc stream open until the response
has passed the filter, so the stream's end (:meth:`ExtProcStream.close`) is the completion
signal. (Verified with Envoy 1.40: with trailers SKIP as well, Envoy closes the stream right
after the response headers. Envoy also ignores a per-request ``mode_override`` whenever a
FULL_DUPLEX_STREAMED body mode is configured, so the choice cannot be made per request.)
``light`` cannot restore a rewritten model name nor read usage. ``tap`` (``kvroute serve``'s
default) has light's filter config plus Envoy's Lua response tap
(:mod:`kvroute.gateway.response_tap`): the routing answer names the report id and the rewrite
in dynamic metadata (``kvroute.tap``), Envoy restores the name itself and reports the body's
edges once per response (:meth:`ExtProcStream.tap_report`), which completes the exchange with
usage. A tap stream whose body does come through (an upstream-shaped Envoy) is handled as
``full``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kvroute.config.extproc_options import DEFAULT_MAX_REQUEST_BODY_BYTES, ResponseProcessing
from kvroute.errors import (
    BadRequestError,
    EppError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from kvroute.extproc import messages as msg
from kvroute.extproc.answers import EXT_PROC_ANSWERS, RequestAnswers, RouteAnswer
from kvroute.extproc.backend import (
    Outcome,
    ResponseFilter,
    Routed,
    RoutingBackend,
    RoutingInput,
    subset_from_metadata,
)
from kvroute.extproc.body_budget import BodyBudget
from kvroute.extproc.rejection import rejection
from kvroute.extproc.stream_states import TRANSITIONS, Event, ProtocolViolation, State
from kvroute.extproc.tap import TAP_NAMESPACE, TapReport, tap_metadata
from kvroute.framework.hooks import PLUGIN_OWNED_HEADERS
from kvroute.protocol.paths import is_inference_path
from kvroute.requestcontrol.headers import MODEL_REWRITE, OBJECTIVE, read_aliased

__all__ = [
    "Event",
    "ExtProcStream",
    "ProtocolViolation",
    "ResponseProcessing",
    "State",
    "StreamOptions",
]

log = logging.getLogger(__name__)
_TAP_IDS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class StreamOptions:
    response_processing: ResponseProcessing = ResponseProcessing.FULL
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    # Shared by every stream of one server (``--max-buffered-body-bytes``); None: unbounded.
    body_budget: BodyBudget | None = None
    # How request-path answers are written (ext_proc messages; the Lua route call its own).
    answers: RequestAnswers = EXT_PROC_ANSWERS


def _default_request_id() -> str:
    return str(uuid.uuid4())


class ExtProcStream:
    """State of one ext_proc stream; see the module docstring for the protocol."""

    def __init__(
        self,
        backend: RoutingBackend,
        options: StreamOptions | None = None,
        *,
        request_id_factory: Callable[[], str] = _default_request_id,
    ) -> None:
        self._backend = backend
        self._options = options or StreamOptions()
        self._light = self._options.response_processing is ResponseProcessing.LIGHT
        self._tap = self._options.response_processing is ResponseProcessing.TAP
        # tap mode: the id the Lua filter reports this response's body under (the server keeps
        # a map id -> stream); _tap_sent once the routing answer carried it.
        self.tap_id = f"{next(_TAP_IDS):x}" if self._tap else ""
        self._tap_sent = False
        self.tap_cluster: str | None = None  # Envoy cluster that reaches this EPP (replicas)
        self._tapped = False  # the tap report came: the response ended normally
        self._max_body = self._options.max_request_body_bytes
        self._new_request_id = request_id_factory
        self.state = State.AWAIT_REQUEST_HEADERS
        self.request_id = ""
        self._generated_request_id = False
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._dropped: int | None = None  # bytes of an oversized body being drained
        self._budget = self._options.body_budget
        self._reserved = 0  # bytes of self._body taken from the shared budget
        self._over_budget = False
        self._subset: tuple[str, ...] | None = None
        self.routed: Routed | None = None
        self._filter: ResponseFilter | None = None
        self._streaming = False
        self._skip_response_body = False
        self._status: int | None = None
        self._served: str | None = None
        self._response_buf = bytearray()
        self._response_bytes = 0
        self._first_chunk_at: float | None = None  # TTFT as the EPP sees it (latency predictor)
        self._completed = False
        self._pending: RoutingInput | None = None  # body complete; the backend must route it

    # -- entry points ------------------------------------------------------------------------

    def receive(self, request: Any) -> list[Any]:
        """Feed one ``ProcessingRequest``; returns the ``ProcessingResponse`` messages to send."""
        kind = request.WhichOneof("request")
        if kind is None:
            raise ProtocolViolation("ProcessingRequest without a request field")
        event = Event(kind)
        if event not in TRANSITIONS[self.state]:
            raise ProtocolViolation(f"{event.value} not allowed in state {self.state.value}")
        if self.state is State.REJECTED:
            return []
        self._read_metadata(request)
        handler = _HANDLERS[event]
        return handler(self, getattr(request, kind))

    async def areceive(self, request: Any) -> list[Any]:
        """:meth:`receive`, then, when that completed the request body, await the backend's
        routing and return its answer first (before e.g. the request-trailers answer)."""
        return list(await self.areceive_iter(request))

    async def areceive_iter(self, request: Any) -> Iterator[Any]:
        """:meth:`areceive` as an iterator: the forwarded body's chunk messages are built one
        at a time as the caller (the gRPC shell) sends them, so a 20 MB body is not held twice
        (the body and all its messages) while it goes out (issue 14)."""
        return await self._answer_with_route(self.receive(request))

    async def aroute_whole(self, headers: dict[str, str], body: bytes | None) -> list[Any]:
        """A whole request at once (lower-cased headers, the body or None for a header-only
        request), from a transport that buffers it (the Lua route call): what the request
        headers and body messages would do, without building them."""
        if self.state is not State.AWAIT_REQUEST_HEADERS:
            raise ProtocolViolation(f"a whole request in state {self.state.value}")
        out = self._request_headers(headers, body is None)
        if body is not None:  # the headers left the stream waiting for it (REQUEST_BODY)
            out += self._request_body(body, True)
        return list(await self._answer_with_route(out))

    async def _answer_with_route(self, out: list[Any]) -> Iterator[Any]:
        """``out``, preceded by the routing answer when the request just became routable."""
        rin = self._pending
        if rin is None:
            return iter(out)
        self._pending = None
        return itertools.chain(await self._route_async(rin), out)

    def close(self) -> bool:
        """The stream ended (normally, or the client went away): complete exactly once.

        Returns True when completion waits for the tap report instead (tap mode, response body
        under way): Envoy ends the ext_proc stream when the upstream's end passes ext_proc, and
        the Lua filter, which runs after it on the way back, reports just after that.
        :meth:`tap_report` then completes the exchange, or :meth:`expire_tap` does (as a
        disconnect) when no report comes."""
        self._release_body()
        if self.routed is None or self._completed:
            return False
        if self.awaiting_tap_report:
            return True
        # In light mode the body never comes through here: the stream's end *is* completion
        # (also in tap mode for a header-only request: no report is asked for).
        disconnected = not (
            self._tapped
            or (self._tap and not self._tap_sent)
            or (self._skip_response_body and self.state is State.RESPONSE_BODY)
        )
        self._complete(disconnected=disconnected)
        return False

    @property
    def completed(self) -> bool:
        return self._completed

    @property
    def awaiting_tap_report(self) -> bool:
        """Routed in tap mode; completion comes with the Lua filter's report."""
        return self._tap_sent and not self._tapped and self.state in _AWAITING_TAP

    def expire_tap(self) -> None:
        """No tap report came after the stream ended: the client went away mid-response."""
        self._complete(disconnected=True)

    # -- request path -------------------------------------------------------------------------

    def _read_metadata(self, request: Any) -> None:
        fm = request.metadata_context.filter_metadata
        if msg.SUBSET_HINT_NAMESPACE in fm:
            field = fm[msg.SUBSET_HINT_NAMESPACE].fields.get(msg.DESTINATION_SUBSET_KEY)
            if field is not None:
                self._subset = subset_from_metadata(
                    [v.string_value for v in field.list_value.values]
                )
        if msg.LB_METADATA_NAMESPACE in fm:
            served = fm[msg.LB_METADATA_NAMESPACE].fields.get(msg.DESTINATION_SERVED_HEADER)
            if served is not None and served.string_value:
                self._served = served.string_value

    def _on_request_headers(self, headers: Any) -> list[Any]:
        return self._request_headers(msg.decode_headers(headers), headers.end_of_stream)

    def _request_headers(self, decoded: dict[str, str], end_of_stream: bool) -> list[Any]:
        self._headers = decoded
        rid = self._headers.get(msg.REQUEST_ID_HEADER, "")
        if not rid:
            rid = self._new_request_id()
            self._generated_request_id = True
        self.request_id = rid
        if end_of_stream:
            path = self._headers.get(":path", "")
            if is_inference_path(path):  # finding 1 (issue 20): never routed unvalidated
                return self._reject(
                    BadRequestError(f"{path.split('?', 1)[0]} needs a JSON request body"), None
                )
            return self._route_header_only()
        self.state = State.REQUEST_BODY
        declared = self._headers.get("content-length", "").strip()
        # isascii: str.isdigit() is true for "²", which int() refuses.
        if declared.isascii() and declared.isdigit() and int(declared) > self._max_body:
            self._dropped = 0
        return []

    def _route_header_only(self) -> list[Any]:
        try:
            target = self._backend.route_any(self.request_id)
        except EppError as exc:
            return self._reject(exc, None)
        except Exception as exc:
            return self._reject(_internal(exc), None)
        if target is None:
            return self._reject(EppError("no pods available in datastore"), None)
        self.routed = Routed(endpoints=(target,), body=b"")
        self._skip_response_body = self._light or self._tap
        self.state = State.ROUTED
        return [
            self._options.answers.route(
                RouteAnswer(
                    endpoint_header=target,
                    content_length=None,
                    request_id=self.request_id if self._generated_request_id else None,
                    remove=self._control_headers_present(),
                    metadata={},
                )
            )
        ]

    def _on_request_body(self, body: Any) -> list[Any]:
        return self._request_body(body.body, body.end_of_stream)

    def _request_body(self, chunk: bytes, end_of_stream: bool) -> list[Any]:
        if self._dropped is None and len(self._body) + len(chunk) > self._max_body:
            self._dropped = len(self._body)
            self._release_body()
        if self._dropped is None and self._budget is not None and chunk:
            if self._budget.take(len(chunk)):
                self._reserved += len(chunk)
            else:  # the EPP holds too many bodies at once: drop this one, answer 503
                self._over_budget = True
                self._dropped = len(self._body)
                self._release_body()
        if self._dropped is not None:
            self._dropped += len(chunk)
        else:
            self._body += chunk
        if not end_of_stream:
            return []
        return self._end_of_body()

    def _on_request_trailers(self, _trailers: Any) -> list[Any]:
        if self.state is State.REQUEST_BODY:  # trailers end the body
            return [*self._end_of_body(), msg.trailers_response(request=True)]
        return [msg.trailers_response(request=True)]

    def _end_of_body(self) -> list[Any]:
        if self._over_budget:
            assert self._budget is not None
            return self._reject(
                ServiceUnavailableError(
                    "the EPP is buffering too many request bodies at once (over "
                    f"{self._budget.limit} bytes, EPP flag --max-buffered-body-bytes); retry later"
                ),
                None,
            )
        if self._dropped is not None:
            return self._too_large(self._dropped)
        return self._route()

    def _release_body(self) -> None:
        self._body = bytearray()
        if self._reserved and self._budget is not None:
            self._budget.give(self._reserved)
        self._reserved = 0

    def _route(self) -> list[Any]:
        h = self._headers
        rin = RoutingInput(
            # The buffer itself, not a copy (a second copy of a 20 MB image body; issue 14):
            # _release_body below gives this stream a new one, so the backend owns it alone.
            # A bytearray does all the parsers and body_chunks do with it (decode, find,
            # memoryview slices), hence the cast.
            body=cast(bytes, self._body),
            headers=h,
            path=h.get(":path", "")
            or h.get("x-original-path", "")
            or h.get("x-forwarded-path", ""),
            request_id=self.request_id,
            subset_hint=self._subset,
            objective=read_aliased(h, OBJECTIVE),
            fairness_id=h.get(msg.FAIRNESS_ID_HEADER) or "default-flow",
            model_rewrite=read_aliased(h, MODEL_REWRITE),
        )
        self._release_body()  # the backend owns the bytes now
        self._pending = rin
        return []

    async def _route_async(self, rin: RoutingInput) -> Iterable[Any]:
        try:
            routed = await self._backend.route(rin)
        except EppError as exc:
            return self._reject(exc, rin)
        except (ValueError, UnicodeDecodeError) as exc:  # a parser that let one slip through
            return self._reject(BadRequestError(str(exc)), rin)
        except Exception as exc:
            return self._reject(_internal(exc), rin)
        # The stream lives as long as the generation (minutes); it must not pin the request
        # body in memory all that time once the body is on its way.
        self.routed = dataclasses.replace(routed, body=b"")
        self._skip_response_body = self._light or self._tap
        self.state = State.ROUTED
        metadata = routed.metadata
        if self._tap:
            tap: dict[str, Any] = tap_metadata(
                self.tap_id, routed.incoming_model, routed.target_model
            )
            if self.tap_cluster:
                tap["cluster"] = self.tap_cluster
            if routed.response_headers:  # Envoy skips the response headers: Lua adds these
                tap["headers"] = dict(routed.response_headers)
            metadata = {**metadata, TAP_NAMESPACE: tap}
            self._tap_sent = True
        answers = self._options.answers
        head = answers.route(
            RouteAnswer(
                endpoint_header=routed.endpoint_header,
                content_length=len(routed.body),
                request_id=self.request_id if self._generated_request_id else None,
                remove=self._control_headers_present(routed.upstream_headers),
                metadata=metadata,
                headers=routed.upstream_headers,
            )
        )
        return itertools.chain((head,), answers.body(routed.body))

    def _control_headers_present(self, setting: Mapping[str, str] | None = None) -> list[str]:
        """Control headers to strip; plugin-owned ones (``x-prefiller-host-port``) too, unless
        this answer sets them (a set overwrites the client's copy)."""
        out = [k for k in msg.SYSTEM_OWNED_HEADERS if k in self._headers]
        out += [k for k in PLUGIN_OWNED_HEADERS if k in self._headers and k not in (setting or {})]
        return out

    def _too_large(self, size: int) -> list[Any]:
        return self._reject(
            PayloadTooLargeError(
                f"request body of {size} bytes exceeds the limit of {self._max_body} bytes "
                "(EPP flag --max-request-body-bytes)"
            ),
            None,
        )

    def _reject(self, error: EppError, rin: RoutingInput | None) -> list[Any]:
        self.state = State.REJECTED
        self._release_body()
        try:
            self._backend.rejected(error, rin)
        except Exception:  # error metrics must not cost the client its answer
            log.exception("recording a rejected request failed")
        return [self._options.answers.reject(rejection(error))]

    # -- response path ------------------------------------------------------------------------

    def _on_response_headers(self, headers: Any) -> list[Any]:
        h = msg.decode_headers(headers)
        status = h.get(":status", "")
        self._status = int(status) if status.isascii() and status.isdigit() else None
        self._served = h.get(msg.DESTINATION_SERVED_HEADER) or self._served
        ctype = h.get("content-type", "").lower()
        # gRPC responses pass chunk by chunk too (a server-streaming call must not be held
        # until its trailers); their usage is read frame by frame.
        self._streaming = "text/event-stream" in ctype or ctype.startswith("application/grpc")
        encoding = h.get("content-encoding", "").strip().lower()
        if self.routed is None:  # a local reply ahead of routing: pass it through
            self._release_body()
        elif (not self._skip_response_body or self._tap_sent) and encoding in ("", "identity"):
            try:
                self._filter = self._backend.response_filter(self.routed, self._streaming)
            except Exception:
                log.exception("response filter failed; passing the response through untouched")
        if headers.end_of_stream:
            self._complete(disconnected=False)
        else:
            self.state = State.RESPONSE_BODY
        extra = self.routed.response_headers if self.routed is not None else None
        return [msg.response_headers_response(extra)]

    def _on_response_body(self, body: Any) -> list[Any]:
        if self.state is State.COMPLETE:  # an empty EOS chunk after trailers-less completion
            return []
        chunk: bytes = body.body
        end: bool = body.end_of_stream
        self._response_bytes += len(chunk)
        if chunk and self._first_chunk_at is None:
            self._first_chunk_at = time.monotonic()
        out: list[Any]
        if self._filter is None:  # no filter (light, compressed, failed): pass through untouched
            out = [msg.streamed_body(chunk, end, request=False)]
        elif self._streaming:  # the restored model name may grow a chunk past the limit
            out = msg.body_chunks(self._filter.feed(chunk, end), request=False, end_of_stream=end)
        else:
            self._response_buf += chunk
            if not end:
                return []
            whole = self._filter.feed(bytes(self._response_buf), True)
            self._response_buf = bytearray()
            out = msg.body_chunks(whole, request=False)
        if end:
            self._complete(disconnected=False)
            self._attach_response_metadata(out)
        return out

    def _on_response_trailers(self, _trailers: Any) -> list[Any]:
        if self.state is State.ROUTED and self.awaiting_tap_report:
            # tap mode: the Lua report completes the exchange (it may come after this)
            return [msg.trailers_response(request=False)]
        out: list[Any] = []
        if self._response_buf and self._filter is not None:  # JSON body ended by trailers
            out = msg.body_chunks(self._filter.feed(bytes(self._response_buf), True), request=False)
            self._response_buf = bytearray()
        self._complete(disconnected=False)
        out.append(msg.trailers_response(request=False))
        self._attach_response_metadata(out)
        return out

    def tap_report(self, report: TapReport) -> None:
        """The Lua filter's end-of-response report (tap mode): read usage from what it kept and
        complete the exchange.

        Ignored when the body came through this stream after all (a gateway configured for
        ``full``) or the exchange is already complete."""
        if self.routed is None or self._completed or self._response_bytes:
            return
        self._tapped = True
        if self.state is State.ROUTED:  # no response headers came (tap: Envoy skips them)
            self._status = report.status
            self._streaming = report.sse
            self._served = report.served or self._served
            self.state = State.RESPONSE_BODY
            if report.kind != "skip":
                try:
                    self._filter = self._backend.response_filter(self.routed, self._streaming)
                except Exception:
                    log.exception("response filter failed; usage of %s not read", self.request_id)
        self._response_bytes = report.total_bytes
        if report.first_ms is not None:
            self._first_chunk_at = time.monotonic() - report.first_ms / 1000.0
        body = report.usage_body(self._streaming)
        if self._filter is not None and body is not None:
            try:
                self._filter.feed(body, True)
            except Exception:  # usage is bookkeeping: never fail the response for it
                log.exception("reading usage from the tap report of %s failed", self.request_id)
        # Envoy holds the response's last bytes until this call returns: the exchange is
        # complete now, before the client has its end (as full mode's end-of-stream chunk).
        self._complete(disconnected=False)

    def _attach_response_metadata(self, out: list[Any]) -> None:
        """Put the completion's dynamic metadata (``Routed.response_metadata``) on the last
        message of the response."""
        if out and self.routed is not None and self.routed.response_metadata:
            out[-1].dynamic_metadata.CopyFrom(msg.metadata_struct(self.routed.response_metadata))

    def _complete(self, *, disconnected: bool) -> None:
        self.state = State.COMPLETE if not disconnected else self.state
        if self._completed or self.routed is None:
            return
        self._completed = True
        outcome = Outcome(
            status=self._status,
            usage=self._filter.usage if self._filter is not None else None,
            served_endpoint=self._served,
            response_bytes=self._response_bytes,
            disconnected=disconnected,
            first_chunk_at=self._first_chunk_at,
            via_tap=self._tapped,
        )
        try:
            self._backend.complete(self.routed, outcome)
        except Exception:  # bookkeeping must not cut off the response it is counting
            log.exception("recording the completion of request %s failed", self.request_id)


# tap mode: Envoy skips the response headers, so the stream may still be ROUTED at its end.
_AWAITING_TAP = frozenset({State.ROUTED, State.RESPONSE_BODY})

_HANDLERS: dict[Event, Callable[[ExtProcStream, Any], list[Any]]] = {
    Event.REQUEST_HEADERS: ExtProcStream._on_request_headers,
    Event.REQUEST_BODY: ExtProcStream._on_request_body,
    Event.REQUEST_TRAILERS: ExtProcStream._on_request_trailers,
    Event.RESPONSE_HEADERS: ExtProcStream._on_response_headers,
    Event.RESPONSE_BODY: ExtProcStream._on_response_body,
    Event.RESPONSE_TRAILERS: ExtProcStream._on_response_trailers,
}


def _internal(exc: Exception) -> EppError:
    """A bug or an unexpected failure while routing: logged in full, answered 500."""
    log.error("routing failed unexpectedly", exc_info=exc)
    return EppError(f"internal error while routing the request: {type(exc).__name__}: {exc}")
