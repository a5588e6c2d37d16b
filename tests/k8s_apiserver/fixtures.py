"""Async context helpers shared by the k8s tests: a running fake API server and a real client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from tests.k8s_apiserver.server import FakeApiServer


def client_for(api: FakeApiServer, namespace: str = "default") -> AsyncClient:
    """The real lightkube client, configured by a kubeconfig that points at ``api``.

    ``trust_env=False`` keeps proxy variables of the machine out of loopback traffic.
    """
    return AsyncClient(config=KubeConfig.from_dict(api.kubeconfig(namespace)), trust_env=False)


@contextlib.asynccontextmanager
async def running_api(**kwargs: object) -> AsyncIterator[FakeApiServer]:
    api = FakeApiServer(**kwargs)  # type: ignore[arg-type]
    await api.start()
    try:
        yield api
    finally:
        await api.stop()
