"""The pool controller against the fake API server, through the real lightkube client.

Every test runs :class:`~kvroute.k8s.controller.PoolController` as an asyncio task, feeding the
real :class:`~kvroute.datastore.store.Datastore`, while the test plays kubelet and the user by
writing objects straight into the fake API server's store (which notifies open watches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient

from kvroute.backoff import Backoff
from kvroute.datastore.store import Datastore
from kvroute.k8s.controller import PoolController, PoolResources
from kvroute.k8s.endpoints import ACTIVE_PORTS_ANNOTATION, PoolSpec
from kvroute.k8s.resources import GROUP_X, PoolRef
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for, running_api
from tests.k8s_apiserver.objects import eventually, inference_model, pod, pool_v1, pool_v1alpha2
from tests.k8s_apiserver.resource_types import DEFAULT_TYPES, LLM_D_TYPES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = Backoff(initial=0.05, maximum=0.2)


def names(store: Datastore) -> dict[str, str]:
    return {e.name: f"{e.address}:{e.port}" for e in store.endpoints()}


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api() as server:
        yield server


@pytest.fixture
async def client(api: FakeApiServer) -> AsyncIterator[AsyncClient]:
    c = client_for(api)
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def running(ctl: PoolController) -> AsyncIterator[PoolController]:
    task = asyncio.create_task(ctl.run())
    try:
        yield ctl
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def controller(client: AsyncClient, store: Datastore, **kw: object) -> PoolController:
    kw.setdefault("pool", PoolRef("pool", "default"))
    return PoolController(client, store, backoff=FAST, **kw)  # type: ignore[arg-type]


async def test_pods_appear_become_unready_and_are_deleted(
    api: FakeApiServer, client: AsyncClient
) -> None:
    store = Datastore()
    api.apply(pool_v1(ports=(8000, 8001)))
    api.apply(pod("a", "10.0.0.1"))
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        assert names(store) == {"a-rank-0": "10.0.0.1:8000", "a-rank-1": "10.0.0.1:8001"}

        api.apply(pod("b", "10.0.0.2"))  # appears
        await eventually(lambda: "b-rank-1" in names(store))

        api.apply(pod("a", "10.0.0.1", ready=False))  # becomes unready
        await eventually(lambda: "a-rank-0" not in names(store))
        assert names(store) == {"b-rank-0": "10.0.0.2:8000", "b-rank-1": "10.0.0.2:8001"}

        api.apply(pod("b", "10.0.0.2", deleting=True))  # terminating
        await eventually(lambda: not names(store))

        api.apply(pod("c", "10.0.0.3"))
        await eventually(lambda: "c-rank-0" in names(store))
        api.remove("v1", "Pod", "c")  # deleted
        await eventually(lambda: not names(store))

        api.apply(pod("other", "10.0.0.9", labels={"app": "else"}))  # never selected
        api.apply(pod("d", "10.0.0.4", annotations={ACTIVE_PORTS_ANNOTATION: "8001"}))
        await eventually(lambda: bool(names(store)))
        assert names(store) == {"d-rank-1": "10.0.0.4:8001"}


async def test_selector_change_resyncs_pods(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pool_v1(selector={"app": "old"}))
    api.apply(pod("old-1", "10.0.0.1", labels={"app": "old"}))
    api.apply(pod("new-1", "10.0.0.2", labels={"app": "new"}))
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        assert set(names(store)) == {"old-1-rank-0"}
        first = ctl.pod_reflector
        api.apply(pool_v1(selector={"app": "new"}))
        await eventually(lambda: set(names(store)) == {"new-1-rank-0"})
        assert ctl.pod_reflector is not first  # the pod watch restarted with the new selector
        # ...and the new watch is live: a new matching pod shows up.
        api.apply(pod("new-2", "10.0.0.3", labels={"app": "new"}))
        await eventually(lambda: "new-2-rank-0" in names(store))


async def test_target_port_change_renumbers_ranks(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pool_v1(ports=(8000,)))
    api.apply(pod("a", "10.0.0.1"))
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        assert names(store) == {"a-rank-0": "10.0.0.1:8000"}
        api.apply(pool_v1(ports=(9000, 9001, 9002)))
        await eventually(lambda: len(names(store)) == 3)
        assert names(store) == {
            "a-rank-0": "10.0.0.1:9000",
            "a-rank-1": "10.0.0.1:9001",
            "a-rank-2": "10.0.0.1:9002",
        }
        api.remove("inference.networking.k8s.io/v1", "InferencePool", "pool")
        await eventually(lambda: not names(store))  # no pool, no endpoints


async def test_watch_expiry_410_relists_without_losing_changes(
    api: FakeApiServer, client: AsyncClient
) -> None:
    store = Datastore()
    api.apply(pool_v1())
    api.apply(pod("a", "10.0.0.1"))
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        pods = ctl.pod_reflector
        assert pods is not None
        lists_before = pods.lists
        await eventually(lambda: api.watching("pods") == 1)
        api.expire_watches()  # every open watch gets ERROR 410, history is compacted
        api.apply(pod("b", "10.0.0.2"))  # happens while the watch is being re-established
        api.remove("v1", "Pod", "a")
        await eventually(lambda: set(names(store)) == {"b-rank-0"})
        assert pods.gone >= 1
        assert pods.lists > lists_before


async def test_http_410_for_stale_resource_version_relists(client: AsyncClient) -> None:
    """Same as above, with the server answering 410 as an HTTP status (``gone_as_http``)."""
    async with running_api(gone_as_http=True) as api:
        c = client_for(api)
        store = Datastore()
        api.apply(pool_v1())
        api.apply(pod("a", "10.0.0.1"))
        try:
            async with running(controller(c, store)) as ctl:
                await asyncio.wait_for(ctl.synced.wait(), 10)
                await eventually(lambda: api.watching("pods") == 1)
                # The watch ends cleanly; before lightkube resumes from its last resourceVersion,
                # a change happens and history is compacted past it: the resume gets HTTP 410.
                api.end_watches()
                api.apply(pod("b", "10.0.0.2"))
                api.compact()
                await eventually(lambda: set(names(store)) == {"a-rank-0", "b-rank-0"})
                assert ctl.pod_reflector is not None
                assert ctl.pod_reflector.gone >= 1
                assert ctl.pod_reflector.lists >= 2
        finally:
            await c.close()


async def test_api_server_restart_mid_watch(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pool_v1())
    api.apply(pod("a", "10.0.0.1"))
    api.apply(pod("b", "10.0.0.2"))
    upserts: list[str] = []
    removals: list[str] = []
    store.subscribe(
        lambda ev: (upserts if ev.kind.value == "added" else removals).append(ev.endpoint.name)
    )
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        await eventually(lambda: api.watching("pods") == 1)
        await api.stop()  # watches cut, connections refused for a while
        api.apply(pod("c", "10.0.0.3"))  # changes made while the server is down (etcd keeps them)
        api.remove("v1", "Pod", "a")
        await asyncio.sleep(0.3)
        await api.start()
        await eventually(lambda: set(names(store)) == {"b-rank-0", "c-rank-0"})
        assert ctl.pod_reflector is not None
        assert ctl.pod_reflector.failures >= 1
    # b was never removed nor re-added (no duplicate), a removed once, c added once.
    assert upserts.count("b-rank-0") == 1
    assert removals == ["a-rank-0"]
    assert upserts.count("c-rank-0") == 1


async def test_network_blip_reconnects(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pool_v1())
    async with running(controller(client, store)) as ctl:
        await asyncio.wait_for(ctl.synced.wait(), 10)
        for i in range(3):
            api.drop_watches()
            api.apply(pod(f"p{i}", f"10.0.0.{i + 1}"))
        await eventually(lambda: len(names(store)) == 3)


async def test_legacy_v1alpha2_pool(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pool_v1alpha2(port=8080))
    api.apply(pod("a", "10.0.0.1"))
    ctl = controller(client, store, pool=PoolRef("pool", "default", group=GROUP_X))
    async with running(ctl):
        await asyncio.wait_for(ctl.synced.wait(), 10)
        assert names(store) == {"a-rank-0": "10.0.0.1:8080"}


async def test_standalone_mode_without_crds(api: FakeApiServer, client: AsyncClient) -> None:
    store = Datastore()
    api.apply(pod("a", "10.0.0.1", labels={"app": "sa", "tier": "x"}))
    api.apply(pod("b", "10.0.0.2", labels={"app": "sa"}))
    spec = PoolSpec(selector={"app": "sa", "tier": "x"}, target_ports=(8000, 8001))
    ctl = PoolController(client, store, standalone=spec, backoff=FAST)
    async with running(ctl):
        await asyncio.wait_for(ctl.synced.wait(), 10)
        assert names(store) == {"a-rank-0": "10.0.0.1:8000", "a-rank-1": "10.0.0.1:8001"}
    assert not any("inference" in path for _, path in api.request_log)  # no CRD traffic


async def test_models_feed_callback_and_model_name_in_use_status(
    api: FakeApiServer, client: AsyncClient
) -> None:
    seen: list[PoolResources] = []
    api.apply(pool_v1())
    api.apply(inference_model("old", "llama", created="2026-01-01T00:00:00Z"))
    api.apply(inference_model("young", "llama", created="2026-01-02T00:00:00Z"))
    api.apply(inference_model("solo", "qwen", created="2026-01-03T00:00:00Z"))
    api.apply(inference_model("elsewhere", "llama", pool="other-pool"))
    ctl = controller(client, Datastore(), on_resources=seen.append, may_write_status=lambda: True)
    async with running(ctl):

        def reason(name: str) -> str | None:
            obj = api.get("inference.networking.x-k8s.io/v1alpha2", "InferenceModel", name)
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            return next((f"{c['status']}/{c['reason']}" for c in conds), None)

        await eventually(lambda: reason("young") is not None and reason("solo") is not None)
        assert reason("old") == "True/Accepted"
        assert reason("young") == "False/ModelNameInUse"
        assert reason("solo") == "True/Accepted"
        assert reason("elsewhere") is None  # another pool's model is not ours to judge
        assert {m["metadata"]["name"] for m in seen[-1].models} == {"old", "young", "solo"}
        # The server shows a status before the client's patch call returns and counts it.
        await eventually(lambda: ctl.status_writes >= 3)
        writes = ctl.status_writes
        assert writes == 3

        api.remove("inference.networking.x-k8s.io/v1alpha2", "InferenceModel", "old")
        await eventually(lambda: reason("young") == "True/Accepted")
        await asyncio.sleep(0.2)
        assert ctl.status_writes == writes + 1  # only the changed one is rewritten, no loop


async def test_missing_optional_crds_do_not_block_discovery() -> None:
    """A cluster with the v1 pool CRD but no InferenceModel/Rewrite CRDs (upstream v1.x
    dropped InferenceModel): pods are still discovered; the missing kinds are retried quietly."""
    absent = {"InferenceModel", "InferenceModelRewrite"}
    types = [t for t in DEFAULT_TYPES if t.kind not in absent]
    async with running_api(types=types) as api:
        c = client_for(api)
        store = Datastore()
        api.apply(pool_v1())
        api.apply(pod("a", "10.0.0.1"))
        ctl = controller(c, store, on_resources=lambda _r: None)
        try:
            async with running(ctl):
                await asyncio.wait_for(ctl.synced.wait(), 10)
                assert names(store) == {"a-rank-0": "10.0.0.1:8000"}
                await eventually(lambda: ctl.resource_reflectors["models"].missing)
                assert ctl.resource_reflectors["rewrites"].missing
                assert not ctl.resource_reflectors["objectives"].missing
                assert ctl.resource_reflectors["models"].failures == 0  # no warning storm
        finally:
            await c.close()


def _objective(api_version: str, name: str) -> dict[str, object]:
    return {
        "apiVersion": api_version,
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"priority": 1, "poolRef": {"name": "pool"}},
    }


@pytest.mark.parametrize("llm_d_installed", [False, True])
async def test_objectives_come_from_llm_d_ai_when_served_else_from_the_legacy_group(
    llm_d_installed: bool,
) -> None:
    """llm-d-router reconciles the legacy group with a deprecation log; with both groups'
    CRDs installed only llm-d.ai is used."""
    types = [*DEFAULT_TYPES, *(LLM_D_TYPES if llm_d_installed else ())]
    seen: list[PoolResources] = []
    async with running_api(types=types) as api:
        c = client_for(api)
        api.apply(pool_v1())
        api.apply(_objective("inference.networking.x-k8s.io/v1alpha2", "legacy"))
        if llm_d_installed:
            api.apply(_objective("llm-d.ai/v1alpha2", "current"))
        ctl = controller(c, Datastore(), on_resources=seen.append)
        try:
            async with running(ctl):
                want = {"current"} if llm_d_installed else {"legacy"}

                def objectives() -> set[str]:
                    return {o["metadata"]["name"] for o in seen[-1].objectives} if seen else set()

                await eventually(lambda: objectives() == want)
                reflector = ctl.resource_reflectors["objectives@llm-d.ai"]
                await eventually(lambda: reflector.missing != llm_d_installed)
                if llm_d_installed:
                    api.remove("llm-d.ai/v1alpha2", "InferenceObjective", "current")
                    await eventually(lambda: objectives() == set())  # legacy stays ignored
        finally:
            await c.close()
