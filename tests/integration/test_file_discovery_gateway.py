"""file-discovery through real Envoy: no --endpoint, no Kubernetes; the pool is a watched file.

Real Envoy, kvroute's EPP and two simulated model servers on loopback. The EPP's config names
a ``file-discovery`` plugin under ``dataLayer.discovery``; rewriting the file moves traffic.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def _file(ports: list[int]) -> str:
    lines = ["endpoints:"]
    lines += [f"- {{name: sim-{i}, address: 127.0.0.1, port: '{p}'}}" for i, p in enumerate(ports)]
    return "\n".join(lines) + "\n"


async def test_endpoints_come_from_the_watched_file(tmp_path: Path) -> None:
    async with SimCluster(2, profile="tiny", model="base") as cluster:
        ports = [s.port for s in cluster.servers]
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(_file(ports[:1]))
        config = f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{name: eps, type: file-discovery, parameters: {{path: "{endpoints}", watchFile: true}}}}
- type: queue-scorer
dataLayer: {{discovery: {{pluginRef: eps}}}}
"""
        async with (
            Gateway([], config_text=config, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        ):
            body = {"model": "base", "prompt": "hi", "max_tokens": 2}
            first = [await client.post("/v1/completions", json=body) for _ in range(3)]
            assert {r.headers["x-sim-server"] for r in first} == {"sim-0"}
            endpoints.write_text(_file(ports[1:]))  # move the pool to the other server
            for _ in range(300):
                names = {e.hostport for e in gw.epp.datastore.endpoints()}
                if names == {f"127.0.0.1:{ports[1]}"}:
                    break
                await asyncio.sleep(0.02)
            after = [await client.post("/v1/completions", json=body) for _ in range(3)]
            assert {r.headers["x-sim-server"] for r in after} == {"sim-1"}
