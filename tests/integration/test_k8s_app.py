"""The Kubernetes endpoint source inside the real EPP composition root (``EppApp``).

The EPP runs in-process with its real gRPC servers on loopback; the Kubernetes side talks to the
fake API server through the real lightkube client. Checks the wiring: pods become datastore
endpoints, gRPC readiness turns SERVING once synced, and live InferenceModels replace the
director's model resolver (observed through the ``on_resources`` hook the app installs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.app import EppApp
from kvroute.backoff import Backoff
from kvroute.config.resources import ResourceSet
from kvroute.k8s.resources import PoolRef
from kvroute.k8s.source import KubernetesEndpointSource
from kvroute.settings import EppSettings
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for, running_api
from tests.k8s_apiserver.objects import eventually, inference_model, pod, pool_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


async def readiness(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=2
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


async def test_eppapp_runs_kubernetes_discovery(api: FakeApiServer) -> None:
    api.apply(pool_v1(ports=(8000, 8001)))
    api.apply(pod("a", "127.0.0.1"))
    settings = EppSettings(
        pool_name="pool",
        pool_namespace="default",
        secure_serving=False,
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
    )
    source = KubernetesEndpointSource(
        pool=PoolRef("pool", "default"),
        client_factory=lambda: client_for(api),
        controller_options={"backoff": Backoff(initial=0.05, maximum=0.2)},
    )
    async with EppApp(settings, endpoint_source=source) as app:
        hook = source.on_resources
        assert hook is not None  # the app wired live model objects into its resolver
        seen: list[ResourceSet] = []

        def spy(rs: ResourceSet) -> None:
            seen.append(rs)
            hook(rs)

        source.on_resources = spy
        await eventually(lambda: len(app.datastore) == 2)
        assert sorted(e.name for e in app.datastore.endpoints()) == ["a-rank-0", "a-rank-1"]
        assert await readiness(app.ports.health) == "SERVING"
        api.apply(inference_model("m", "llama"))
        await eventually(lambda: bool(seen) and len(seen[-1].models) == 1)
