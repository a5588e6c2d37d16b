"""``tap`` with several EPP replicas (``kvroute serve --epp-replicas``), live on loopback.

Envoy balances ext_proc streams over the replicas; each report must reach the replica that holds
its stream, through the per-replica report cluster the EPP names. Checked with two replica
processes behind one real Envoy: every streamed answer has the client's model name, the usage
of every request is recorded by exactly one replica, and both end with nothing in flight.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvroute.gateway.bootstrap import BootstrapOptions, build_bootstrap
from kvroute.gateway.envoy import EnvoyProcess
from kvroute.gateway.replicas import EppReplicaSet
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.integration.test_response_tap import CONFIG, RESOURCES, _events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _metric(c: httpx.AsyncClient, port: int, name: str) -> float:
    text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("model_name") == "food-review":
                total += s.value
    return total


async def _inflight(c: httpx.AsyncClient, port: int) -> int:
    state = (await c.get(f"http://127.0.0.1:{port}/pool/state")).json()
    return sum(int(e["inflight"]) for e in state["endpoints"])


async def test_reports_reach_the_replica_holding_the_stream(tmp_path: Path) -> None:
    resources = tmp_path / "pool.yaml"
    resources.write_text(RESOURCES)
    config = tmp_path / "epp.yaml"
    config.write_text(CONFIG)
    server = MiniModelServer("s", token_delay_s=0.005, tokens=5)
    async with mini_pool([server]):
        args = [
            f"--endpoint={server.url}",
            f"--resources={resources}",
            f"--config-file={config}",
            "--response-processing=tap",
        ]
        async with EppReplicaSet(2, args, tmp_path) as rs:
            opts = BootstrapOptions(
                port=0,
                epp_endpoints=rs.endpoints,
                epp_tls=False,
                endpoints=[("127.0.0.1", server.port)],
                response_processing="tap",
            )
            async with (
                EnvoyProcess(build_bootstrap(opts), log_dir=tmp_path) as envoy,
                httpx.AsyncClient(timeout=30) as c,
            ):
                url = f"http://127.0.0.1:{envoy.port}/v1/completions"
                body = {
                    "model": "food-review",
                    "prompt": "hello",
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                for _ in range(40):  # until both replicas are healthy in Envoy
                    if (await c.post(url, json=body)).status_code == 200:
                        break
                    await asyncio.sleep(0.25)
                ports = [r.metrics_port for r in rs.replicas]
                before = [
                    await _metric(c, p, "inference_objective_output_tokens_count") for p in ports
                ]
                rs_ = await asyncio.gather(*(c.post(url, json=body) for _ in range(16)))
                for r in rs_:
                    assert r.status_code == 200
                    assert [e["model"] for e in _events(r.text)] == ["food-review"] * 6
                # tap mode: Envoy's Lua filter adds the routing replica's name header
                named = {r.headers.get("x-kvroute-epp-replica") for r in rs_}
                assert named == {"epp-0", "epp-1"}, named
                await asyncio.sleep(0.3)
                after = [
                    await _metric(c, p, "inference_objective_output_tokens_count") for p in ports
                ]
                counts = [a - b for a, b in zip(after, before, strict=True)]
                assert sum(counts) == 16, counts  # every request's usage, recorded once
                assert all(n > 0 for n in counts), counts  # both replicas held streams
                assert [await _inflight(c, p) for p in ports] == [0, 0]
