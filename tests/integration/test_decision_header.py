"""``--enable-decision-header``: a request with ``x-kvroute-explain`` gets ``x-kvroute-decision``.

Real Envoy (``kvroute serve``'s config) -> EPP -> two ``kvroute_sim`` servers. The header must
name the server that actually answered (``x-sim-server`` maps to the endpoint the EPP picked);
without the request header, or with the flag off, no summary is added.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings, parse_endpoint_url
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="function")]


def _settings(urls: list[str], on: bool) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=tuple(parse_endpoint_url(u) for u in urls),
        secure_serving=False,
        health_checking=True,
        enable_decision_header=on,
    )


@pytest.mark.parametrize("on", [True, False], ids=["flag-on", "flag-off"])
async def test_decision_summary_header(tmp_path: Path, on: bool) -> None:
    body = {"model": "base", "prompt": "explain me", "max_tokens": 2}
    async with (
        SimCluster(2, profile="tiny", model="base") as sims,
        Gateway(settings=_settings(sims.urls, on), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30.0) as client,
    ):
        asked = await client.post("/v1/completions", json=body, headers={"x-kvroute-explain": "1"})
        plain = await client.post("/v1/completions", json=body)
        by_port = {e.port: e.name for e in gw.epp.datastore.endpoints()}
        served = {s.name: by_port[s.port] for s in sims.servers}
    assert asked.status_code == plain.status_code == 200
    assert "x-kvroute-decision" not in plain.headers
    if not on:
        assert "x-kvroute-decision" not in asked.headers
        return
    summary = asked.headers["x-kvroute-decision"]
    fields = dict(p.split("=", 1) for p in summary.split("; ") if "=" in p)
    assert fields["pick"] == served[asked.headers["x-sim-server"]], summary
    assert fields["profile"] == "default"
    assert float(fields["score"]) > 0
    assert "queue-scorer" in fields, summary
