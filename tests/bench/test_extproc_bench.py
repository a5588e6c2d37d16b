"""What passing responses through the EPP costs in Python: per message and per request.

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_extproc_bench.py

Groups:

* ``stream-request``: the request half of one exchange through the real state machine and the
  real director backend (parse, resolve, schedule over 8 endpoints, rewrite, chunk), 1 KB body;
  in ``full`` and ``tap`` mode from ext_proc messages, and as ``--transport lua``'s route call.
* ``stream-response``: the response half in ``full`` mode for a 256-token SSE stream (one
  ext_proc message per token, model restore + usage scan on each) vs a JSON body, vs ``light``.
* ``grpc-roundtrip``: one ``ProcessingRequest`` -> ``ProcessingResponse`` over a real grpc.aio
  bidi stream on loopback (client and server in this process), i.e. the transport cost each
  streamed response chunk pays on top of the state machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvroute.app import build_director_backend
from kvroute.config.epp_config import default_config_text
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.extproc.backend import RoutingBackend
from kvroute.extproc.lua_route import LuaRouteShell
from kvroute.extproc.server import ExternalProcessor, build_ext_proc_server
from kvroute.extproc.stream import ExtProcStream, StreamOptions
from kvroute.observability.metrics import EppMetrics
from kvroute.plugins.registry import default_registry
from kvroute.settings import EppSettings

pytestmark = pytest.mark.bench

TOKENS = 256


def _headers(pairs: dict[str, str]) -> Any:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    return pb.HttpHeaders(headers=hm)


REQ_HEADERS = pb.ProcessingRequest(
    request_headers=_headers({":method": "POST", ":path": "/v1/completions", "x-request-id": "r"})
)
REQ_BODY = pb.ProcessingRequest(
    request_body=pb.HttpBody(
        body=json.dumps({"model": "base", "prompt": "p" * 1000, "stream": True}).encode(),
        end_of_stream=True,
    )
)
RESP_HEADERS_SSE = pb.ProcessingRequest(
    response_headers=_headers({":status": "200", "content-type": "text/event-stream"})
)
RESP_HEADERS_JSON = pb.ProcessingRequest(
    response_headers=_headers({":status": "200", "content-type": "application/json"})
)


def _sse_chunk(i: int) -> bytes:
    doc = {"id": "c", "object": "text_completion", "model": "base", "choices": [{"text": f"t{i}"}]}
    return f"data: {json.dumps(doc)}\n\n".encode()


SSE_MESSAGES = [
    pb.ProcessingRequest(response_body=pb.HttpBody(body=_sse_chunk(i), end_of_stream=False))
    for i in range(TOKENS)
] + [pb.ProcessingRequest(response_body=pb.HttpBody(body=b"data: [DONE]\n\n", end_of_stream=True))]
JSON_MESSAGE = pb.ProcessingRequest(
    response_body=pb.HttpBody(
        body=json.dumps(
            {
                "model": "base",
                "choices": [{"text": "t " * TOKENS}],
                "usage": {"prompt_tokens": 250, "completion_tokens": TOKENS},
            }
        ).encode(),
        end_of_stream=True,
    )
)


_LOOP = asyncio.new_event_loop()  # one loop for every routed request (as in the server)


@pytest.fixture(scope="module")
def backend() -> RoutingBackend:
    store = Datastore()
    for i in range(8):
        store.upsert_endpoint(f"ep{i}", f"10.0.0.{i}", 8000)
        store.update_metrics(f"ep{i}", EndpointMetrics(waiting_queue_size=i, updated_at=1.0))
    # No scraper runs here, so the metrics are stale: with flow control (on by default) the
    # utilization detector would call the pool saturated and hold every request. This bench
    # measures the stream path; flow control's own cost is tests/bench/test_flowcontrol_bench.py.
    config = default_config_text(default_registry()) + "flowControl: {enabled: false}\n"
    settings = EppSettings(
        endpoints=(("10.0.0.1", 8000),), secure_serving=False, config_text=config
    )
    built = asyncio.run(build_director_backend(settings, store, EppMetrics("bench")))
    return built.backend


def _request_half(backend: RoutingBackend, mode: ResponseProcessing) -> ExtProcStream:
    s = ExtProcStream(backend, StreamOptions(mode))
    s.receive(REQ_HEADERS)
    _LOOP.run_until_complete(s.areceive(REQ_BODY))
    return s


@pytest.mark.benchmark(group="stream-request")
def test_request_half(benchmark: Any, backend: RoutingBackend) -> None:
    def run() -> None:
        s = _request_half(backend, ResponseProcessing.FULL)
        s.close()

    benchmark(run)


@pytest.mark.benchmark(group="stream-request")
def test_request_half_tap(benchmark: Any, backend: RoutingBackend) -> None:
    """The same request in ``tap`` mode over ext_proc messages (``kvroute serve``'s ext_proc)."""

    def run() -> None:
        s = _request_half(backend, ResponseProcessing.TAP)
        s.close()
        s.expire_tap()

    benchmark(run)


LUA_CALL = (
    b"B\n:method:POST\n:path:/v1/completions\nx-request-id:r\n\n" + REQ_BODY.request_body.body
)


@pytest.mark.benchmark(group="stream-request")
def test_request_half_lua(benchmark: Any, backend: RoutingBackend) -> None:
    """The same request as ``--transport lua``'s route call: line format in, line format out
    (``LuaRouteShell.decide``, no HTTP framing)."""
    shell = LuaRouteShell(backend, StreamOptions(ResponseProcessing.TAP), lambda s: s.expire_tap())

    def run() -> None:
        assert _LOOP.run_until_complete(shell.decide(LUA_CALL)).startswith(b"R\n")

    benchmark(run)


@pytest.mark.benchmark(group="stream-response")
def test_response_sse_full(benchmark: Any, backend: RoutingBackend) -> None:
    def setup() -> tuple[tuple[ExtProcStream], dict[str, Any]]:
        return (_request_half(backend, ResponseProcessing.FULL),), {}

    def run(s: ExtProcStream) -> None:
        s.receive(RESP_HEADERS_SSE)
        for m in SSE_MESSAGES:
            s.receive(m)
        s.close()

    benchmark.pedantic(run, setup=setup, rounds=200)
    benchmark.extra_info["messages"] = len(SSE_MESSAGES) + 1


@pytest.mark.benchmark(group="stream-response")
def test_response_json_full(benchmark: Any, backend: RoutingBackend) -> None:
    def setup() -> tuple[tuple[ExtProcStream], dict[str, Any]]:
        return (_request_half(backend, ResponseProcessing.FULL),), {}

    def run(s: ExtProcStream) -> None:
        s.receive(RESP_HEADERS_JSON)
        s.receive(JSON_MESSAGE)
        s.close()

    benchmark.pedantic(run, setup=setup, rounds=2000)


@pytest.mark.benchmark(group="stream-response")
def test_response_light(benchmark: Any, backend: RoutingBackend) -> None:
    def setup() -> tuple[tuple[ExtProcStream], dict[str, Any]]:
        return (_request_half(backend, ResponseProcessing.LIGHT),), {}

    def run(s: ExtProcStream) -> None:
        s.receive(RESP_HEADERS_SSE)
        s.close()

    benchmark.pedantic(run, setup=setup, rounds=2000)


@pytest.fixture(scope="module")
def grpc_loop(backend: RoutingBackend) -> Iterator[tuple[asyncio.AbstractEventLoop, Any, Any]]:
    loop = asyncio.new_event_loop()
    processor = ExternalProcessor(backend, StreamOptions(ResponseProcessing.FULL))

    async def start() -> tuple[Any, Any]:
        server, port = build_ext_proc_server(processor, host="127.0.0.1", port=0, tls=None)
        await server.start()
        return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    server, channel = loop.run_until_complete(start())
    stub = pb_grpc.ExternalProcessorStub(channel)
    yield loop, stub, channel
    loop.run_until_complete(channel.close())
    loop.run_until_complete(server.stop(None))
    loop.close()


@pytest.mark.benchmark(group="grpc-roundtrip")
def test_grpc_response_chunk_roundtrip(
    benchmark: Any, grpc_loop: tuple[asyncio.AbstractEventLoop, Any, Any]
) -> None:
    """Mean time per streamed response chunk, transport + state machine, 256 chunks a call."""
    loop, stub, _ = grpc_loop

    async def one_exchange() -> int:
        call = stub.Process()
        await call.write(REQ_HEADERS)
        await call.write(REQ_BODY)
        await call.read()  # header response
        await call.read()  # body chunk
        await call.write(RESP_HEADERS_SSE)
        await call.read()
        for m in SSE_MESSAGES:
            await call.write(m)
            await call.read()
        await call.done_writing()
        return len(SSE_MESSAGES)

    n = benchmark.pedantic(lambda: loop.run_until_complete(one_exchange()), rounds=20)
    assert n == TOKENS + 1
    benchmark.extra_info["chunks_per_round"] = n
