"""Tests mirroring GIE v1.6's conformance suite (``conformance/tests/*.go``): an EPP behind Envoy.

Hermetic: real Envoy, kvroute's EPP over real gRPC and ``kvroute sim`` servers on loopback. The
upstream suite runs echo servers in Kubernetes pods, one IP each; here each simulated server
listens on its own loopback address (127.0.0.2, .3, .4) so the ``test-epp-endpoint-selection``
header (IP list, as upstream) can name them apart. Each test names its upstream test. The
Kubernetes-status tests (``InferencePoolAccepted``, ``...ResolvedRefsCondition``, ...) concern
the Gateway controller, not the EPP, and are not mirrored here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-based-testing-filter
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: header-based-testing-filter
  - pluginRef: queue-scorer
flowControl: {enabled: false}
"""
BODY = {"model": "base", "prompt": "conformance", "max_tokens": 2}


@contextlib.asynccontextmanager
async def _pool() -> AsyncIterator[dict[str, str]]:
    """Three sims, one per loopback IP; yields {ip: "ip:port"}."""
    async with contextlib.AsyncExitStack() as stack:
        out: dict[str, str] = {}
        for i, host in enumerate(HOSTS):
            cluster = SimCluster(1, profile="tiny", model="base", host=host)
            cluster.servers[0].name = f"sim-{i}"
            await stack.enter_async_context(cluster)
            out[host] = f"{host}:{cluster.servers[0].port}"
        yield out


@pytest.mark.parametrize("picked", [1, 2, 3], ids=["one-ip", "two-ips", "three-ips"])
async def test_gateway_following_epp_routing(tmp_path: Path, picked: int) -> None:
    """Mirrors ``GatewayFollowingEPPRouting``: with the EPP choosing 1, 2 or 3 endpoints (the
    comma list of ``test-epp-endpoint-selection``), requests sent 10 at a time land only on
    those servers, and the gateway reports the one that served each."""
    async with _pool() as pool:
        chosen = list(pool)[:picked]
        async with (
            Gateway(
                [f"http://{hp}" for hp in pool.values()], config_text=CONFIG, log_dir=tmp_path
            ) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        ):
            headers = {"test-epp-endpoint-selection": ",".join(chosen)}
            responses: list[httpx.Response] = []
            for _ in range(3):
                responses += await asyncio.gather(
                    *(client.post("/v1/completions", json=BODY, headers=headers) for _ in range(10))
                )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    served = [r.headers["x-gateway-destination-endpoint-served"] for r in responses]
    allowed = {pool[ip] for ip in chosen}
    assert set(served) <= allowed, (served, allowed)
    sims = {r.headers["x-sim-server"] for r in responses}
    assert sims <= {f"sim-{HOSTS.index(ip)}" for ip in chosen}


async def test_gateway_destination_endpoint_served(tmp_path: Path) -> None:
    """Mirrors ``GatewayDestinationEndpointServed``: the response reports
    ``x-gateway-destination-endpoint-served`` = the ``ip:port`` of the server that answered
    (upstream echoes it through ``x-conformance-test-served-endpoint``; Envoy here adds it to
    the response itself), for each server picked in turn."""
    async with (
        _pool() as pool,
        Gateway(
            [f"http://{hp}" for hp in pool.values()], config_text=CONFIG, log_dir=tmp_path
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        for i, ip in enumerate(HOSTS):
            r = await client.post(
                "/v1/completions", json=BODY, headers={"test-epp-endpoint-selection": ip}
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-sim-server"] == f"sim-{i}"
            assert r.headers["x-gateway-destination-endpoint-served"] == pool[ip]


async def test_no_selection_header_is_rejected_with_the_dropped_reason(tmp_path: Path) -> None:
    """Mirrors the negative half of ``GatewayFollowingEPPRouting``'s EPP contract: with the
    testing filter and no selection header the EPP has no candidates, so the request is
    rejected (never routed elsewhere) and carries ``x-llm-d-request-dropped-reason``."""
    async with (
        _pool() as pool,
        Gateway(
            [f"http://{hp}" for hp in pool.values()], config_text=CONFIG, log_dir=tmp_path
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        r = await client.post("/v1/completions", json=BODY)
    assert r.status_code in (429, 503), r.text
    assert "x-sim-server" not in r.headers
    assert r.headers.get("x-llm-d-request-dropped-reason"), dict(r.headers)
