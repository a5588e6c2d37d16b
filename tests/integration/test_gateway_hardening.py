"""Issue 20's adversarial findings, each replayed through a real Envoy in front of the real EPP.

Every test names the finding it guards. The model servers are ``MiniModelServer`` (real aiohttp on
loopback) because the checks need to see what reached a server: admin paths, client headers, or a
server that answers 500 or never answers, which its fault knobs provide.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvroute.gateway.bootstrap import BootstrapOptions
from kvroute.gateway.edge import EdgeOptions
from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]

POOL_YAML = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: p}
spec:
  selector: {matchLabels: {app: p}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: p-epp, port: {number: 9002}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat}
spec:
  modelName: chat
  targetModels: [{name: chat-v1, weight: 100}]
  poolRef: {name: p}
"""


def _settings(servers: list[MiniModelServer], **kw: Any) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=tuple(("127.0.0.1", s.port) for s in servers),
        secure_serving=False,
        health_checking=True,
        **kw,
    )


class _Gw(Gateway):
    """A Gateway whose Envoy options a test can adjust (the knobs ``kvroute serve`` passes)."""

    def __init__(self, *a: Any, tweak: Callable[[BootstrapOptions], BootstrapOptions], **kw: Any):
        super().__init__(*a, **kw)
        self._tweak = tweak

    def bootstrap_options(self) -> BootstrapOptions:
        return self._tweak(super().bootstrap_options())


def _gw(servers: list[MiniModelServer], tmp_path: Path, **opts: Any) -> Gateway:
    """``opts``: EdgeOptions fields (the flags) and BootstrapOptions fields (e.g. retries)."""
    import dataclasses

    edge_fields = {f.name for f in dataclasses.fields(EdgeOptions)}
    edge = {k: v for k, v in opts.items() if k in edge_fields}
    rest = {k: v for k, v in opts.items() if k not in edge_fields}
    return _Gw(
        settings=_settings(servers),
        log_dir=tmp_path,
        edge=EdgeOptions(**edge),
        tweak=lambda o: dataclasses.replace(o, **rest),
    )


COMPLETION = {"model": "base", "prompt": "hello", "max_tokens": 2}


# -- finding 1: only inference traffic passes -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/unload_lora_adapter", {"model": "base", "prompt": "x", "lora_name": "a"}),
        ("POST", "/v1/load_lora_adapter", {"model": "base", "prompt": "x", "lora_path": "/x"}),
        ("POST", "/reset_prefix_cache", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/models", None),
    ],
)
async def test_finding1_admin_paths_get_404_and_never_reach_a_server(
    tmp_path: Path, method: str, path: str, body: dict[str, Any] | None
) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        scrapes_before = server.other_paths.count("/metrics")
        r = await c.request(method, path, json=body)
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == 404
        assert "x-sim-server" not in r.headers
        assert [p for p in server.other_paths if p != "/metrics"] == []
        if path == "/metrics":  # the EPP's own scrapes go direct; Envoy's 404 added none
            assert r.text.startswith('{"error"')
        del scrapes_before
        ok = await c.post("/v1/completions", json=COMPLETION)
        assert ok.status_code == 200, ok.text


async def test_finding1_bodyless_request_on_an_inference_path_is_a_400(tmp_path: Path) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        for path in ("/v1/completions", "/v1/chat/completions"):
            r = await c.post(path)
            assert r.status_code == 400, r.text
            assert r.text.startswith("inference error: BadRequest - ")
            assert "needs a JSON request body" in r.text
        assert server.served == 0


async def test_finding1_operator_can_expose_an_extra_prefix(tmp_path: Path) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        _gw([server], tmp_path, extra_path_prefixes=("/v1/models",)) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        r = await c.get("/v1/models")
        assert r.status_code == 200, r.text
        assert r.headers["x-sim-server"] == "s"
        assert (await c.post("/v1/load_lora_adapter", json={"model": "base"})).status_code == 404


# -- finding 4: trusted headers ----------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-gateway-model-name-rewrite", "x-llm-d-model-name-rewrite"])
async def test_finding4_client_model_rewrite_header_is_stripped(
    tmp_path: Path, header: str
) -> None:
    resources = tmp_path / "pool.yaml"
    resources.write_text(POOL_YAML)
    server = MiniModelServer("s", adapters=("chat-v1", "chat-v2"))
    async with mini_pool([server]):
        settings = _settings([server], resources=(resources,))
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            for _ in range(5):
                r = await c.post(
                    "/v1/completions",
                    json={"model": "chat", "prompt": "x"},
                    headers={header: "chat-v2"},
                )
                assert r.status_code == 200, r.text
            assert server.seen_models == ["chat-v1"] * 5
            assert all(header not in {k.lower() for k in h} for h in server.seen_headers)


async def test_finding4_trusted_routing_headers_pass_when_the_operator_says_so(
    tmp_path: Path,
) -> None:
    resources = tmp_path / "pool.yaml"
    resources.write_text(POOL_YAML)
    server = MiniModelServer("s", adapters=("chat-v1", "chat-v2"))
    async with mini_pool([server]):
        gw = Gateway(
            settings=_settings([server], resources=(resources,)),
            log_dir=tmp_path,
            edge=EdgeOptions(trust_client_routing_headers=True),
        )
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            r = await c.post(
                "/v1/completions",
                json={"model": "chat", "prompt": "x"},
                headers={"x-gateway-model-name-rewrite": "chat-v2"},
            )
            assert r.status_code == 200, r.text
            assert server.seen_models == ["chat-v2"]


# -- finding 6: header limits --------------------------------------------------------------------


@pytest.mark.parametrize("count", [90, 93, 97, 100])
async def test_finding6_many_client_headers_still_route(tmp_path: Path, count: int) -> None:
    """httpx adds host, accept, accept-encoding, connection, user-agent, content-length and
    content-type: ``count`` is the total the client sends, as in the finding."""
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        extra = {f"x-h{i}": "v" for i in range(count - 7)}
        r = await c.post("/v1/completions", json=COMPLETION, headers=extra)
        assert r.status_code == 200, (r.status_code, r.text)


@pytest.mark.parametrize(
    "headers",
    [{f"x-h{i}": "v" for i in range(150)}, {"x-big": "a" * 63_000}, {"x-big": "a" * 100_000}],
    ids=["150-headers", "63KB-header", "100KB-header"],
)
async def test_finding6_oversized_headers_are_a_431(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        r = await c.post("/v1/completions", json=COMPLETION, headers=headers)
        assert r.status_code == 431, (r.status_code, r.text)
        assert r.json()["error"]["code"] == 431
        assert server.served == 0


# -- finding 5: unhealthy endpoints leave the pool fast --------------------------------------


async def test_finding5_failing_server_costs_the_client_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One of three servers answers every request 500 (the finding: 28% of requests got 500).
    Envoy retries the 5xx before the first byte on another endpoint and ejects the failing one
    (outlier detection); the EPP counts its errors and stops picking it."""
    bad = MiniModelServer("bad", error_status=500)
    good = [MiniModelServer("g1"), MiniModelServer("g2")]
    async with (
        mini_pool([bad, *good]),
        Gateway(settings=_settings([bad, *good]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        statuses = []
        for i in range(40):
            r = await c.post("/v1/completions", json={**COMPLETION, "prompt": f"p{i}"})
            statuses.append(r.status_code)
        assert statuses == [200] * 40
        assert bad.served <= 6, bad.served  # a few until the EPP took it out, then none
        assert good[0].served + good[1].served == 40
        ejected = [r for r in caplog.records if "taken out of rotation" in r.getMessage()]
        assert len(ejected) == 1  # logged once, at WARNING, naming the endpoint
        assert ejected[0].levelname == "WARNING"
        assert bad.hostport in ejected[0].getMessage()
        ready = await _ready_pods(gw)
        assert ready == 2.0


async def _ready_pods(gw: Gateway) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{gw.epp.ports.metrics}/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("inference_pool_ready_pods{")]
    return float(line.rsplit(" ", 1)[1])


async def test_finding8_ready_pods_drops_when_a_server_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``inference_pool_ready_pods`` stayed 3 while a server was dead, and nothing was logged at
    the default level; it counts only routable endpoints now (scraped within
    ``--metrics-staleness-threshold``, not ejected), and the outage is one WARNING."""
    a, b = MiniModelServer("a"), MiniModelServer("b")
    async with (
        mini_pool([a, b]),
        Gateway(settings=_settings([a, b]), log_dir=tmp_path) as gw,
    ):
        for _ in range(100):
            if await _ready_pods(gw) == 2.0:
                break
            await asyncio.sleep(0.05)
        assert await _ready_pods(gw) == 2.0
        await b.stop()
        for _ in range(100):
            if await _ready_pods(gw) == 1.0:
                break
            await asyncio.sleep(0.1)
        assert await _ready_pods(gw) == 1.0
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1
        assert down[0].levelname == "WARNING"
        assert b.hostport in down[0].getMessage()


async def test_finding5_hung_server_is_a_504_after_the_first_byte_timeout(tmp_path: Path) -> None:
    """A server that never answers (the finding: 40% of requests hung until the client gave up)
    is a clear 504 after ``first_byte_timeout``; with a live peer the request is retried there."""
    hung = MiniModelServer("hung", hang=True)
    async with mini_pool([hung]):
        async with (
            _gw([hung], tmp_path, first_byte_timeout_s=0.5, retries=0) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            r = await c.post("/v1/completions", json=COMPLETION)
            assert r.status_code == 504, r.text
            assert "upstream request timeout" in r.text
        live = MiniModelServer("live")
        async with (
            mini_pool([live]),
            _gw([hung, live], tmp_path, first_byte_timeout_s=0.5) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            for i in range(6):
                r = await c.post("/v1/completions", json={**COMPLETION, "prompt": f"h{i}"})
                assert r.status_code == 200, r.text
                assert r.headers["x-sim-server"] == "live"


async def test_finding8_buffered_bodies_share_one_budget(tmp_path: Path) -> None:
    """8 concurrent 60 MB bodies took the EPP's RSS from 212 MB to 1.1 GB: nothing bounded the
    bodies held together. With ``--max-buffered-body-bytes`` a body that does not fit while
    another is being buffered is answered 503 with the reason; once the first is routed the
    budget is free again."""
    server = MiniModelServer("s")
    budget = 1_000_000
    prompt = "x" * 700_000
    whole = json.dumps({**COMPLETION, "prompt": prompt}).encode()
    release = asyncio.Event()

    async def slow_body() -> Any:
        yield whole[:650_000]
        await release.wait()
        yield whole[650_000:]

    async with (
        mini_pool([server]),
        Gateway(
            settings=_settings([server], max_buffered_body_bytes=budget), log_dir=tmp_path
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        first = asyncio.create_task(c.post("/v1/completions", content=slow_body()))
        for _ in range(200):  # until the EPP holds the first body's bytes
            if gw.epp.body_budget.in_use >= 600_000:
                break
            await asyncio.sleep(0.01)
        assert gw.epp.body_budget.in_use >= 600_000
        second = await c.post("/v1/completions", content=whole)
        assert second.status_code == 503, second.text
        assert "inference error: ServiceUnavailable - " in second.text
        assert "--max-buffered-body-bytes" in second.text
        release.set()
        assert (await first).status_code == 200
        assert gw.epp.body_budget.in_use == 0
        again = await c.post("/v1/completions", content=whole)
        assert again.status_code == 200, again.text


# -- finding 7: exposure ------------------------------------------------------------------------


async def test_finding7_metrics_endpoint_requires_the_bearer_token(tmp_path: Path) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(
            settings=_settings([server], metrics_bearer_token="s3cret"), log_dir=tmp_path
        ) as gw,
        httpx.AsyncClient(timeout=30) as c,
    ):
        url = f"http://127.0.0.1:{gw.epp.ports.metrics}/metrics"
        assert (await c.get(url)).status_code == 401
        wrong = await c.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        ok = await c.get(url, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert "inference_pool_ready_pods" in ok.text
        # the live pool page is served by the same server and behind the same token (it
        # showed endpoints and recent decisions to anyone, token or not)
        base = f"http://127.0.0.1:{gw.epp.ports.metrics}"
        auth = {"Authorization": "Bearer s3cret"}
        for path in ("/pool", "/pool/pool.js", "/pool/state", "/pool/events"):
            assert (await c.get(base + path)).status_code == 401, path
        assert (await c.get(base + "/pool", headers=auth)).status_code == 200
        state = await c.get(base + "/pool/state", headers=auth)
        assert state.status_code == 200
        assert state.json()["endpoints"]
        async with c.stream("GET", base + "/pool/events", headers=auth) as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")


async def test_finding7_envoy_reaches_the_epp_and_its_admin_over_private_unix_sockets(
    tmp_path: Path,
) -> None:
    """``serve`` spoke plaintext ext_proc on a loopback port any local process could use (a
    rogue client got routing decisions), and Envoy's admin (``/config_dump``) was on another.
    Both are Unix sockets now, in a directory only this user can enter."""
    import stat

    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
    ):
        assert gw.envoy is not None
        assert gw.socket_dir is not None
        assert stat.S_IMODE(gw.socket_dir.stat().st_mode) == 0o700
        assert gw.settings.grpc_uds is not None
        assert stat.S_ISSOCK(gw.settings.grpc_uds.stat().st_mode)
        assert gw.epp.ports.grpc == 0  # no TCP ext_proc listener at all
        assert gw.envoy.admin_url == ""  # no TCP admin listener
        async with gw.envoy.admin_client() as admin:
            assert (await admin.get("/ready")).status_code == 200
        r = await c.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 200, r.text
        socket_dir = gw.socket_dir
    assert not socket_dir.exists()  # removed on exit


async def test_finding7_an_explicit_grpc_port_keeps_tcp(tmp_path: Path) -> None:
    """``kvroute serve --grpc-port N`` acts: ext_proc stays on that loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = MiniModelServer("s")
    async with mini_pool([server]):
        settings = _settings([server])
        import dataclasses

        settings = dataclasses.replace(settings, grpc_port=port)
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=30) as c,
        ):
            assert gw.epp.ports.grpc == port
            assert gw.socket_dir is None
            assert (await c.post("/v1/completions", json=COMPLETION)).status_code == 200


# -- finding 3 (the Envoy side): drain -------------------------------------------------------


async def test_finding3_stopping_the_gateway_lets_running_streams_finish(tmp_path: Path) -> None:
    """SIGTERM with 20 streams in flight cut all of them after their 200 (no ``[DONE]``). The
    gateway now drains Envoy first: new connections are refused, running streams end normally,
    then Envoy and the EPP stop."""
    server = MiniModelServer("s", token_delay_s=0.05)
    async with mini_pool([server]):
        gw = Gateway(settings=_settings([server]), log_dir=tmp_path)
        await gw.__aenter__()
        closing: asyncio.Task[None] | None = None
        try:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                body = {"model": "base", "prompt": "x", "max_tokens": 30, "stream": True}
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    chunks = r.aiter_bytes()
                    received = [await anext(chunks)]
                    closing = asyncio.create_task(gw.__aexit__(None, None, None))
                    await asyncio.sleep(0.3)
                    async with httpx.AsyncClient(timeout=5) as late:
                        with pytest.raises(httpx.ConnectError):
                            await late.post(gw.url + "/v1/completions", json=COMPLETION)
                    received += [chunk async for chunk in chunks]
            text = b"".join(received).decode()
            assert text.count("data: ") == 31  # 30 tokens and [DONE]
            assert text.rstrip().endswith("data: [DONE]")
        finally:
            if closing is None:
                await gw.__aexit__(None, None, None)
            else:
                await closing
