"""Lease membership against the repository's fake API server (tests/k8s_apiserver), with the
real lightkube client: no real cluster can run here. Three replicas find each other; one that
stops deletes its Lease and leaves the others' peer lists; one that stops renewing (killed)
is aged out on each survivor's own clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient

from kvroute.replicasync.membership import LeaseMembership
from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for
from tests.k8s_apiserver.objects import eventually

pytestmark = pytest.mark.timeout(30)
CLIENTS: list[AsyncClient] = []


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _member(api: FakeApiServer, i: int, seen: dict[int, list[str]]) -> LeaseMembership:
    def on_peers(peers: list[str]) -> None:
        seen[i] = peers

    client = client_for(api)
    CLIENTS.append(client)
    return LeaseMembership(
        client,
        namespace="default",
        group="pool-a",
        replica_id=f"epp-{i}",
        endpoint=f"tcp://10.0.0.{i}:5557",
        on_peers=on_peers,
        renew_s=0.1,
        duration_s=1,
    )


async def test_replicas_join_leave_and_age_out(api: FakeApiServer) -> None:
    seen: dict[int, list[str]] = {}
    members = [_member(api, i, seen) for i in range(3)]
    tasks = [asyncio.create_task(m.run()) for m in members]
    try:
        await eventually(lambda: seen.get(0) == ["tcp://10.0.0.1:5557", "tcp://10.0.0.2:5557"])
        await eventually(lambda: seen.get(2) == ["tcp://10.0.0.0:5557", "tcp://10.0.0.1:5557"])
        tasks[1].cancel()  # a clean stop: deletes its Lease
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        await eventually(lambda: seen.get(0) == ["tcp://10.0.0.2:5557"])
        # replica 2 "dies": it stops renewing but its Lease stays; 0 ages it out (1 s)
        members[2].renew = _never  # type: ignore[method-assign]
        await eventually(lambda: seen.get(0) == [], within=5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in CLIENTS:
            await c.close()


async def _never() -> None:
    return None
