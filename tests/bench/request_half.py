"""Issue 19, the request half: what the transport alone costs the EPP per request.

Run: ``python -m tests.bench.request_half [--calls N]`` (prints two small tables).

``stream``: server CPU per ext_proc stream shaped like kvroute's request half under the
generated Envoy config (request headers, the body, Envoy's empty end-of-stream body message in;
the header answer and the body answer out), for an empty servicer: grpc.aio with an
async-generator handler (kvroute's), with ``context.read()``/``write()``, and with channelz
off. ``report``: server CPU per ``tap`` report, the same ~250-byte payload as a grpc.aio unary
call (raw bytes) and as an HTTP/1.1 POST to a bare asyncio protocol (kvroute's
``kvroute.extproc.tap_http`` shape), keep-alive. Servers run in a child process and only
their CPU is counted (``/proc/<pid>/stat``); clients are in this process, 5 at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvroute.extproc.tap_http import TAP_HTTP_PATH, ReportParser, http_response

CONC = 5
PAYLOAD = (
    b"1\nwhole\n200\n-1\n200\n0\n127.0.0.1:1\n52\n"
    + b'{"usage":{"prompt_tokens":1,"completion_tokens":4}}'
    + b"x" * 150
)
_HEAD = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())


def _is_end(req: Any) -> bool:
    return req.WhichOneof("request") == "request_body" and bool(req.request_body.end_of_stream)


class _Gen(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, it: AsyncIterator[Any], ctx: Any) -> AsyncIterator[Any]:
        async for req in it:
            if _is_end(req):
                yield _HEAD
                yield _BODY


class _ReadWrite(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, it: AsyncIterator[Any], ctx: Any) -> None:
        while (req := await ctx.read()) is not grpc.aio.EOF:
            if _is_end(req):
                await ctx.write(_HEAD)
                await ctx.write(_BODY)


class _Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._t = transport
        self._parser = ReportParser()

    def data_received(self, data: bytes) -> None:
        for _ in self._parser.feed(data):
            self._t.write(http_response(200))


def _serve(kind: str, port: int, ready: Any) -> None:
    async def main() -> None:
        if kind == "http":
            await asyncio.get_running_loop().create_server(_Http, "127.0.0.1", port)
        elif kind == "aiohttp":  # the same report on the library the EPP's metrics server uses

            async def handle(request: web.Request) -> web.Response:
                await request.read()
                return web.Response()

            app = web.Application()
            app.router.add_post(TAP_HTTP_PATH, handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        else:
            opts = [("grpc.enable_channelz", 0)] if kind == "gen-no-channelz" else []
            server = grpc.aio.server(options=opts)
            servicer = _ReadWrite() if kind == "read-write" else _Gen()
            pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)

            async def report(payload: bytes, ctx: Any) -> bytes:
                return b""

            handler = grpc.method_handlers_generic_handler(
                "t.T", {"R": grpc.unary_unary_rpc_method_handler(report)}
            )
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
        ready.put(1)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _streams(port: int, n: int) -> None:
    msgs = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"model":"m","prompt":"x"}')),
        pb.ProcessingRequest(request_body=pb.HttpBody(end_of_stream=True)),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ExternalProcessorStub(ch)

        async def worker() -> None:
            for _ in range(n // CONC):
                call = stub.Process()
                for m in msgs:
                    await call.write(m)
                await call.read()
                await call.read()
                await call.done_writing()
                await call.code()

        await asyncio.gather(*(worker() for _ in range(CONC)))


async def _grpc_reports(port: int, n: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/t.T/R")

        async def worker() -> None:
            for _ in range(n // CONC):
                await call(PAYLOAD)

        await asyncio.gather(*(worker() for _ in range(CONC)))


async def _http_reports(port: int, n: int) -> None:
    head = f"POST {TAP_HTTP_PATH} HTTP/1.1\r\nhost: kvroute-epp\r\ncontent-length: {len(PAYLOAD)}"
    request = head.encode() + b"\r\n\r\n" + PAYLOAD

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n // CONC):
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    await asyncio.gather(*(worker() for _ in range(CONC)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: str, client: Callable[[int, int], Any], n: int) -> float:
    """Server CPU (ms) per unit of ``client``'s work."""
    port = _free_port()
    ready: Any = mp.Queue()
    proc = mp.Process(target=_serve, args=(server, port, ready), daemon=True)
    proc.start()
    try:
        ready.get(timeout=30)
        time.sleep(0.3)
        asyncio.run(client(port, CONC * 4))  # warm
        c0 = _cpu(proc.pid or 0)
        asyncio.run(client(port, n))
        return (_cpu(proc.pid or 0) - c0) * 1000 / n
    finally:
        proc.terminate()
        proc.join(10)


def cli(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=1500, help="streams / reports per measurement")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    for r in range(args.rounds):
        for name in ("gen", "read-write", "gen-no-channelz"):
            ms = measure(name, _streams, args.calls)
            print(f"round {r + 1} stream {name:16s} {ms:.3f} ms server CPU per stream", flush=True)
        reports = (("grpc", "gen", _grpc_reports), ("http", "http", _http_reports),
                   ("aiohttp", "aiohttp", _http_reports))  # fmt: skip
        for name, server, client in reports:
            ms = measure(server, client, args.calls)
            print(f"round {r + 1} report {name:15s} {ms * 1000:.0f} us server CPU per report")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
