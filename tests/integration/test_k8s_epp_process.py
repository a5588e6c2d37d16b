"""Leader failover between two real ``kvroute epp`` processes sharing one fake API server.

Each process gets a kubeconfig pointing at the in-process fake API server and runs the full EPP
(``--pool-name pool --ha-enable-leader-election``); the test reads their gRPC health ports the way
a kubelet readiness probe would. Exactly one is ready; after SIGTERM to the leader (which releases
the Lease on the way out) the other becomes ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import running_api
from tests.k8s_apiserver.objects import pod, pool_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_HEALTH = re.compile(r"health on :(\d+)")


class EppProcess:
    def __init__(self, proc: asyncio.subprocess.Process, health_port: int) -> None:
        self.proc = proc
        self.health_port = health_port

    async def status(self, service: str) -> str:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.health_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


@contextlib.asynccontextmanager
async def epp(kubeconfig: Path, name: str) -> AsyncIterator[EppProcess]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name, "NAMESPACE": "default"}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(proxy, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "epp",
        "--pool-name", "pool", "--ha-enable-leader-election",
        "--secure-serving", "false", "--bind", "127.0.0.1",
        "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    drain: asyncio.Task[None] | None = None
    try:
        port = 0
        lines: list[str] = []
        while not port:
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not raw:
                raise AssertionError("epp exited early:\n" + "".join(lines))
            line = raw.decode(errors="replace")
            lines.append(line)
            m = _HEALTH.search(line)
            if m:
                port = int(m.group(1))
        drain = asyncio.create_task(_drain(proc.stdout))
        yield EppProcess(proc, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


async def test_two_epp_processes_fail_over(api: FakeApiServer, tmp_path: Path) -> None:
    api.apply(pool_v1())
    api.apply(pod("a", "127.0.0.1"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
    async with epp(kubeconfig, "epp-a") as a, epp(kubeconfig, "epp-b") as b:
        statuses: dict[str, str] = {}

        async def poll() -> None:
            statuses["a"] = await a.status("readiness")
            statuses["b"] = await b.status("readiness")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while sorted(statuses.values()) != ["NOT_SERVING", "SERVING"]:
            assert loop.time() < deadline, statuses
            await asyncio.sleep(0.2)
            await poll()
        leader, follower = (a, b) if statuses["a"] == "SERVING" else (b, a)
        # upstream's per-service semantics: a follower is alive but not ready
        assert await follower.status("liveness") == "SERVING"
        assert await follower.status("") == "NOT_SERVING"
        assert await leader.status("envoy.service.ext_proc.v3.ExternalProcessor") == "SERVING"
        lease = api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "epp-default-pool.gateway-api-inference-extension.sigs.k8s.io",
        )
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == ("epp-a" if leader is a else "epp-b")

        leader.proc.send_signal(signal.SIGTERM)  # graceful: releases the Lease
        await asyncio.wait_for(leader.proc.wait(), 15)
        assert leader.proc.returncode == 0
        ready: list[str] = []

        async def follower_ready() -> None:
            ready.append(await follower.status("readiness"))

        while not ready or ready[-1] != "SERVING":
            assert loop.time() < deadline + 30, ready
            await asyncio.sleep(0.2)
            await follower_ready()
