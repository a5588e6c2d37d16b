"""The grpc.aio shell over real gRPC on loopback: message flow, cancellation, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.extproc.server import (
    ExternalProcessor,
    ReadinessHealth,
    build_ext_proc_server,
    build_health_server,
)
from kvroute.extproc.stream import StreamOptions
from kvroute.extproc.tls import self_signed
from tests.unit.extproc.test_stream import (
    COMPLETION,
    _Backend,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
)


@contextlib.asynccontextmanager
async def _processor(backend: _Backend, **kw: Any) -> AsyncIterator[Any]:
    processor = ExternalProcessor(backend, StreamOptions())
    server, port = build_ext_proc_server(processor, host="127.0.0.1", port=0, tls=None, **kw)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ExternalProcessorStub(channel)
    finally:
        await channel.close(None)
        await server.stop(None)


async def test_full_exchange_over_grpc() -> None:
    backend = _Backend()
    async with _processor(backend) as stub:
        call = stub.Process()
        await call.write(req_headers())
        await call.write(req_body(COMPLETION))
        head = await call.read()
        body = await call.read()
        assert head.WhichOneof("response") == "request_headers"
        assert json.loads(body.request_body.response.body_mutation.streamed_response.body)
        await call.write(resp_headers())
        assert (await call.read()).WhichOneof("response") == "response_headers"
        await call.write(resp_body(b'{"model":"food-review"}', True))
        assert (await call.read()).WhichOneof("response") == "response_body"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected is False


async def test_cancelled_stream_records_completion_once() -> None:
    backend = _Backend()
    async with _processor(backend) as stub:
        call = stub.Process()
        await call.write(req_headers())
        await call.write(req_body(COMPLETION))
        await call.read()
        await call.read()
        call.cancel()  # the client (Envoy) goes away mid-exchange
        for _ in range(200):
            if backend.completions:
                break
            await asyncio.sleep(0.01)
    assert len(backend.completions) == 1
    assert backend.completions[0].disconnected is True


async def test_protocol_violation_aborts_the_stream() -> None:
    async with _processor(_Backend()) as stub:
        call = stub.Process()
        await call.write(req_body(COMPLETION))  # a request body before any request headers
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("ready", [True, False], ids=["synced", "not-synced"])
@pytest.mark.parametrize(
    "service", ["", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"]
)
async def test_health_any_service_follows_readiness(ready: bool, service: str) -> None:
    server, port = build_health_server(ReadinessHealth(lambda: ready), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service)
            )
    finally:
        await server.stop(None)
    expected = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else (health_pb2.HealthCheckResponse.NOT_SERVING)
    )
    assert resp.status == expected


async def test_health_server_binds_an_ipv6_host() -> None:
    """``--bind ::1``: the bind address is bracketed (``[::1]:0``), so gRPC can parse it."""
    server, port = build_health_server(ReadinessHealth(lambda: True), host="::1", port=0)
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"[::1]:{port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_serving_with_self_signed_certificate() -> None:
    tls = self_signed()
    processor = ExternalProcessor(_Backend(), StreamOptions())
    server, port = build_ext_proc_server(processor, host="127.0.0.1", port=0, tls=tls)
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.cert_chain)
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process()
            await call.write(req_headers(eos=True))
            head = await call.read()
            await call.done_writing()
    finally:
        await server.stop(None)
    assert head.WhichOneof("response") == "request_headers"


async def test_released_tap_stream_ends_once_routed_and_completes_by_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``release_routed`` (issue 20 finding 3): in tap mode the EPP ends the ext_proc stream with
    gRPC OK right after the routing answer (Envoy then needs it no more, and a dying EPP cannot
    cut the exchange); the tap report completes it, and without one it expires, as a disconnect,
    after ``RELEASED_TAP_TTL_S`` (not the 1 s grace of an unreleased stream)."""
    from kvroute.config.extproc_options import ResponseProcessing
    from kvroute.extproc import server as server_mod
    from tests.unit.extproc.test_tap import SSE, _Context, _payload

    monkeypatch.setattr(server_mod, "RELEASED_TAP_TTL_S", 0.3)
    backend = _Backend()
    processor = ExternalProcessor(
        backend, StreamOptions(response_processing=ResponseProcessing.TAP), release_routed=True
    )
    server, port = build_ext_proc_server(processor, host="127.0.0.1", port=0, tls=None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.ExternalProcessorStub(channel)
        for _ in range(2):
            call = stub.Process()
            await call.write(req_headers())
            await call.write(req_body(COMPLETION))
            head = await call.read()
            assert head.WhichOneof("response") == "request_headers"
            await call.read()  # the body
            assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
            assert await call.code() == grpc.StatusCode.OK
        assert processor.released_streams == 2
        assert backend.completions == []  # both wait for their report
        assert len(processor._tapped) == 2
        first = next(iter(processor._tapped))
        await processor.tap_report(_payload(first, "whole", SSE), _Context())  # type: ignore[arg-type]
        assert len(backend.completions) == 1
        assert backend.completions[0].disconnected is False
        for _ in range(200):  # the other one: no report, expired
            if len(backend.completions) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(backend.completions) == 2
        assert backend.completions[1].disconnected is True
        assert processor._tapped == {}
    finally:
        await channel.close(None)
        await server.stop(None)
