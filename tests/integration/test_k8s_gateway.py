"""Traffic routed by kvroute from Kubernetes discovery: a real Envoy in front, the EPP in pool
mode (``--pool-name``) finding its endpoints through the real lightkube client against the fake
API server, and two small model servers on loopback.

The pool has two target ports (data-parallel ranks) and one pod whose IP is 127.0.0.1, so the
EPP's endpoints ``pod-rank-0``/``pod-rank-1`` are the two servers. The Gateway uses Envoy's
ORIGINAL_DST cluster (no static endpoint list), so every request can only reach a server the EPP
picked. The pod's ``active-ports`` annotation then steers all traffic to one rank.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from kvroute.gateway.gateway import Gateway
from kvroute.k8s.endpoints import ACTIVE_PORTS_ANNOTATION
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import running_api
from tests.k8s_apiserver.objects import eventually, pod, pool_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


async def test_requests_reach_only_discovered_endpoints(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    async with mini_pool([MiniModelServer("rank0"), MiniModelServer("rank1")]) as servers:
        api.apply(pool_v1(ports=[s.port for s in servers]))
        api.apply(pod("vllm-0", "127.0.0.1"))
        settings = EppSettings(
            pool_name="pool",
            pool_namespace="default",
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            secure_serving=False,
            health_checking=True,
        )
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        ):
            await eventually(lambda: len(gw.epp.datastore) == 2)
            body = {"model": "base", "prompt": "hello", "max_tokens": 2}

            async def send(n: int) -> list[str]:
                served = []
                for i in range(n):
                    r = await client.post("/v1/completions", json={**body, "prompt": f"p{i}"})
                    assert r.status_code == 200, (r.headers, r.text)
                    served.append(r.headers["x-sim-server"])
                return served

            # Envoy health-checks the EPP (1 s interval) and marks it healthy only after the
            # pool has synced; until then it answers 503 on its own.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while (await client.post("/v1/completions", json=body)).status_code != 200:
                assert loop.time() < deadline, "Envoy never saw a healthy EPP"
                await asyncio.sleep(0.2)
            for s in servers:
                s.served = 0

            first = await send(12)
            assert set(first) <= {"rank0", "rank1"}
            assert sum(s.served for s in servers) == 12

            # Only rank 1's port stays active: every request must now land there.
            api.apply(
                pod(
                    "vllm-0",
                    "127.0.0.1",
                    annotations={ACTIVE_PORTS_ANNOTATION: str(servers[1].port)},
                )
            )
            await eventually(
                lambda: [e.name for e in gw.epp.datastore.endpoints()] == ["vllm-0-rank-1"]
            )
            before = servers[0].served
            assert set(await send(6)) == {"rank1"}
            assert servers[0].served == before
