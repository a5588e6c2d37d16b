"""The HTTP/1.1 report endpoint of the response tap: the sans-IO parser and the socket shell."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvroute.extproc.tap import TapReportError
from kvroute.extproc.tap_http import (
    MAX_HEAD_BYTES,
    MAX_REPORT_BYTES,
    TAP_HTTP_PATH,
    ReportParser,
    TapHttpError,
    http_response,
    report_socket_for,
    serving_reports,
)


def _request(body: bytes, *, extra: str = "", path: str = TAP_HTTP_PATH) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: kvroute-epp\r\ncontent-length: {len(body)}\r\n{extra}"
    return head.encode() + b"\r\n" + body


def test_pipelined_requests_split_anywhere_come_out_whole_and_in_order() -> None:
    wire = _request(b"first\nreport") + _request(b"") + _request(b"x" * 70_000)
    for cut in (1, 7, len(wire) // 2, len(wire) - 1):
        parser = ReportParser()
        out = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert out == [b"first\nreport", b"", b"x" * 70_000]
        assert not parser.close_after
    byte_by_byte = ReportParser()
    got = [p for i in range(len(wire)) for p in byte_by_byte.feed(wire[i : i + 1])]
    assert got == [b"first\nreport", b"", b"x" * 70_000]


def test_connection_close_stops_reading() -> None:
    parser = ReportParser()
    assert parser.feed(_request(b"a", extra="Connection: close\r\n") + _request(b"b")) == [b"a"]
    assert parser.close_after


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GET " + TAP_HTTP_PATH.encode() + b" HTTP/1.1\r\ncontent-length: 0\r\n\r\n", 405),
        (_request(b"x", path="/other"), 404),
        (b"POST " + TAP_HTTP_PATH.encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n", 411),
        (_request(b"", extra="transfer-encoding: chunked\r\n"), 411),
        (_request(b"", extra="").replace(b"length: 0", b"length: -3"), 400),
        (_request(b"").replace(b"length: 0", f"length: {MAX_REPORT_BYTES + 1}".encode()), 413),
        (b"nonsense\r\n\r\n", 400),
        (b"POST " + TAP_HTTP_PATH.encode() + b" SPDY/3\r\n\r\n", 400),
        (_request(b"", extra="no colon here\r\n"), 400),
        (b"POST / HTTP/1.1\r\n" + b"x" * (MAX_HEAD_BYTES + 1), 431),
    ],
)
def test_refused_requests_carry_a_status(wire: bytes, status: int) -> None:
    with pytest.raises(TapHttpError) as err:
        ReportParser().feed(wire)
    assert err.value.status == status
    assert str(err.value)


def test_response_bytes() -> None:
    assert http_response(200) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    bad = http_response(400, "nope", close=True)
    assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n")
    assert b"connection: close\r\n" in bad
    assert bad.endswith(b"\r\n\r\nnope")


def test_socket_answers_each_report_and_refuses_bad_ones(tmp_path: Path) -> None:
    """Real Unix socket, asyncio streams on the client side."""
    seen: list[bytes] = []

    def handle(payload: bytes) -> None:
        if payload == b"bad":
            raise TapReportError("tap report: expected 8 header lines")
        seen.append(payload)

    async def scenario() -> list[bytes]:
        path = report_socket_for(tmp_path / "epp.sock")
        assert path.name == "epp.sock-tap"
        path.touch()  # a stale file where the socket goes is not a socket: refused
        with pytest.raises(OSError):
            async with serving_reports(path, handle):
                pass
        path.unlink()
        answers = []
        async with serving_reports(path, handle):
            assert path.stat().st_mode & 0o777 == 0o600
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(_request(b"one") + _request(b"bad") + _request(b"two"))
            for _ in range(3):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                answers.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
            writer.write(b"DELETE / HTTP/1.1\r\n\r\n")
            refused = await reader.read()  # answered, then closed
            answers.append(refused.split(b"\r\n")[0])
            writer.close()
        assert not path.exists()
        return answers

    answers = asyncio.run(scenario())
    assert seen == [b"one", b"two"]
    assert answers[0] == b"HTTP/1.1 200 OK "
    assert answers[1].startswith(b"HTTP/1.1 400 Bad Request tap report:")
    assert answers[2] == b"HTTP/1.1 200 OK "
    assert answers[3] == b"HTTP/1.1 404 Not Found"
