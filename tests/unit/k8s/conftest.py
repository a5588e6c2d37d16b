"""Fixtures: a fake API server on loopback and the real lightkube client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient

from tests.k8s_apiserver import FakeApiServer
from tests.k8s_apiserver.fixtures import client_for, running_api


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with running_api(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def client(api: FakeApiServer) -> AsyncIterator[AsyncClient]:
    c = client_for(api)
    try:
        yield c
    finally:
        await c.close()
