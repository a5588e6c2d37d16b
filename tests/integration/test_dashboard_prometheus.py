"""Every PromQL query of ``deploy/grafana/kvroute-epp-dashboard.json`` returns data.

A real Prometheus (Debian package, installed by :func:`prometheus_binary` when missing) scrapes a
live EPP behind real Envoy and two ``kvroute_sim`` servers every second while mixed traffic runs
(JSON and SSE, repeated prompts for prefix hits, malformed requests for the error panels); then
each query is run through Prometheus' HTTP API with Grafana's variables substituted. Every
panel must return data, the ``[flow-control]`` ones (llm-d-router's ``llm_d_epp_flow_control_*``
names) included: the EPP runs the default profile with a ``concurrency-detector`` of one request
per server as its saturation detector, so four clients on two servers keep requests waiting in
the EPP's queues during the traffic (the scraped-metrics detector would rarely see this small pool
saturated). Like a panel over its time range, a query passes when it has data at some second of
the run: the queue gauges exist only while a flow has requests waiting (an emptied flow's series
is removed), so they are empty once the traffic has stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kvroute.config.epp_config import KVROUTE_DEFAULT_CONFIG_TEXT
from kvroute.gateway.gateway import Gateway
from kvroute_sim.cluster import SimCluster
from tests.integration.prometheus_server import PrometheusServer, prometheus_binary

pytestmark = [pytest.mark.integration]

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "kvroute-epp-dashboard.json"


def dashboard_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr with Grafana variables substituted)."""
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "20s").replace("$pool", ".*")
            out.append((panel["title"], expr))
    return out


def test_dashboard_is_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries(doc)
    assert len(queries) >= 30
    for title, expr in queries:
        assert "$" not in expr, (title, expr)
    titles = {p["title"] for p in doc["panels"] if p["type"] == "row"}
    assert titles == {
        "Pool overview",
        "Per endpoint: load and cache",
        "Decisions",
        "Errors",
        "Latency",
        "Flow control",
    }


def saturating_config() -> str:
    """The default profile with a saturation detector that holds a second request per server."""
    doc = yaml.safe_load(KVROUTE_DEFAULT_CONFIG_TEXT)
    doc["plugins"].append({"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}})
    doc["flowControl"] = {"saturationDetector": {"pluginRef": "concurrency-detector"}}
    return str(yaml.safe_dump(doc, sort_keys=False))


async def _traffic(url: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:

        async def worker(i: int) -> None:
            n = 0
            while loop.time() < stop:
                n += 1
                if n % 7 == 0:
                    await client.post("/v1/completions", json={"prompt": "no model"})
                    continue
                body: dict[str, Any] = {
                    "model": "base",
                    "prompt": f"shared system prompt for the dashboard test {n % 3} " * 8,
                    "max_tokens": 4 + (n % 5),
                }
                if n % 2:
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                r = await client.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(worker(i) for i in range(4)))


@pytest.mark.asyncio(loop_scope="function")
async def test_every_dashboard_query_returns_series(tmp_path: Path) -> None:
    binary, why = prometheus_binary()
    if binary is None:
        print(f"SKIP reason: {why}")
        pytest.skip(why)
    doc = json.loads(DASHBOARD.read_text())
    async with (
        SimCluster(2, profile="tiny", model="base") as sims,
        Gateway(sims.urls, config_text=saturating_config(), log_dir=tmp_path) as gw,
    ):
        epp = f"127.0.0.1:{gw.epp.ports.metrics}"
        servers = [u.removeprefix("http://") for u in sims.urls]
        jobs = {"kvroute-epp": [epp], "model-servers": servers}
        async with PrometheusServer(binary, tmp_path, jobs) as prom:
            for _ in range(100):
                if await prom.targets_up() == 3:
                    break
                await asyncio.sleep(0.1)
            started = time.time()
            await _traffic(gw.url, 8.0)
            await asyncio.sleep(2.5)  # scrapes after the last request
            ended = time.time()
            waited = await prom.query(
                "sum(llm_d_epp_flow_control_request_queue_duration_seconds_count)"
            )
            points = [started + 3.0 + 0.5 * i for i in range(int((ended - started - 3.0) / 0.5))]
            empty = []
            for title, expr in dashboard_queries(doc):
                for at in [*points, None]:
                    result = await prom.query(expr, at=at)
                    values = [float(s["value"][1]) for s in result]
                    if result and any(not math.isnan(v) for v in values):
                        break
                else:
                    empty.append(f"{title}: {expr}")
    assert waited, "no flow-control queue series"
    assert float(waited[0]["value"][1]) > 0, "no request waited in flow control"
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)
