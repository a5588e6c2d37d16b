"""One trace per request: curl -> real Envoy (OpenTelemetry tracer) -> EPP -> ``kvroute sim``.

The model servers are the real ``kvroute sim --tracing-endpoint`` command in a child process.

All three export over real OTLP/gRPC to :class:`OtlpReceiver` (``opentelemetry-proto``'s
TraceService on loopback). The test checks the parent/child chain: Envoy's gateway span is the
root, the EPP's request span descends from it (through Envoy's span for the ext_proc call), the
EPP's parse/schedule/response spans are children of its request span, and the simulator's server
span descends from the gateway span.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings, parse_endpoint_url
from kvroute_sim.cluster import SimCluster
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="function")]


def _settings(urls: list[str], collector: str, ratio: float = 1.0) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=tuple(parse_endpoint_url(u) for u in urls),
        secure_serving=False,
        health_checking=True,
        tracing=True,
        tracing_endpoint=collector,
        tracing_sampling_ratio=ratio,
    )


async def _curl(url: str, body: str, *headers: str) -> str:
    args = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "content-type: application/json",
    ]
    for h in headers:
        args += ["-H", h]
    proc = await asyncio.create_subprocess_exec(
        *args, "-d", body, f"{url}/v1/completions", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode()


@contextlib.asynccontextmanager
async def _sim_command(n: int, collector: str) -> AsyncIterator[list[str]]:
    """``kvroute sim`` as a real process; yields the servers' URLs from its ready lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "sim", "--servers", str(n), "--base-port", "0",
        "--profile", "tiny", "--model", "base", "--tracing-endpoint", collector,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        urls = []
        for _ in range(n):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert " ready " in line, line
            urls.append(line.split()[2])
        yield urls
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_gateway_epp_and_server_spans_form_one_trace(tmp_path: Path) -> None:
    async with (
        OtlpReceiver() as otlp,
        SimCluster(2, profile="tiny", model="base", tracing_endpoint=otlp.endpoint) as sims,
    ):
        gw = Gateway(settings=_settings(sims.urls, otlp.endpoint), log_dir=tmp_path)
        async with gw:
            body = '{"model": "base", "prompt": "trace me", "max_tokens": 3}'
            assert await _curl(gw.url, body) == "200"

            def complete(spans: list[ReceivedSpan]) -> bool:
                services = {s.service for s in spans}
                names = {s.name for s in spans}
                return {"kvroute-gateway", "kvroute-epp", "kvroute-sim"} <= services and {
                    "kvroute.response",
                    "sim.generate",
                } <= names

            await otlp.wait_for(complete)
    spans = otlp.spans
    assert len({s.trace_id for s in spans}) == 1, [(s.service, s.name, s.trace_id) for s in spans]
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert [r.service for r in roots] == ["kvroute-gateway"], roots
    gateway_root = roots[0]

    epp = {s.name: s for s in spans if s.service == "kvroute-epp"}
    assert set(epp) == {
        "kvroute.epp.request",
        "kvroute.parse",
        "kvroute.schedule",
        "kvroute.response",
    }
    request = epp["kvroute.epp.request"]
    assert gateway_root in _ancestors(request, by_id)
    # Directly under Envoy's span for the ext_proc gRPC call, itself a child of the root.
    call = by_id[request.parent_span_id]
    assert call.service == "kvroute-gateway"
    assert "ExternalProcessor" in call.name, call.name
    assert call.parent_span_id == gateway_root.span_id
    for child in ("kvroute.parse", "kvroute.schedule", "kvroute.response"):
        assert epp[child].parent_span_id == request.span_id, child

    (server,) = [s for s in spans if s.service == "kvroute-sim"]
    assert server.name == "sim.generate"
    assert gateway_root in _ancestors(server, by_id)
    assert server.parent_span_id == gateway_root.span_id

    schedule = epp["kvroute.schedule"].attributes
    pick = schedule["kvroute.pick"]
    assert pick.startswith("static-")
    assert isinstance(schedule["kvroute.winning_score"], float)
    assert any(k.endswith(".scores") for k in schedule), schedule
    response = epp["kvroute.response"].attributes
    assert response["kvroute.completion_reason"] == "complete"
    assert response["kvroute.completion_tokens"] == 3
    assert response["kvroute.ttft_ms"] > 0


async def test_unsampled_parent_is_not_traced_by_the_epp(tmp_path: Path) -> None:
    """A client ``traceparent`` with the sampled flag off: Envoy and the EPP both follow it."""
    async with OtlpReceiver() as otlp, SimCluster(1, profile="tiny", model="base") as sims:
        gw = Gateway(settings=_settings(sims.urls, otlp.endpoint), log_dir=tmp_path)
        async with gw:
            body = '{"model": "base", "prompt": "not me", "max_tokens": 2}'
            parent = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
            assert await _curl(gw.url, body, parent) == "200"
            # A sampled request afterwards proves the exporters work.
            sampled = "traceparent: 00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            assert await _curl(gw.url, body, sampled) == "200"
            await otlp.wait_for(lambda ss: any(s.name == "kvroute.response" for s in ss))
    assert {s.trace_id for s in otlp.spans} == {"1af7651916cd43dd8448eb211c80319c"}
