"""The autoscalers' exact PromQL, evaluated by a real Prometheus against a running EPP.

The queries are taken from the chart as rendered for HPA mode (prometheus-adapter's
``metricsQuery`` with ``<<.Series>>`` and ``<<.LabelMatchers>>`` substituted from the HPA's
metric name and ``matchLabels``, as the adapter does) and for KEDA mode (the ScaledObject's
``query``, verbatim). A real Prometheus (Debian package; skipped with the reason only if it cannot
be installed) scrapes the real EPP (``EppApp``, Kubernetes discovery through the fake API server
and the real lightkube client: the only fake here, since no cluster runs in tests) and three
``kvroute_sim`` servers: two pods' worth labelled ``kvroute.dev/accelerator: h100`` and one
``l4`` with a ``cost-per-hour`` label. The sims are slowed (``time_scale``) so that a known load
sent straight to the L4 server (12 long requests, ``max_num_seqs`` 8) holds still while the
queries run: 8 running and 4 waiting on L4, nothing on the H100s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kvroute.app import EppApp
from kvroute.backoff import Backoff
from kvroute.framework.accelerator import ACCELERATOR_LABEL, COST_LABEL
from kvroute.k8s.endpoints import ACTIVE_PORTS_ANNOTATION
from kvroute.k8s.resources import PoolRef
from kvroute.k8s.source import KubernetesEndpointSource
from kvroute.settings import EppSettings
from kvroute_sim.cluster import SimCluster
from tests.integration.prometheus_server import PrometheusServer, prometheus_binary
from tests.integration.test_k8s_deploy import CHART, docs_of
from tests.k8s_apiserver.fixtures import client_for, running_api
from tests.k8s_apiserver.helmlite import render_chart
from tests.k8s_apiserver.objects import eventually, pod, pool_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POOL = "pool"
CLASSES = [
    {"accelerator": "h100", "deployment": "vllm-h100", "maxReplicas": 8},
    {"accelerator": "l4", "deployment": "vllm-l4", "maxReplicas": 16},
]


def rendered(mode: str, metric: str) -> list[dict[str, Any]]:
    values = {"autoscaling": {"enabled": True, "mode": mode, "metric": metric, "classes": CLASSES}}
    return docs_of(render_chart(CHART, release=POOL, values=values)["autoscaling.yaml"])


def autoscaler_queries(metric: str) -> dict[tuple[str, str], str]:
    """(mode, accelerator) -> the PromQL that mode's autoscaler runs for ``metric``."""
    out: dict[tuple[str, str], str] = {}
    hpa_docs = rendered("hpa", metric)
    (cm,) = [d for d in hpa_docs if d["kind"] == "ConfigMap"]
    (rule,) = yaml.safe_load(cm["data"]["config.yaml"])["externalRules"]
    for hpa in (d for d in hpa_docs if d["kind"] == "HorizontalPodAutoscaler"):
        ext = hpa["spec"]["metrics"][0]["external"]["metric"]
        labels: Mapping[str, str] = ext["selector"]["matchLabels"]
        matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
        query = rule["metricsQuery"].replace("<<.Series>>", ext["name"])
        out[("hpa", labels["accelerator"])] = query.replace("<<.LabelMatchers>>", matchers)
    for so in rendered("keda", metric):
        cls = so["metadata"]["labels"][ACCELERATOR_LABEL]
        out[("keda", cls)] = so["spec"]["triggers"][0]["metadata"]["query"]
    return out


# metric -> accelerator -> expected value while the load holds.
EXPECTED: dict[str, dict[str, float]] = {
    "kvroute_pool_ready_endpoints": {"h100": 2, "l4": 1},
    "kvroute_pool_cost_per_hour": {"h100": 8.0, "l4": 0.55},
    "kvroute_pool_average_running_requests": {"h100": 0, "l4": 8},
    "kvroute_pool_average_queue_size": {"h100": 0, "l4": 4},
}


async def _value(prom: PrometheusServer, expr: str) -> float | None:
    result = await prom.query(expr)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.asyncio(loop_scope="function")
async def test_autoscaler_queries_read_the_pools_state(tmp_path: Path) -> None:
    binary, why = prometheus_binary()
    if binary is None:
        print(f"SKIP reason: {why}")
        pytest.skip(why)
    slow = {"time_scale": 100.0}  # tiny steps of 1-2 ms become 0.1-0.2 s
    async with (
        running_api() as api,
        SimCluster(3, profile="tiny", model="base", engine_overrides=slow) as sims,
    ):
        ports = [s.port for s in sims.servers]
        api.apply(pool_v1(POOL, ports=ports))
        h100 = {"app": "vllm", ACCELERATOR_LABEL: "h100"}
        l4 = {"app": "vllm", ACCELERATOR_LABEL: "L4", COST_LABEL: "0.55"}
        active = {ACTIVE_PORTS_ANNOTATION: f"{ports[0]},{ports[1]}"}
        api.apply(pod("h100-pod", "127.0.0.1", labels=h100, annotations=active))
        only_l4 = {ACTIVE_PORTS_ANNOTATION: str(ports[2])}
        api.apply(pod("l4-pod", "127.0.0.1", labels=l4, annotations=only_l4))
        settings = EppSettings(
            pool_name=POOL,
            pool_namespace="default",
            secure_serving=False,
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            refresh_metrics_interval_s=0.05,
        )
        source = KubernetesEndpointSource(
            pool=PoolRef(POOL, "default"),
            client_factory=lambda: client_for(api),
            controller_options={"backoff": Backoff(initial=0.05, maximum=0.2)},
        )
        async with EppApp(settings, endpoint_source=source) as app:
            await eventually(lambda: len(app.datastore) == 3)
            jobs = {"kvroute-epp": [f"127.0.0.1:{app.ports.metrics}"]}
            async with (
                PrometheusServer(binary, tmp_path, jobs, interval_s=0.5) as prom,
                httpx.AsyncClient(base_url=sims.urls[2], timeout=120.0) as client,
            ):
                body = {"model": "base", "prompt": "autoscaling " * 8, "max_tokens": 400}
                load = [
                    asyncio.create_task(client.post("/v1/completions", json=body))
                    for _ in range(12)
                ]
                try:
                    await _check(prom)
                finally:
                    for t in load:
                        t.cancel()
                    await asyncio.gather(*load, return_exceptions=True)


async def _check(prom: PrometheusServer) -> None:
    # Wait until the held load is visible through scrape -> EPP -> Prometheus.
    probe = 'max(kvroute_pool_average_queue_size{name="pool",accelerator="l4"})'
    for _ in range(100):
        if await _value(prom, probe) == 4:
            break
        await asyncio.sleep(0.2)
    checked = 0
    for metric, per_class in EXPECTED.items():
        queries = autoscaler_queries(metric)
        assert len(queries) == 4, queries
        for (mode, cls), expr in queries.items():
            got = await _value(prom, expr)
            assert got == pytest.approx(per_class[cls]), (mode, cls, expr, got)
            checked += 1
    # KV use: what the L4 server itself reports (nonzero under load), nothing on the idle H100s.
    kv = autoscaler_queries("kvroute_pool_average_kv_cache_utilization")
    for mode in ("hpa", "keda"):
        assert await _value(prom, kv[(mode, "h100")]) == 0
        l4_kv = await _value(prom, kv[(mode, "l4")])
        assert l4_kv is not None
        assert 0 < l4_kv <= 1
    assert checked == 16
    # Flow control (on by default) exports its queue per class; nothing waits in it here (the
    # load goes straight to the L4 server), so both read 0 -- but they exist for every class.
    for cls in ("h100", "l4"):
        for gauge in ("admission_queue_length", "admission_queue_oldest_wait_seconds"):
            expr = f'max(kvroute_pool_{gauge}{{name="pool",accelerator="{cls}"}})'
            assert await _value(prom, expr) == 0, expr
