"""Active-passive HA: two EPP endpoint sources (two replicas' Kubernetes halves) on one pool.

Each replica is a :class:`~kvroute.k8s.source.KubernetesEndpointSource` running as its own
asyncio task with its own lightkube client and its own datastore, against one fake API server
(see ``test_k8s_epp_process.py`` for whole `kvroute epp` processes). Both keep their endpoints in
sync; exactly one is ready; when the leader stops, the other takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kvroute.backoff import Backoff
from kvroute.config.resources import ResourceSet
from kvroute.datastore.store import Datastore
from kvroute.k8s.controller import PoolResources
from kvroute.k8s.resources import PoolRef, lease_name
from kvroute.k8s.source import KubernetesEndpointSource, LeaseTimings, to_resource_set
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for, running_api
from tests.k8s_apiserver.objects import eventually, inference_model, pod, pool_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST_LEASE = LeaseTimings(lease_duration=2.0, renew_deadline=1.5, retry_period=0.1)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


def replica(
    api: FakeApiServer, name: str, sets: list[ResourceSet] | None = None
) -> KubernetesEndpointSource:
    return KubernetesEndpointSource(
        pool=PoolRef("pool", "default"),
        leader_election=True,
        identity=name,
        client_factory=lambda: client_for(api),
        lease=FAST_LEASE,
        on_resources=sets.append if sets is not None else None,
        controller_options={"backoff": Backoff(initial=0.05, maximum=0.2)},
    )


@contextlib.asynccontextmanager
async def running(
    src: KubernetesEndpointSource, store: Datastore
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(src.run(store))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_leader_failover_between_two_replicas(api: FakeApiServer) -> None:
    api.apply(pool_v1())
    api.apply(pod("a", "10.0.0.1"))
    api.apply(inference_model("m", "llama"))
    a, b = replica(api, "epp-a"), replica(api, "epp-b")
    stores = {"epp-a": Datastore(), "epp-b": Datastore()}
    tasks = {s.identity: asyncio.create_task(s.run(stores[s.identity])) for s in (a, b)}
    try:
        await eventually(lambda: a.synced or b.synced)
        await asyncio.sleep(0.3)  # several election rounds
        leader, follower = (a, b) if a.synced else (b, a)
        assert not follower.synced  # exactly one replica is ready
        assert follower.serving("liveness")  # but the follower is alive
        assert not follower.serving("readiness")
        assert not follower.serving("envoy.service.ext_proc.v3.ExternalProcessor")
        assert leader.serving("")
        assert leader.serving("readiness")
        # the follower's datastore is warm all the same
        assert {e.name for e in stores["epp-a"].endpoints()} == {"a-rank-0"}
        assert {e.name for e in stores["epp-b"].endpoints()} == {"a-rank-0"}
        lease = api.get("coordination.k8s.io/v1", "Lease", lease_name(PoolRef("pool")))
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == leader.identity

        def model_status() -> object:
            obj = api.get("inference.networking.x-k8s.io/v1alpha2", "InferenceModel", "m")
            return (obj or {}).get("status")

        await eventually(lambda: bool(model_status()))
        assert follower.controller is not None
        assert follower.controller.status_writes == 0  # only the leader writes status

        # graceful stop of the leader: the lease is released, the follower takes over at once
        tasks[leader.identity].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[leader.identity]
        await eventually(lambda: follower.synced, within=5)
        lease = api.get("coordination.k8s.io/v1", "Lease", lease_name(PoolRef("pool")))
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == follower.identity
        # the new leader keeps following the pool
        api.apply(pod("b", "10.0.0.2"))
        await eventually(lambda: len(stores[follower.identity].endpoints()) == 2)
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_resources_reach_the_callback_as_a_resource_set(api: FakeApiServer) -> None:
    api.apply(pool_v1())
    api.apply(inference_model("m", "llama"))
    api.apply(inference_model("other", "qwen", pool="not-ours"))
    sets: list[ResourceSet] = []
    src = replica(api, "solo", sets)
    async with running(src, Datastore()):
        await eventually(lambda: bool(sets) and len(sets[-1].models) == 1)
    (model,) = sets[-1].models
    assert (model.metadata.name, model.spec.model_name) == ("m", "llama")


def test_invalid_objects_are_skipped_not_fatal() -> None:
    good = inference_model("ok", "llama")
    bad = inference_model("bad", "")  # modelName must be non-empty
    got = to_resource_set(PoolResources(models=(good, bad)))
    assert [m.metadata.name for m in got.models] == ["ok"]
