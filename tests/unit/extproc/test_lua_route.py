"""The Lua transport's EPP side (``kvroute.extproc.lua_route``): wire format, the shell around a
tap-mode :class:`ExtProcStream`, and the real Unix socket and FIFO it serves.

The backend is test_stream's deterministic one (no scheduler); the sockets are real asyncio
Unix sockets and a real FIFO, the client side written by hand as Envoy's HTTP/1.1 client would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.errors import EppError
from kvroute.extproc.backend import Routed, RoutingInput
from kvroute.extproc.lua_route import (
    ROUTE_HTTP_PATH,
    LuaRouteShell,
    RouteRequestError,
    decode_request,
    disconnect_fifo_for,
    raise_fd_limit,
    route_socket_for,
    serving_disconnects,
    serving_routes,
)
from kvroute.extproc.server import ExternalProcessor
from kvroute.extproc.stream import ExtProcStream, StreamOptions
from kvroute.extproc.tap import parse_report
from tests.unit.extproc.test_stream import COMPLETION, REWRITE, _Backend
from tests.unit.extproc.test_tap import SSE, _payload

TAP = StreamOptions(response_processing=ResponseProcessing.TAP, max_request_body_bytes=1000)


def _call(headers: dict[str, str], body: bytes | None) -> bytes:
    lines = ["B" if body is not None else "H", *(f"{k}:{v}" for k, v in headers.items()), ""]
    return "\n".join(lines).encode() + b"\n" + (body or b"")


POST = {":method": "POST", ":path": "/v1/completions", "x-request-id": "r1"}


def _parse(answer: bytes) -> tuple[str, list[str], bytes]:
    head, _, body = answer.partition(b"\n\n")
    first, *lines = head.decode().split("\n")
    return first, lines, body


def _shell(backend: Any) -> tuple[LuaRouteShell, ExternalProcessor]:
    processor = ExternalProcessor(backend, TAP)
    return LuaRouteShell(backend, TAP, processor.hold_for_report), processor


def test_decode_request_reads_flag_headers_and_body() -> None:
    headers, body = decode_request(_call({**POST, "x-a": "b:c\td", "X-U": "\u00e9"}, b"{}\n\nx"))
    assert body == b"{}\n\nx"
    assert headers == {
        ":method": "POST",
        ":path": "/v1/completions",
        "x-request-id": "r1",
        "x-a": "b:c\td",
        "x-u": "\u00e9",  # UTF-8 bytes read back as text, the name lower-cased
    }
    assert decode_request(b"H\n:method:GET\n\n") == ({":method": "GET"}, None)
    assert decode_request(b"H\nx-b:\xff\n\n")[0] == {"x-b": "\ufffd"}  # as ext_proc's raw_value


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"B\n:path:/x", "empty line"),
        (b"Q\n:path:/x\n\n", "first line"),
        (b"B\nnocolon\n\n", "malformed header"),
        (b"B\n:\n\n", "malformed header"),
    ],
)
def test_decode_request_refuses_what_lua_cannot_send(payload: bytes, needle: str) -> None:
    with pytest.raises(RouteRequestError, match=needle):
        decode_request(payload)


def test_routed_answer_sets_destination_strips_control_headers_and_holds_for_report() -> None:
    async def scenario() -> tuple[bytes, LuaRouteShell, ExternalProcessor, _Backend]:
        backend = _Backend()
        shell, processor = _shell(backend)
        answer = await shell.decide(_call({**POST, **REWRITE}, COMPLETION))
        return answer, shell, processor, backend

    answer, shell, processor, backend = asyncio.run(scenario())
    first, lines, body = _parse(answer)
    assert first == "R"
    assert "h x-gateway-destination-endpoint\t10.0.0.1:8000,10.0.0.2:8000" in lines
    assert "d x-gateway-model-name-rewrite" in lines  # the control header does not go upstream
    assert not any(line.startswith("h content-length") for line in lines)  # Lua's setBytes
    meta = dict(line[2:].split("\t", 1) for line in lines if line.startswith("m "))
    assert set(meta) == {"id", "from", "to"}
    assert json.loads(meta["from"]) == "served-name"
    assert json.loads(meta["to"]) == "food-review"
    assert "b" in lines
    assert json.loads(body)["model"] == "served-name"
    assert backend.routed_inputs[0].model_rewrite == "served-name"
    assert backend.completions == []  # completion waits for the tap report
    # The tap report (the response half, unchanged) completes it with usage.
    processor.handle_tap_report(_payload(meta["id"], "whole", SSE))
    assert len(backend.completions) == 1
    outcome = backend.completions[0]
    assert outcome.via_tap
    assert not outcome.disconnected
    assert outcome.usage is not None
    assert outcome.usage.completion_tokens == 2
    assert shell.active == 0


def test_unchanged_body_is_not_sent_back() -> None:
    class Same(_Backend):
        async def route(self, request: RoutingInput) -> Routed:
            return Routed(endpoints=("10.0.0.9:8000",), body=bytes(request.body))

    first, lines, body = _parse(asyncio.run(_shell(Same())[0].decide(_call(POST, COMPLETION))))
    assert first == "R"
    assert "b" not in lines
    assert body == b""
    assert "h x-gateway-destination-endpoint\t10.0.0.9:8000" in lines


class _Dropped(EppError):
    http_status = 429

    def __init__(self) -> None:
        super().__init__("request timed out in queue")
        self.dropped_reason = "rejected-ttl-expired"


@pytest.mark.parametrize(
    ("headers", "body", "error", "status", "needle"),
    [
        (POST, COMPLETION, _Dropped(), 429, "rejected-ttl-expired"),
        (POST, b"{not json", None, 400, "BadRequest"),
        (POST, None, None, 400, "needs a JSON request body"),
        (POST, b'{"model":"m","prompt":"' + b"x" * 2000 + b'"}', None, 413, "exceeds the limit"),
    ],
)
def test_rejections_are_immediate_answers(
    headers: dict[str, str], body: bytes | None, error: EppError | None, status: int, needle: str
) -> None:
    backend = _Backend(error=error)
    first, lines, out = _parse(asyncio.run(_shell(backend)[0].decide(_call(headers, body))))
    assert first == f"X {status}"
    assert needle in out.decode() + "\n".join(lines)
    if error is not None:
        assert "h x-llm-d-request-dropped-reason\trejected-ttl-expired" in lines
        assert "h content-type\tapplication/json" in lines
        assert json.loads(out)["error"]["code"] == "rejected-ttl-expired"
    assert backend.completions == []


def test_an_answer_that_cannot_be_encoded_ends_the_exchange_once() -> None:
    """A plugin header with a line break cannot go to Envoy: the call fails (the Lua filter
    answers 503) and the routed exchange is completed at once, not left in flight."""

    class BadHeader(_Backend):
        async def route(self, request: RoutingInput) -> Routed:
            routed = await super().route(request)
            return dataclasses.replace(routed, upstream_headers={"x-plugin": "a\nb"})

    backend = BadHeader()
    shell, _ = _shell(backend)
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(shell.decide(_call(POST, COMPLETION)))
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected
    assert shell.active == 0


def test_header_only_request_is_routed_and_complete_at_once() -> None:
    backend = _Backend()
    call = _call({":method": "GET", ":path": "/v1/models"}, None)
    first, lines, _ = _parse(asyncio.run(_shell(backend)[0].decide(call)))
    assert first == "R"
    assert "h x-gateway-destination-endpoint\t10.0.0.1:8000" in lines
    assert not any(line.startswith("m id") for line in lines)  # no report asked for
    assert len(backend.completions) == 1
    assert not backend.completions[0].disconnected


def test_report_disconnect_completes_a_held_exchange_once() -> None:
    async def scenario() -> tuple[_Backend, list[bool]]:
        backend = _Backend()
        shell, processor = _shell(backend)
        _, lines, _ = _parse(await shell.decide(_call(POST, COMPLETION)))
        tap_id = next(line[5:] for line in lines if line.startswith("m id\t"))
        got = [processor.report_disconnect(tap_id), processor.report_disconnect(tap_id)]
        processor.handle_tap_report(_payload(tap_id, "whole", SSE))  # too late: ignored
        return backend, got

    backend, got = asyncio.run(scenario())
    assert got == [True, False]
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected
    assert backend.completions[0].usage is None


def _http(body: bytes, path: str = ROUTE_HTTP_PATH) -> bytes:
    return f"POST {path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head.split(b"\r\n")[0], await reader.readexactly(length)


class _Blocking(_Backend):
    """Routing waits (a request queued in flow control) until cancelled or released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled = 0

    async def route(self, request: RoutingInput) -> Routed:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().route(request)


def test_socket_answers_in_order_and_cancels_routing_when_envoy_closes(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[tuple[bytes, bytes]], _Blocking, LuaRouteShell]:
        path = route_socket_for(tmp_path / "epp.sock")
        assert path.name == "epp.sock-route"
        backend = _Blocking()
        shell, _ = _shell(backend)
        answers = []
        async with serving_routes(path, shell, 1000):
            assert path.stat().st_mode & 0o777 == 0o600
            reader, writer = await asyncio.open_unix_connection(str(path))
            backend.release.set()
            writer.write(_http(_call(POST, COMPLETION)) + _http(b"Q\n\n"))
            answers.append(await _read_answer(reader))
            answers.append(await _read_answer(reader))
            writer.write(_http(b"", path="/other"))
            answers.append(((await reader.read()).split(b"\r\n")[0], b""))  # refused, closed
            writer.close()
            # A queued request whose client left: Envoy closes the call's connection.
            backend.release.clear()
            backend.entered.clear()
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(_http(_call(POST, COMPLETION)))
            await asyncio.wait_for(backend.entered.wait(), 5)
            writer.close()
            for _ in range(100):
                if backend.cancelled:
                    break
                await asyncio.sleep(0.01)
        assert not path.exists()
        return answers, backend, shell

    answers, backend, shell = asyncio.run(scenario())
    assert answers[0][0] == b"HTTP/1.1 200 OK"
    assert answers[0][1].startswith(b"R\n")
    assert answers[1][0].startswith(b"HTTP/1.1 400")
    assert b"first line" in answers[1][1]
    assert answers[2][0] == b"HTTP/1.1 404 Not Found"
    assert backend.cancelled == 1
    assert shell.cancelled == 1
    assert shell.active == 0
    assert len(backend.routed_inputs) == 1  # the cancelled one never got past the wait


def test_fifo_lines_report_unreported_exchanges(tmp_path: Path) -> None:
    ended: list[str] = []

    async def scenario() -> None:
        path = disconnect_fifo_for(tmp_path / "epp.sock")
        async with serving_disconnects(path, ended.append):
            assert path.stat().st_mode & 0o777 == 0o600
            fd = os.open(path, os.O_WRONLY)  # as Envoy's access log does
            os.write(fd, b"1a\n-\n")
            os.write(fd, b"2")  # a line split across writes
            os.write(fd, b"b\n")
            os.close(fd)
            os.write(fd2 := os.open(path, os.O_WRONLY), b"3c\n")  # a reopened writer
            os.close(fd2)
            for _ in range(100):
                if len(ended) == 3:
                    break
                await asyncio.sleep(0.01)
        assert not path.exists()

    asyncio.run(scenario())
    assert ended == ["1a", "2b", "3c"]


def test_stream_tap_report_path_is_the_same_as_ext_procs() -> None:
    """The held stream is an ordinary tap-mode ExtProcStream (its report parser and rules)."""
    backend = _Backend()

    async def scenario() -> ExtProcStream:
        held: list[ExtProcStream] = []
        shell = LuaRouteShell(backend, TAP, held.append)
        await shell.decide(_call(POST, COMPLETION))
        return held[0]

    stream = asyncio.run(scenario())
    assert stream.awaiting_tap_report
    stream.tap_report(parse_report(_payload(stream.tap_id, "whole", SSE)))
    assert stream.completed
    assert len(backend.completions) == 1


def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        got = raise_fd_limit()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got == hard or (hard == resource.RLIM_INFINITY and got >= 512)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _proto_view(out: list[Any]) -> tuple[str, set[str], bytes]:
    """An ext_proc answer read the way the old shell read it, in the Lua line vocabulary."""
    for r in out:
        if r.WhichOneof("response") == "immediate_response":
            imm = r.immediate_response
            sets = {
                f"h {o.header.key}\t{o.header.raw_value.decode()}" for o in imm.headers.set_headers
            }
            return f"X {imm.status.code}", sets, bytes(imm.body)
    lines: set[str] = set()
    body = b""
    for r in out:
        kind = r.WhichOneof("response")
        if kind == "request_headers":
            mutation = r.request_headers.response.header_mutation
            lines |= {
                f"h {o.header.key}\t{o.header.raw_value.decode()}"
                for o in mutation.set_headers
                if o.header.key != "content-length"
            }
            lines |= {f"d {name}" for name in mutation.remove_headers}
            tap = r.dynamic_metadata.fields["kvroute.tap"].struct_value.fields
            lines |= {f"m {k}\t{v.string_value}" for k, v in tap.items() if k != "id"}
        elif kind == "request_body":
            body += r.request_body.response.body_mutation.streamed_response.body
    return "R", lines, body


def _ext_proc_messages(headers: dict[str, str], body: bytes | None) -> list[Any]:
    """What Envoy's ext_proc filter sends for this request."""
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    out = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=body is None))
    ]
    if body is not None:
        out.append(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    return out


NO_ID = {":method": "POST", ":path": "/v1/completions", "x-gateway-destination-endpoint": "evil"}


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({**POST, **REWRITE}, COMPLETION, None),
        (NO_ID, COMPLETION, None),  # a client-set destination is stripped; an id is generated
        (POST, COMPLETION, _Dropped()),
        (POST, b"{not json", None),
        (POST, None, None),
        (POST, b'{"model":"m","prompt":"' + b"x" * 2000 + b'"}', None),
    ],
)
def test_lua_answers_say_what_the_ext_proc_messages_say(
    headers: dict[str, str], body: bytes | None, error: EppError | None
) -> None:
    """The same request through ext_proc messages and through the route call: the same
    destination, header sets and removals, tap metadata (the report id aside), forwarded body
    and refusals (status, headers, body). Generated request ids differ (uuid4) and are compared
    by presence."""

    async def both() -> tuple[list[Any], bytes]:
        proto = ExtProcStream(_Backend(error=error), TAP)
        out: list[Any] = []
        for m in _ext_proc_messages(headers, body):
            out += await proto.areceive(m)
        return out, await _shell(_Backend(error=error))[0].decide(_call(headers, body))

    out, answer = asyncio.run(both())
    first, lines, lua_body = _parse(answer)
    kind, expected, proto_body = _proto_view(out)
    assert first == kind

    def comparable(xs: set[str]) -> set[str]:
        return {x if not x.startswith("h x-request-id\t") else "h x-request-id" for x in xs}

    got = {line for line in lines if not line.startswith("m id\t") and line != "b"}
    assert comparable(got) == comparable(expected)
    if kind == "R":
        assert ("b" in lines) == (proto_body != body)
        assert (lua_body if "b" in lines else body) == proto_body
    else:
        assert lua_body == proto_body


def test_a_reported_exchange_is_not_kept_until_its_wait_runs_out() -> None:
    """Issue 19, fifth round: each held exchange used to be a one-hour loop timer holding its
    stream, so every request (its body too) stayed in memory an hour after its report. Now a
    report forgets the exchange at once, and the loop keeps one timer for all the waits."""
    import gc
    import weakref

    async def scenario() -> tuple[list[weakref.ref[ExtProcStream]], ExternalProcessor, int]:
        backend = _Backend()
        shell, processor = _shell(backend)
        refs: list[weakref.ref[ExtProcStream]] = []
        for _ in range(5):
            _, lines, _ = _parse(await shell.decide(_call(POST, COMPLETION)))
            tap_id = next(line[5:] for line in lines if line.startswith("m id\t"))
            refs.append(weakref.ref(processor._tapped[tap_id]))
            processor.handle_tap_report(_payload(tap_id, "whole", SSE))
        gc.collect()
        timers = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        return refs, processor, timers

    refs, processor, timers = asyncio.run(scenario())
    assert [r() for r in refs] == [None] * 5
    assert processor.waiting_reports == 0
    assert timers <= 1


def test_held_exchanges_without_a_report_expire_as_disconnects_in_order() -> None:
    async def scenario() -> _Backend:
        backend = _Backend()
        _, processor = _shell(backend)
        for ttl in (0.05, 0.02):  # the second, shorter wait re-arms the one timer earlier
            stream = ExtProcStream(backend, TAP)
            await stream.aroute_whole(POST, COMPLETION)
            assert stream.close()
            processor.hold_for_report(stream, ttl)
        assert processor.waiting_reports == 2
        for _ in range(100):
            if len(backend.completions) == 2:
                break
            await asyncio.sleep(0.01)
        assert processor.waiting_reports == 0
        return backend

    backend = asyncio.run(scenario())
    assert [c.disconnected for c in backend.completions] == [True, True]


def test_a_call_that_waits_goes_on_in_a_task_and_the_next_call_keeps_its_place(
    tmp_path: Path,
) -> None:
    """Calls are answered eagerly in ``data_received`` unless routing waits (flow control);
    one that waits continues in a task, and a call pipelined behind it on the same connection
    is answered after it, not before."""

    async def scenario() -> tuple[list[tuple[bytes, bytes]], _Blocking]:
        path = route_socket_for(tmp_path / "epp.sock")
        backend = _Blocking()
        shell, _ = _shell(backend)
        async with serving_routes(path, shell, 1000):
            reader, writer = await asyncio.open_unix_connection(str(path))
            other = dict(POST, **{"x-request-id": "r2"})
            writer.write(_http(_call(POST, COMPLETION)) + _http(_call(other, COMPLETION)))
            await asyncio.wait_for(backend.entered.wait(), 5)
            await asyncio.sleep(0.05)
            early = len(reader._buffer)  # type: ignore[attr-defined]
            backend.release.set()
            answers = [await _read_answer(reader), await _read_answer(reader)]
            writer.close()
        assert early == 0  # nothing answered while the first call waited
        return answers, backend

    answers, backend = asyncio.run(scenario())
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert [r.headers.get("x-request-id") for r in backend.routed_inputs] == ["r1", "r2"]
    assert all(a[1].startswith(b"R\n") for a in answers)
