"""``--emit-endpoint-scores`` through real Envoy: the scores reach Envoy's ``envoy.lb`` metadata.

Real Envoy, kvroute's EPP and two simulated servers on loopback. To make the metadata visible
to the client, the test adds one response header to kvroute's generated Envoy route:
``%DYNAMIC_METADATA(envoy.lb:x-gateway-destination-endpoint-scores)%`` (Envoy's own formatter,
so the value is what Envoy stored from the ext_proc answer). Nothing else is changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import kvroute.gateway.gateway as gateway_module
from kvroute.gateway.bootstrap import BootstrapOptions, build_bootstrap
from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings, parse_endpoint_url
from kvroute_sim.cluster import SimCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ECHO = "x-test-endpoint-scores"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


def _echo_scores(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "response_headers_to_add" and isinstance(value, list):
                value.append(
                    {
                        "header": {
                            "key": ECHO,
                            "value": "%DYNAMIC_METADATA(envoy.lb:"
                            "x-gateway-destination-endpoint-scores)%",
                        },
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                )
            else:
                _echo_scores(value)
    elif isinstance(node, list):
        for item in node:
            _echo_scores(item)


def _bootstrap_with_echo(opts: BootstrapOptions) -> dict[str, Any]:
    doc = build_bootstrap(opts)
    _echo_scores(doc)
    return doc


@pytest.mark.parametrize("emit", [True, False], ids=["on", "off"])
async def test_scores_in_envoy_lb_metadata_without_reordering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emit: bool
) -> None:
    monkeypatch.setattr(gateway_module, "build_bootstrap", _bootstrap_with_echo)
    async with SimCluster(2, profile="tiny", model="base") as cluster:
        settings = EppSettings(
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            endpoints=tuple(parse_endpoint_url(u) for u in cluster.urls),
            config_text=CONFIG,
            secure_serving=False,
            health_checking=True,
            emit_endpoint_scores=emit,
        )
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        ):
            body = {"model": "base", "prompt": "score me", "max_tokens": 2}
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            served = r.headers["x-gateway-destination-endpoint-served"]
            if not emit:
                assert r.headers.get(ECHO, "") in ("", "-")  # nothing in the metadata
                return
            scores = json.loads(r.headers[ECHO])
            hostports = {f"127.0.0.1:{s.port}" for s in cluster.servers}
            assert set(scores) == hostports  # every endpoint the profile scored
            assert all(isinstance(v, float | int) for v in scores.values())
            # The list is not reordered: the served endpoint is the picker's (max-score) pick.
            assert scores[served] == max(scores.values())
