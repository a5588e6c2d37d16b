"""The response tap's report over plain HTTP/1.1 on a Unix socket (issue 19, the request half).

Envoy's Lua filter (:mod:`kvroute.gateway.response_tap`) sends one report per response. Over
gRPC (``/kvroute.tap.v1.ResponseTap/Report`` on the ext_proc server) grpc.aio spends about as
much CPU on that one unary call as on the whole ext_proc stream's messages; the same payload as
the body of an HTTP/1.1 ``POST`` to a bare asyncio protocol costs a fraction of it
(``docs/benchmarks.md``, "EPP cost, the request half"). ``kvroute serve`` therefore serves the
report here when the EPP is reached over its private Unix socket (the default): a second socket
beside it in the same 0700 directory, so only this user can report. With TCP (``--grpc-port``,
EPP replicas) or TLS the report keeps the gRPC method.

The protocol is the least Envoy's HTTP/1.1 client sends: ``POST TAP_HTTP_PATH`` with a
``content-length`` body (the report payload of :mod:`kvroute.extproc.tap`), keep-alive
connections. Answers: ``200`` (also for a report that came too late: it is counted and
logged), ``400`` for a payload Lua cannot have sent, and, closing the connection, ``400`` for
a malformed request, ``404``/``405`` for another path or method, ``411`` without a length
(chunked uploads are not needed), ``413`` over :data:`MAX_REPORT_BYTES`, ``431`` for a header
block over :data:`MAX_HEAD_BYTES`. :class:`ReportParser` is the sans-IO part; the asyncio
protocol around it only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from kvroute.extproc.tap import TapReportError

log = logging.getLogger(__name__)

TAP_HTTP_PATH = "/kvroute.tap.v1.ResponseTap/Report"
# The Lua filter sends at most WHOLE_CAP (64 KB) of body plus a short header; generous.
MAX_REPORT_BYTES = 1024 * 1024
MAX_HEAD_BYTES = 16 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
}


class TapHttpError(Exception):
    """A request this endpoint refuses; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def http_response(status: int, message: str = "", *, close: bool = False) -> bytes:
    body = message.encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-length: {len(body)}\r\n"
    if body:
        head += "content-type: text/plain\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


@dataclass(slots=True)
class _Head:
    length: int
    close: bool


class ReportParser:
    """Sans-IO: bytes in, complete report payloads out (``feed``), in order.

    Raises :class:`TapHttpError` at the first request it refuses; what was already returned
    stands, nothing after it is read. ``path`` and ``max_bytes``: the one path served and the
    largest body accepted (the Lua route call of :mod:`kvroute.extproc.lua_route` reuses this
    parser with its own)."""

    def __init__(self, path: str = TAP_HTTP_PATH, max_bytes: int = MAX_REPORT_BYTES) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._head: _Head | None = None
        self.close_after = False  # the last request asked for ``connection: close``

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise TapHttpError(431, "request header block too large")
                    return out
                if end > MAX_HEAD_BYTES:
                    raise TapHttpError(431, "request header block too large")
                self._head = _parse_head(bytes(self._buf[:end]), self._path, self._max_bytes)
                del self._buf[: end + 4]
            if len(self._buf) < self._head.length:
                return out
            n = self._head.length
            out.append(bytes(self._buf[:n]))
            del self._buf[:n]
            self.close_after = self._head.close
            self._head = None
            if self.close_after:
                return out


def _parse_head(raw: bytes, path: str, max_bytes: int) -> _Head:
    try:
        text = raw.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise TapHttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise TapHttpError(400, f"unsupported protocol {version!r}")
    if target.split("?", 1)[0] != path:
        raise TapHttpError(404, f"no such path {target!r}; requests go to {path}")
    if method != "POST":
        raise TapHttpError(405, f"method {method!r}: requests are POSTed")
    length: int | None = None
    close = version == "HTTP/1.0"
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise TapHttpError(400, f"malformed header line {line[:40]!r}")
        key, value = name.strip().lower(), value.strip()
        if key == "content-length":
            if not (value.isascii() and value.isdigit()):
                raise TapHttpError(400, f"bad content-length {value[:20]!r}")
            length = int(value)
        elif key == "transfer-encoding":
            raise TapHttpError(411, "chunked reports are not accepted; send a content-length")
        elif key == "connection":
            close = value.lower() == "close"
    if length is None:
        raise TapHttpError(411, "a report needs a content-length")
    if length > max_bytes:
        raise TapHttpError(413, f"request body of {length} bytes over the {max_bytes} limit")
    return _Head(length=length, close=close)


class _ReportProtocol(asyncio.Protocol):
    def __init__(self, handle: Callable[[bytes], None]) -> None:
        self._handle = handle
        self._parser = ReportParser()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            payloads = self._parser.feed(data)
        except TapHttpError as exc:
            log.warning("response tap (HTTP): refused a request: %d %s", exc.status, exc)
            transport.write(http_response(exc.status, str(exc), close=True))
            transport.close()
            return
        for payload in payloads:
            try:
                self._handle(payload)
                answer = http_response(200)
            except TapReportError as exc:
                log.warning("bad response tap report: %s", exc)
                answer = http_response(400, str(exc))
            except Exception:  # bookkeeping: log it, never leave Envoy without an answer
                log.exception("handling a response tap report failed")
                answer = http_response(200)
            transport.write(answer)
        if self._parser.close_after:
            transport.close()


def report_socket_for(grpc_uds: Path) -> Path:
    """The report socket beside the ext_proc socket (same private directory)."""
    return grpc_uds.with_name(grpc_uds.name + "-tap")


@contextlib.asynccontextmanager
async def serving_reports(path: Path, handle: Callable[[bytes], None]) -> AsyncIterator[None]:
    """Serve reports on the Unix socket ``path`` (replacing a stale socket file) until exit."""
    remove_stale_socket(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _ReportProtocol(handle), str(path))
    os.chmod(path, 0o600)
    try:
        yield
    finally:
        server.close()
        # Envoy may keep its keep-alive connections open; do not wait on them for long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        remove_stale_socket(path)


def remove_stale_socket(path: Path) -> None:
    """A socket file left behind is replaced; anything else at ``path`` is left alone (binding
    then fails with a clear OSError)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
