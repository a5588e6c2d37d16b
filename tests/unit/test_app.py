"""The composition root: endpoint-source seam, startup errors, ports, and clean teardown."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kvroute.app import EppApp, StaticEndpoints, endpoint_source_for
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError
from kvroute.settings import EppSettings


def test_endpoint_source_needs_something_to_serve() -> None:
    with pytest.raises(ConfigError, match="no endpoints"):
        endpoint_source_for(EppSettings())


def test_pool_name_with_static_endpoints_selects_the_resources_pool() -> None:
    s = EppSettings(pool_name="pool", endpoints=(("127.0.0.1", 8000),))
    assert isinstance(endpoint_source_for(s), StaticEndpoints)


def _settings(**kw: object) -> EppSettings:
    base: dict[str, object] = {
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
