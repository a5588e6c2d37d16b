"""Per-message cost of the ext_proc transport: grpc.aio vs grpc's sync server (thread pool).

Run: ``python -m tests.bench.extproc_transport`` (prints a table; ``--json PATH`` saves it).

What it measures: the server's CPU (utime + stime of its own process, ``/proc/<pid>/stat``) per
ext_proc message, for a servicer that answers every ``response_body`` message with a
``StreamedBodyResponse`` of the same bytes (the shape of ``full`` response processing with no
kvroute logic at all: this is the floor the transport sets). The client is grpc.aio in this
process; the server runs in a child process, so only the server's CPU is counted. Each stream
is request headers + ``--chunks`` SSE-sized body chunks, ``--concurrency`` streams at a time.
``aio-unary``: the ``tap`` report instead, unary calls (raw bytes), one per "message"; per
message is then per call (``ms/stream`` has no meaning there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_CHUNK = (
    b'data: {"id":"cmpl-1","object":"text_completion","model":"m","choices":[{"text":"t "}]}\n\n'
)


def _answer(req: Any) -> Any:
    kind = req.WhichOneof("request")
    if kind == "response_body":
        common = pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(
                    body=req.response_body.body, end_of_stream=req.response_body.end_of_stream
                )
            )
        )
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse())


class _Aio(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, it: AsyncIterator[Any], ctx: Any) -> AsyncIterator[Any]:
        async for req in it:
            yield _answer(req)


class _Sync(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def Process(self, it: Iterator[Any], ctx: Any) -> Iterator[Any]:
        for req in it:
            yield _answer(req)


async def _report(payload: bytes, ctx: Any) -> bytes:
    return b""


def _serve(kind: str, port_q: Any) -> None:
    if kind in ("aio", "aio-unary"):

        async def main() -> None:
            server = grpc.aio.server()
            pb_grpc.add_ExternalProcessorServicer_to_server(_Aio(), server)
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        "kvroute.tap.v1.ResponseTap",
                        {"Report": grpc.unary_unary_rpc_method_handler(_report)},
                    ),
                )
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            port_q.put(port)
            await server.wait_for_termination()

        asyncio.run(main())
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
        pb_grpc.add_ExternalProcessorServicer_to_server(_Sync(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        port_q.put(port)
        server.wait_for_termination()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive_unary(port: int, calls: int, concurrency: int) -> float:
    payload = b"1\nwhole\n300\n5\n300\n" + _CHUNK * 3
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        report = ch.unary_unary("/kvroute.tap.v1.ResponseTap/Report")
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                await report(payload)

        await one()
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(calls)))
        return time.monotonic() - t0


async def _drive(port: int, streams: int, chunks: int, concurrency: int) -> float:
    headers = pb.ProcessingRequest(response_headers=pb.HttpHeaders())
    bodies = [
        pb.ProcessingRequest(response_body=pb.HttpBody(body=_CHUNK, end_of_stream=i == chunks - 1))
        for i in range(chunks)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ExternalProcessorStub(ch)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                call = stub.Process()
                await call.write(headers)
                await call.read()
                for b in bodies:  # one chunk at a time, as tokens arrive
                    await call.write(b)
                    await call.read()
                await call.done_writing()

        await one()  # warm up
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(streams)))
        return time.monotonic() - t0


def measure(kind: str, streams: int, chunks: int, concurrency: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(kind, q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)
        unary = kind == "aio-unary"
        if unary:  # tap reports: as many calls as the streams have messages (CPU tick = 10 ms)
            asyncio.run(_drive_unary(port, 20, 1))
            before = _cpu_s(proc.pid or 0)
            wall = asyncio.run(_drive_unary(port, streams * (chunks + 1), concurrency))
        else:
            asyncio.run(_drive(port, 2, chunks, 1))  # warm the server
            before = _cpu_s(proc.pid or 0)
            wall = asyncio.run(_drive(port, streams, chunks, concurrency))
        cpu = _cpu_s(proc.pid or 0) - before
    finally:
        proc.kill()
        proc.join()
    messages = streams * (chunks + 1)
    return {
        "server": kind,
        "streams": streams,
        "chunks": chunks,
        "concurrency": concurrency,
        "server_cpu_us_per_message": cpu / messages * 1e6,
        "server_cpu_ms_per_stream": cpu / streams * 1e3,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for _ in range(a.rounds):  # A/B interleaved
        for kind in ("aio", "sync", "aio-unary"):
            rows.append(measure(kind, a.streams, a.chunks, a.concurrency))
            r = rows[-1]
            print(
                f"{r['server']:5} streams={r['streams']} chunks={r['chunks']} "
                f"conc={r['concurrency']}: {r['server_cpu_us_per_message']:.1f} us/message, "
                f"{r['server_cpu_ms_per_stream']:.2f} ms/stream, wall {r['wall_s']:.1f} s"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
