"""P/D disaggregation end to end: real Envoy, kvroute's EPP, the sidecar and simulated servers.

Pool (all on loopback, OS-chosen ports): two ``kvroute_sim`` prefill servers (role ``prefill``,
label ``llm-d.ai/role: prefill``) and one decode server (role ``decode``) behind
``kvroute.sidecar`` (the pool endpoint, labelled ``decode``). The EPP runs the P/D config
``tests/testdata/configs/pd-disagg.yaml``, kvroute's own file of the same shape as llm-d-router's
``deploy/config/pd-epp-config.yaml``, with ``nonCachedTokens`` raised to 64. Envoy is
``examples/envoy/envoy.yaml`` (the upstream shape). The one stand-in is the endpoint source: a
static list with labels, where a cluster would deliver Pods with labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from kvroute.app import EppApp
from kvroute.datastore.store import Datastore
from kvroute.gateway.envoy import EnvoyProcess
from kvroute.settings import EppSettings
from kvroute.sidecar.proxy import Sidecar, SidecarOptions
from kvroute_sim.config import load_server_config
from kvroute_sim.server.app import SimServer
from tests.integration.test_gateway_e2e import upstream_shaped_bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG = Path(__file__).parents[1] / "testdata" / "configs" / "pd-disagg.yaml"
WORDS = ["river", "stone", "cloud", "lamp", "orbit", "maple", "quartz", "ember", "tide", "falcon"]


def long_prompt(seed: int) -> str:
    """~900 characters (~225 estimated tokens, well over the threshold), unique per seed."""
    return f"case {seed}: " + " ".join(WORDS[(seed * 7 + i) % len(WORDS)] for i in range(140))


class LabelledEndpoints:
    """A static pool whose endpoints carry labels (what a Pod watch would deliver)."""

    def __init__(self, endpoints: list[tuple[str, int, dict[str, str]]]) -> None:
        self._endpoints = endpoints
        self.synced = False

    def load(self, datastore: Datastore) -> None:
        for i, (host, port, labels) in enumerate(self._endpoints):
            datastore.upsert_endpoint(f"pod-{i}-rank-0", host, port, labels)
        self.synced = True

    async def run(self, datastore: Datastore) -> None:
        self.load(datastore)


@dataclass
class Rig:
    url: str
    epp: EppApp
    prefill: list[SimServer]
    decode: SimServer
    sidecar: Sidecar
    client: httpx.AsyncClient


async def _sim(role: str, name: str) -> SimServer:
    server = SimServer(load_server_config(profile="tiny", role=role), name=name)
    await server.start()
    return server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("pd")
    async with contextlib.AsyncExitStack() as stack:
        prefill = [await _sim("prefill", "pre0"), await _sim("prefill", "pre1")]
        decode = await _sim("decode", "dec")
        for s in (*prefill, decode):
            stack.push_async_callback(s.stop)
        sidecar = Sidecar(SidecarOptions(model_server=decode.url, prefill_timeout_s=5.0))
        runner = web.AppRunner(sidecar.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stack.push_async_callback(runner.cleanup)
        sidecar_port = runner.addresses[0][1]

        config = yaml.safe_load(CONFIG.read_text())
        (decider,) = (p for p in config["plugins"] if p["type"] == "prefix-based-pd-decider")
        decider["parameters"]["nonCachedTokens"] = 64
        source = LabelledEndpoints(
            [
                *(("127.0.0.1", s.port, {"llm-d.ai/role": "prefill"}) for s in prefill),
                ("127.0.0.1", sidecar_port, {"llm-d.ai/role": "decode"}),
            ]
        )
        settings = EppSettings(
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            config_text=yaml.safe_dump(config),
            secure_serving=True,
            health_checking=True,
        )
        epp = await stack.enter_async_context(EppApp(settings, endpoint_source=source))
        envoy = await stack.enter_async_context(
            EnvoyProcess(upstream_shaped_bootstrap(epp.ports.grpc), log_dir=tmp)
        )
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        yield Rig(f"http://127.0.0.1:{envoy.port}", epp, prefill, decode, sidecar, client)


def _events(raw: str) -> list[dict[str, Any]]:
    out = []
    for block in raw.split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            doc = json.loads(block[6:])
            doc.pop("created", None)
            out.append(doc)
    return out


async def _metrics(client: httpx.AsyncClient, server: SimServer) -> str:
    return (await client.get(server.url + "/metrics")).text


def _sent(rig: Rig) -> int:
    return sum(s.transfers.sent for s in rig.prefill)


async def test_long_prompt_is_prefilled_on_a_prefill_server_and_decoded_on_decode(
    rig: Rig,
) -> None:
    body = {"model": MODEL, "prompt": long_prompt(0), "max_tokens": 8, "stream": True}
    resp = await rig.client.post(rig.url + "/v1/completions", json=body)
    assert resp.status_code == 200
    split = _events(resp.text)
    assert len(split) == 8

    assert _sent(rig) == 1
    assert rig.decode.transfers.received == 1
    (used,) = (s for s in rig.prefill if s.transfers.sent)
    assert 'direction="sent"} 1' in await _metrics(rig.client, used)
    assert 'direction="received"} 1' in await _metrics(rig.client, rig.decode)

    epp_metrics = (await rig.client.get(f"http://127.0.0.1:{rig.epp.ports.metrics}/metrics")).text
    assert (
        'llm_d_epp_disagg_decision_total{decision_type="prefill-decode",model_name="'
        + MODEL
        + '",plugin_name="disagg-profile-handler",plugin_type="disagg-profile-handler"} 1.0'
    ) in epp_metrics

    # The same request served whole by a fresh aggregated server: the same stream.
    ref = await _sim("both", "dec")
    try:
        whole = await rig.client.post(ref.url + "/v1/completions", json=body)
    finally:
        await ref.stop()
    assert split == _events(whole.text)


async def test_short_prompt_is_served_whole_by_one_server(rig: Rig) -> None:
    sent, whole = _sent(rig), rig.decode.transfers.phases["whole"]
    body = {"model": MODEL, "prompt": "hi there", "max_tokens": 4}
    resp = await rig.client.post(rig.url + "/v1/completions", json=body)
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] == 4
    assert _sent(rig) == sent
    assert rig.decode.transfers.phases["whole"] == whole + 1


async def test_prefill_server_killed_mid_load_costs_no_request(rig: Rig) -> None:
    m = rig.sidecar.metrics

    async def one(i: int) -> int:
        body = {"model": MODEL, "prompt": long_prompt(100 + i), "max_tokens": 16}
        resp = await rig.client.post(rig.url + "/v1/completions", json=body)
        if resp.status_code == 200:
            assert resp.json()["usage"]["completion_tokens"] == 16
        return resp.status_code

    first = [asyncio.create_task(one(i)) for i in range(12)]
    await asyncio.sleep(0.05)
    await rig.prefill[0].kill()
    second = [asyncio.create_task(one(100 + i)) for i in range(12)]
    statuses = await asyncio.gather(*first, *second)
    assert statuses == [200] * 24
    tagged = m.value(m.requests, "disaggregated") + m.value(m.requests, "fallback")
    assert tagged >= 24  # every long request was split (or fell back), none lost
    assert m.value(m.fallbacks, "error") >= 1  # some went to the dead prefill server
