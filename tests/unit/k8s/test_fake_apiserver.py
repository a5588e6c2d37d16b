"""The fake API server speaks the protocol the real client relies on (it is test infrastructure,
so it gets tests of its own): list/watch resourceVersions, 410, bookmarks, selectors, status
subresource, optimistic concurrency, restart. Raw ``httpx`` checks the wire where lightkube
would hide it."""

from __future__ import annotations

import asyncio
import json

import httpx
import httpx2
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from kvroute.k8s.resources import InferenceModel
from tests.k8s_apiserver import FakeApiServer, merge_patch
from tests.k8s_apiserver.objects import eventually, inference_model, pod
from tests.k8s_apiserver.resource_types import SelectorError, parse_selector

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=a", {"app": "a"}, True),
        ("app==a,tier=x", {"app": "a"}, False),
        ("app!=a", {}, True),
        ("app in (a, b)", {"app": "b"}, True),
        ("app notin (a,b),tier", {"app": "c", "tier": "1"}, True),
        ("!tier", {"tier": "1"}, False),
    ],
    ids=["eq", "and", "neq-missing", "in", "notin-and-exists", "not-exists"],
)
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    reqs = parse_selector(selector)
    assert all(r.matches(labels) for r in reqs) is expected


def test_bad_selector_rejected() -> None:
    with pytest.raises(SelectorError):
        parse_selector("a b c")


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": None, "e": 3}, "d": [1]}) == {
        "a": {"c": 2, "e": 3},
        "d": [1],
    }


async def test_list_filters_and_reports_resource_version(
    api: FakeApiServer, client: AsyncClient
) -> None:
    api.apply(pod("a", labels={"app": "x"}))
    api.apply(pod("b", labels={"app": "y"}))
    api.apply(pod("c", labels={"app": "x"}, namespace="other"))
    items = client.list(Pod, namespace="default", labels={"app": "x"})
    got = [p.metadata.name async for p in items]
    assert got == ["a"]
    assert items.resourceVersion == str(api.resource_version)
    everywhere = [p.metadata.name async for p in client.list(Pod, namespace="*", chunk_size=1)]
    assert sorted(everywhere) == ["a", "b", "c"]  # paged with limit/continue


async def test_watch_from_version_replays_then_streams(
    api: FakeApiServer, client: AsyncClient
) -> None:
    api.apply(pod("a"))
    rv = str(api.resource_version)
    api.apply(pod("b"))  # after rv: replayed
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async for etype, obj in client.watch(Pod, namespace="default", resource_version=rv):
            seen.append((etype, obj.metadata.name))
            if len(seen) == 3:
                return

    task = asyncio.create_task(consume())
    await eventually(lambda: api.watching("pods") == 1)
    api.apply(pod("b", ready=False))
    api.remove("v1", "Pod", "a")
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]


async def test_stale_version_gets_410_error_event(api: FakeApiServer) -> None:
    api.apply(pod("a"))
    api.apply(pod("a", ready=False))
    api.compact()
    async with httpx.AsyncClient(base_url=api.url) as raw:
        r = await raw.get(
            "/api/v1/namespaces/default/pods", params={"watch": "true", "resourceVersion": "1"}
        )
    assert r.status_code == 200
    (event,) = [json.loads(line) for line in r.text.splitlines()]
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"]) == ("Status", 410)


async def test_stale_version_http_410_mode() -> None:
    async with FakeApiServer(gone_as_http=True) as api:
        api.apply(pod("a"))
        api.apply(pod("a", ready=False))
        api.compact()
        async with httpx.AsyncClient(base_url=api.url) as raw:
            r = await raw.get(
                "/api/v1/namespaces/default/pods", params={"watch": "1", "resourceVersion": "1"}
            )
        assert r.status_code == 410
        assert r.json()["reason"] == "Expired"


async def test_bookmarks_and_timeout(api: FakeApiServer) -> None:
    """``allowWatchBookmarks`` yields BOOKMARK events; ``timeoutSeconds`` ends the stream."""
    async with httpx.AsyncClient(base_url=api.url) as raw:
        r = await raw.get(
            "/api/v1/namespaces/default/pods",
            params={
                "watch": "true",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "1",
                "resourceVersion": str(api.resource_version),
            },
        )
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(api.resource_version)


async def test_status_subresource_and_generation(api: FakeApiServer, client: AsyncClient) -> None:
    api.apply(inference_model("m", "llama"))
    patched = await client.patch(
        InferenceModel.Status,
        "m",
        {"status": {"conditions": [{"type": "Accepted"}]}, "spec": {"modelName": "IGNORED"}},
        namespace="default",
    )
    assert patched["status"] == {"conditions": [{"type": "Accepted"}]}
    assert patched["spec"]["modelName"] == "llama"  # status writes never touch spec
    assert patched["metadata"]["generation"] == 1  # and never bump the generation
    obj = await client.get(InferenceModel, "m", namespace="default")
    obj["spec"]["modelName"] = "llama-2"
    obj["status"] = {"conditions": []}
    replaced = await client.replace(obj)
    assert replaced["metadata"]["generation"] == 2
    assert replaced["status"] == {"conditions": [{"type": "Accepted"}]}  # main write keeps status


async def test_optimistic_concurrency_and_errors(api: FakeApiServer, client: AsyncClient) -> None:
    api.apply(pod("a"))
    stale = await client.get(Pod, "a", namespace="default")
    api.apply(pod("a", ready=False))  # someone else writes
    with pytest.raises(ApiError) as exc:
        await client.replace(stale)
    assert exc.value.status.code == 409
    with pytest.raises(ApiError) as exc:
        await client.create(stale)
    assert exc.value.status.reason == "AlreadyExists"
    with pytest.raises(ApiError) as exc:
        await client.get(Pod, "missing", namespace="default")
    assert exc.value.status.code == 404


async def test_restart_keeps_objects_and_port(api: FakeApiServer, client: AsyncClient) -> None:
    api.apply(pod("a"))
    port = api.port
    await api.stop()
    with pytest.raises(httpx2.ConnectError):  # lightkube's own httpx fork
        await client.get(Pod, "a", namespace="default")
    await api.start()
    assert api.port == port
    got = await client.get(Pod, "a", namespace="default")
    assert got.metadata.name == "a"


async def test_discovery_documents(api: FakeApiServer) -> None:
    async with httpx.AsyncClient(base_url=api.url) as raw:
        groups = (await raw.get("/apis")).json()
        resources = (await raw.get("/apis/inference.networking.k8s.io/v1")).json()
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "coordination.k8s.io", "inference.networking.x-k8s.io"} <= names
    assert {"inferencepools", "inferencepools/status"} <= {
        r["name"] for r in resources["resources"]
    }


async def test_put_status_subresource_and_conflict(api: FakeApiServer) -> None:
    stored = api.apply(inference_model("m", "llama"))
    url = "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/default/inferencemodels/m"
    body = {**stored, "spec": {**stored["spec"], "modelName": "IGNORED"}, "status": {"x": 1}}
    async with httpx.AsyncClient(base_url=api.url) as raw:
        ok = await raw.put(f"{url}/status", json=body)
        stale = await raw.put(f"{url}/status", json=body)  # same old resourceVersion
    assert ok.status_code == 200
    assert ok.json()["status"] == {"x": 1}
    assert ok.json()["spec"]["modelName"] == "llama"
    assert stale.status_code == 409
    assert stale.json()["reason"] == "Conflict"
