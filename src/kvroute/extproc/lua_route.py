"""The routing decision over plain HTTP/1.1, without ext_proc (``kvroute serve --transport lua``).

Issue 19: a grpc.aio ext_proc stream costs the EPP 1.2-1.4 ms of CPU per request even with an
empty servicer (``docs/benchmarks.md``, "EPP cost, the request half"). In this transport Envoy
runs no ext_proc filter at all: its Lua filter (:mod:`kvroute.gateway.request_lua`) buffers the
request body, sends the headers and the body in one HTTP/1.1 ``POST`` (:data:`ROUTE_HTTP_PATH`)
over a private Unix socket beside the EPP's ext_proc socket, and applies the answer itself. The
response half is the ``tap`` response processing as before (the Lua response tap reports each
response to :mod:`kvroute.extproc.tap_http`).

This module is a shell, not a second implementation: each call's headers and body are handed
whole to a fresh :class:`~kvroute.extproc.stream.ExtProcStream` in ``tap`` mode
(``aroute_whole``: what Envoy's request headers and body messages would do), and the stream's
answer (the destination and header mutations, the ``kvroute.tap`` metadata, the forwarded body,
or a refusal) is written by :class:`LuaAnswers` in the line format below, with no protobuf
message built and read back per request. So every rule of the request
path (413, the shared body budget, rejections and their dropped-reason header, control headers
stripped, plugin headers set, model rewrite, flow control) is the stream's, unchanged.

Wire format (all ``\\n``-terminated lines; values never hold a newline: Envoy refuses header
values with one, and the model names are JSON-encoded):

* request body: ``B`` (a body follows) or ``H`` (header-only request), then one ``name:value``
  line per request header (pseudo-headers included, ``:path:/v1/...``), an empty line, then the
  request body bytes.
* answer (``200``): ``R`` (route) or ``X <status>`` (answer the client directly), then lines
  ``h <name>\\t<value>`` (set a request header; for ``X``: a response header), ``d <name>``
  (remove a request header), ``m <key>\\t<value>`` (``kvroute.tap`` dynamic metadata),
  ``r <name>\\t<value>`` (a response header the response tap adds), ``b`` (the body below
  replaces the request body), an empty line, then the body (``X``: the response body).

Completion stays the response tap's report. A client that goes away while its request waits in
flow control makes Envoy reset the stream; the Lua coroutine dies, its call is cancelled and
Envoy closes the connection: :class:`_RouteProtocol` cancels the routing task, which takes the
request out of the queue (the director's cancellation path). A client that leaves mid-response
sends no report; Envoy's access log tells the EPP (:func:`serving_disconnects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import resource
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from kvroute.extproc.answers import RouteAnswer
from kvroute.extproc.backend import RoutingBackend
from kvroute.extproc.messages import DESTINATION_ENDPOINT_HEADER, REQUEST_ID_HEADER
from kvroute.extproc.rejection import Rejection
from kvroute.extproc.stream import ExtProcStream, ProtocolViolation, StreamOptions
from kvroute.extproc.tap import TAP_NAMESPACE
from kvroute.extproc.tap_http import ReportParser as _Parser
from kvroute.extproc.tap_http import TapHttpError, http_response, remove_stale_socket

log = logging.getLogger(__name__)

ROUTE_HTTP_PATH = "/kvroute.route.v1.Route/Decide"
# The stream checks --max-request-body-bytes itself (413); the transport only refuses what is far
# beyond any body Envoy's buffer limit lets through, plus the header block.
_HEAD_ALLOWANCE = 2 * 1024 * 1024
ROUTE_BACKLOG = 4096


class RouteRequestError(ValueError):
    """A call Lua cannot have sent (answered 400)."""


def decode_request(payload: bytes) -> tuple[dict[str, str], bytes | None]:
    """``(headers, body)`` of one call (headers lower-cased, body None for a header-only
    request); raises :class:`RouteRequestError`."""
    head, sep, body = payload.partition(b"\n\n")
    if not sep:
        raise RouteRequestError("no end of the header block (an empty line)")
    lines = head.split(b"\n")
    flag = lines[0]
    if flag not in (b"B", b"H"):
        raise RouteRequestError(f"first line must be B or H, got {flag[:10]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        cut = line.find(b":", 1)  # pseudo-headers start with ':'
        if cut <= 0:
            raise RouteRequestError(f"malformed header line {line[:40]!r}")
        # As the ext_proc stream reads Envoy's raw values: UTF-8, undecodable bytes replaced.
        headers[line[:cut].decode("latin-1").lower()] = line[cut + 1 :].decode("utf-8", "replace")
    return headers, (body if flag == b"B" else None)


def _line_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a value with a line break cannot be sent to Envoy: {value[:40]!r}")
    return value


class _Route(list[str]):
    """The ``R`` answer's lines (the body, when forwarded, follows as bytes)."""


class LuaAnswers:
    """The stream's request-path answers in the line format above (no protobuf per request)."""

    def route(self, answer: RouteAnswer) -> _Route:
        a = answer  # content_length: Lua's setBytes sets it for a replaced body
        lines = _Route(["R", f"h {DESTINATION_ENDPOINT_HEADER}\t{_line_value(a.endpoint_header)}"])
        if a.request_id is not None:
            lines.append(f"h {REQUEST_ID_HEADER}\t{_line_value(a.request_id)}")
        for key, value in (a.headers or {}).items():
            if key != "content-length":
                lines.append(f"h {key}\t{_line_value(value)}")
        lines += [f"d {name}" for name in a.remove]
        for key, v in a.metadata.get(TAP_NAMESPACE, {}).items():
            if isinstance(v, Mapping):  # "headers": response headers the tap adds
                lines += [f"r {name}\t{_line_value(str(hv))}" for name, hv in v.items()]
            else:
                lines.append(f"m {key}\t{_line_value(str(v))}")
        return lines

    def body(self, body: bytes) -> Iterable[Any]:
        return (body,)

    def reject(self, rejection: Rejection) -> bytes:
        a = rejection
        lines = [f"X {a.status}", f"h content-type\t{_line_value(a.content_type)}"]
        lines += [f"h {k}\t{_line_value(v)}" for k, v in a.headers]
        return ("\n".join(lines) + "\n\n").encode() + a.body.encode()


LUA_ANSWERS = LuaAnswers()


def encode_answer(out: list[Any], original_body: bytes | None) -> bytes:
    """What :class:`LuaAnswers` wrote for one request, as the call's answer."""
    if not out:
        raise ValueError("the stream gave no answer for a whole request")
    lines, forwarded = out[0], out[1:]
    if isinstance(lines, bytes):  # a refusal: the whole answer
        return lines
    assert isinstance(lines, _Route)
    text = ("\n".join(lines) + "\n\n").encode()
    if forwarded and forwarded[0] != original_body:
        return text[:-1] + b"b\n\n" + bytes(forwarded[0])
    return text


class LuaRouteShell:
    """Turns one call into a routing decision with a fresh tap-mode stream.

    ``hold(stream)`` is given each routed stream that now waits for its response tap report
    (:meth:`kvroute.extproc.server.ExternalProcessor.hold_for_report`)."""

    def __init__(
        self,
        backend: RoutingBackend,
        options: StreamOptions,
        hold: Callable[[ExtProcStream], None],
    ) -> None:
        self._backend = backend
        self._options = dataclasses.replace(options, answers=LUA_ANSWERS)
        self._hold = hold
        self.active = 0
        self.cancelled = 0  # calls whose connection closed before the answer (client left)

    async def decide(self, payload: bytes) -> bytes:
        headers, body = decode_request(payload)
        stream = ExtProcStream(self._backend, self._options)
        self.active += 1
        try:
            answer = encode_answer(await stream.aroute_whole(headers, body), body)
        except BaseException as exc:
            # Routed, but the answer never reaches Envoy (the client left, or it cannot be
            # encoded): the request is not forwarded, so its exchange ends here, once.
            if stream.close():
                stream.expire_tap()
            if isinstance(exc, asyncio.CancelledError):
                self.cancelled += 1
            if isinstance(exc, ProtocolViolation):
                raise RouteRequestError(str(exc)) from None
            raise
        finally:
            self.active -= 1
        if stream.close():  # completion waits for the response tap's report
            self._hold(stream)
        return answer


class _RouteProtocol(asyncio.Protocol):
    """One Envoy connection: calls answered in order, the running one cancelled on close.

    A call is answered eagerly, inside ``data_received``, when routing does not have to wait
    (no flow-control queueing: nearly every call); only a call that waits continues in a task.
    Issue 19, fifth round: a task per call cost one more event-loop pass (and its zero-timeout
    ``epoll_wait``) per request."""

    def __init__(self, shell: LuaRouteShell, max_bytes: int) -> None:
        self._shell = shell
        self._parser = _Parser(ROUTE_HTTP_PATH, max_bytes)
        self._transport: asyncio.Transport | None = None
        self._queue: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            self._queue += self._parser.feed(data)
        except TapHttpError as exc:
            log.warning("Lua route call refused: %d %s", exc.status, exc)
            transport.write(http_response(exc.status, str(exc), close=True))
            transport.close()
            return
        if self._task is None:
            self._drain()

    def _drain(self) -> None:
        """Answer the queued calls in order; the first that has to wait goes on in a task."""
        transport = self._transport
        assert transport is not None
        while self._queue:
            call = self._answer(self._queue.pop(0))
            # Its own context, as a task would have (tracing sets context variables).
            ctx = contextvars.copy_context()
            try:
                waiting = ctx.run(call.send, None)
            except StopIteration as done:
                if transport.is_closing():
                    return
                transport.write(done.value)
                continue
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._resume(call, waiting), context=ctx)
            return
        if self._parser.close_after:
            transport.close()

    async def _resume(self, call: Coroutine[Any, Any, bytes], waiting: Any) -> None:
        answer = await _continue(call, waiting)
        self._task = None
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        transport.write(answer)
        self._drain()

    async def _answer(self, payload: bytes) -> bytes:
        try:
            return http_response_bytes(200, await self._shell.decide(payload))
        except RouteRequestError as exc:
            log.warning("bad Lua route call: %s", exc)
            return http_response(400, str(exc))
        except Exception:  # the stream answers every routing failure; this is a bug here
            log.exception("Lua route call failed")
            return http_response(500, "kvroute: routing call failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()  # the client left: out of the flow-control queue
        self._queue.clear()


@types.coroutine
def _continue(call: Coroutine[Any, Any, bytes], waiting: Any) -> Generator[Any, Any, bytes]:
    """Drive ``call`` on from its first suspension (it yielded ``waiting``, a future) inside
    the awaiting task: what the task would have done had it started ``call`` itself."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # the task was cancelled: into the call, as await does
            try:
                waiting = call.throw(exc)
            except StopIteration as done:
                return cast(bytes, done.value)
        else:
            try:
                waiting = call.send(sent)
            except StopIteration as done:
                return cast(bytes, done.value)


def http_response_bytes(status: int, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\ncontent-length: {len(body)}\r\n"
        "content-type: application/octet-stream\r\n\r\n"
    ).encode() + body


def disconnect_fifo_for(grpc_uds: Path) -> Path:
    """The FIFO Envoy's access log writes unreported exchanges to (same private directory)."""
    return grpc_uds.with_name(grpc_uds.name + "-ended")


class _EndedProtocol(asyncio.Protocol):
    """Lines of report ids from Envoy's access log: exchanges that ended without a report."""

    def __init__(self, ended: Callable[[str], object]) -> None:
        self._ended = ended
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._buf = (self._buf + data).split(b"\n")
        for line in lines:
            tap_id = line.strip().decode("ascii", "replace")
            if tap_id and tap_id != "-":  # "-": a stream the EPP never routed
                try:
                    self._ended(tap_id)
                except Exception:  # bookkeeping: never stop reading
                    log.exception("recording the end of exchange %s failed", tap_id)


@contextlib.asynccontextmanager
async def serving_disconnects(path: Path, ended: Callable[[str], object]) -> AsyncIterator[None]:
    """Read the FIFO ``path`` (created here, mode 0600) until exit.

    Envoy's Lua filters do not run for a stream the client reset, so a client that leaves
    mid-response sends no tap report, and in this transport no ext_proc stream ends either. The
    generated Envoy config (:func:`kvroute.gateway.request_lua.disconnect_access_log`) therefore
    writes the report id of every stream that ended with a response flag (``DC``: the client
    went away; ``UR``/``UC``: the upstream did) to this FIFO; ``ended(id)`` completes the exchange
    as a disconnect when its report has not come (else it is a no-op)."""
    fd = _open_fifo(path)
    pipe = os.fdopen(fd, "rb", buffering=0)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: _EndedProtocol(ended), pipe)
    try:
        yield
    finally:
        transport.close()
        _remove_fifo(path)


def _open_fifo(path: Path) -> int:
    """A fresh FIFO at ``path`` (a stale socket or FIFO replaced), opened for reading.

    O_RDWR: the read end never sees EOF while no writer is attached (Envoy starts later, and
    a restarted Envoy reopens it)."""
    remove_stale_socket(path)
    _remove_fifo(path)
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def _remove_fifo(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_fifo():
            path.unlink()


def raise_fd_limit() -> int:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit; returns the new soft limit.

    Each call in flight is a connection (HTTP/1.1), so a flow-control queue of thousands holds
    thousands of sockets here (and in Envoy, which is started after this and inherits the
    limit); a common soft default of 1024 would refuse them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def route_socket_for(grpc_uds: Path) -> Path:
    """The route socket beside the ext_proc socket (same private directory)."""
    return grpc_uds.with_name(grpc_uds.name + "-route")


@contextlib.asynccontextmanager
async def serving_routes(
    path: Path, shell: LuaRouteShell, max_body_bytes: int
) -> AsyncIterator[None]:
    """Serve routing calls on the Unix socket ``path`` until exit."""
    remove_stale_socket(path)
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    limit = max_body_bytes + _HEAD_ALLOWANCE
    # HTTP/1.1: Envoy opens one connection per call in flight (a request queued in flow
    # control holds one), so bursts of hundreds arrive at once; asyncio's default backlog of
    # 100 refused some (Envoy then answers the call 503 itself).
    server = await loop.create_unix_server(
        lambda: _RouteProtocol(shell, limit), str(path), backlog=ROUTE_BACKLOG
    )
    os.chmod(path, 0o600)
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        remove_stale_socket(path)
