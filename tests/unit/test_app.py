"""The composition root: endpoint-source seam, startup errors, ports, and clean teardown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.app import EppApp, StaticEndpoints, endpoint_source_for
from kvroute.config.epp_config import default_config_text
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.plugins.registry import default_registry
from kvroute.settings import EppSettings
from tests.unit.extproc.test_stream import (
    COMPLETION,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
)


def test_endpoint_source_needs_something_to_serve() -> None:
    with pytest.raises(ConfigError, match="no endpoints"):
        endpoint_source_for(EppSettings())


def test_pool_name_with_static_endpoints_selects_the_resources_pool() -> None:
    s = EppSettings(pool_name="pool", endpoints=(("127.0.0.1", 8000),))
    assert isinstance(endpoint_source_for(s), StaticEndpoints)


def _settings(**kw: object) -> EppSettings:
    """The endpoints are never scraped (nothing listens), so their metrics stay stale; flow
    control would hold every request as saturated, and these tests are about the drain."""
    config = default_config_text(default_registry()) + "flowControl: {enabled: false}\n"
    base: dict[str, object] = {
        "config_text": config,
        "grpc_port": 0,
        "grpc_health_port": 0,
        "metrics_port": 0,
        "bind_host": "127.0.0.1",
        "endpoints": (("127.0.0.1", 1), ("127.0.0.1", 2)),
        "secure_serving": False,
    }
    base.update(kw)
    return EppSettings(**base)  # type: ignore[arg-type]


async def test_app_serves_metrics_and_stops_every_task() -> None:
    before = {t for t in asyncio.all_tasks() if not t.done()}
    async with EppApp(_settings()) as app:
        assert len(app.datastore) == 2
        assert app.ports.grpc > 0
        assert app.ports.health > 0
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{app.ports.metrics}/metrics")
        # Nothing listens on ports 1 and 2: never scraped, so not ready (issue 20 finding 8).
        assert 'inference_pool_ready_pods{name="kvroute"} 0.0' in r.text
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before
    assert leftover == set()


async def test_bad_config_text_fails_before_serving() -> None:
    with pytest.raises(ConfigError, match="config-text"):
        async with EppApp(_settings(config_text="kind: NotAConfig\n")):
            pass


async def test_secure_serving_generates_a_certificate() -> None:
    async with EppApp(_settings(secure_serving=True)) as app:
        assert app.tls is not None
        assert app.tls.cert_chain.startswith(b"-----BEGIN CERTIFICATE-----")


class _CrashOnceSource:
    """An endpoint source whose first run crashes (a watch bug, say); the second one works."""

    def __init__(self) -> None:
        self.runs = 0
        self.synced = False

    async def run(self, datastore: Datastore) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("watch exploded")
        datastore.upsert_endpoint("pod-a-rank-0", "127.0.0.1", 8000)
        self.synced = True
        await asyncio.Event().wait()


async def test_a_crashing_endpoint_source_is_restarted_not_fatal() -> None:
    source = _CrashOnceSource()
    async with EppApp(_settings(endpoints=()), endpoint_source=source) as app:
        for _ in range(60):  # the supervisor restarts after about 1 s
            if source.synced:
                break
            await asyncio.sleep(0.05)
        assert source.runs == 2
        assert app.datastore.get("pod-a-rank-0") is not None


# -- drain on shutdown (--drain-timeout) -------------------------------------------------------


async def _open_routed_stream(stub: Any) -> Any:
    """An ext_proc stream that has been routed and now waits for the model server's response."""
    call = stub.Process()
    await call.write(req_headers())
    await call.write(req_body(COMPLETION))
    assert (await call.read()).WhichOneof("response") == "request_headers"
    assert (await call.read()).WhichOneof("response") == "request_body"
    return call


async def _first_reply(call: Any) -> Any:
    await call.write(req_headers())
    return await call.read()


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    return int(resp.status)


async def _begin_shutdown(app: EppApp) -> asyncio.Task[None]:
    """What SIGTERM does in ``kvroute epp``: leave the app's ``async with`` block."""
    task = asyncio.create_task(app.__aexit__(None, None, None))
    async with asyncio.timeout(5):
        while not app.draining:  # noqa: ASYNC110 - the app's flag, set by the drain itself
            await asyncio.sleep(0.01)
    return task


def _inflight(app: EppApp) -> int:
    return sum(e.load.inflight for e in app.datastore.endpoints())


async def test_shutdown_drains_running_streams_and_refuses_new_ones() -> None:
    """Real EppApp, real gRPC: a stream routed before SIGTERM finishes its response during the
    drain; health turns NOT_SERVING (liveness stays SERVING); a new stream is refused."""
    app = EppApp(_settings(drain_timeout_s=30.0))
    await app.__aenter__()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}")
    try:
        stub = pb_grpc.ExternalProcessorStub(channel)
        call = await _open_routed_stream(stub)
        assert _inflight(app) == 1
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await _health(app.ports.health, "") == serving
        shutdown = await _begin_shutdown(app)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _health(app.ports.health, "") == not_serving
        assert await _health(app.ports.health, "readiness") == not_serving
        assert await _health(app.ports.health, "liveness") == serving
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _first_reply(stub.Process())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(1.5)  # longer than the 1 s grace shutdown used to give
        # The running stream is still served: its response goes through the EPP and it ends.
        await call.write(resp_headers())
        assert (await call.read()).WhichOneof("response") == "response_headers"
        await call.write(resp_body(b'{"model":"food-review"}', True))
        assert (await call.read()).WhichOneof("response") == "response_body"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
        started = time.monotonic()
        await asyncio.wait_for(shutdown, 10)
        assert time.monotonic() - started < 10  # done once the stream ended, not after 30 s
        assert _inflight(app) == 0
    finally:
        await channel.close(None)
        await app.__aexit__(None, None, None)


async def test_a_stream_longer_than_the_drain_timeout_is_cut_at_the_timeout() -> None:
    app = EppApp(_settings(drain_timeout_s=2.0))
    await app.__aenter__()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}")
    try:
        stub = pb_grpc.ExternalProcessorStub(channel)
        call = await _open_routed_stream(stub)  # its response never comes
        started = time.monotonic()
        shutdown = await _begin_shutdown(app)
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()  # cut by the server once the drain timeout is over
        cut_after = time.monotonic() - started
        await asyncio.wait_for(shutdown, 10)
        assert 1.9 <= cut_after < 10.0  # not before the drain timeout
        assert _inflight(app) == 0  # the cut stream gave its in-flight count back
    finally:
        await channel.close(None)
        await app.__aexit__(None, None, None)
