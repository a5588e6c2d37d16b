"""Issue 20 finding 3, the EPP side: an EPP that dies while streams run, and FailOpen's rewrites.

The EPP is ``kvroute epp`` as its own process (SIGKILL needs one; in ``kvroute serve`` the EPP
and Envoy die together), in front of a real Envoy from the bootstrap ``kvroute serve`` builds.
Envoy 1.40 answers a broken ext_proc stream whose request body was FULL_DUPLEX_STREAMED with a
local reply, a reset once the response started, also under ``failure_mode_allow``; the finding
was every in-flight stream cut in FailClose and FailOpen. In ``tap`` mode the EPP now ends each
stream itself once routed (``--release-routed-streams``, set by ``serve`` under FailOpen), which
Envoy takes as "processing complete": the streams then outlive the EPP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvroute.config.extproc_options import ResponseProcessing
from kvroute.gateway.bootstrap import BootstrapOptions, FailureMode, build_bootstrap
from kvroute.gateway.envoy import EnvoyProcess
from kvroute.gateway.failopen import REWRITE_HEADER, rewrites_from_settings
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.integration.test_gateway_hardening import POOL_YAML

pytestmark = [pytest.mark.integration]

TOKENS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _epp_process(server: MiniModelServer, *flags: str) -> AsyncIterator[tuple[Any, int]]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "epp", "--endpoint", server.url,
        "--bind", "127.0.0.1", "--grpc-port", str(port), "--grpc-health-port", "0",
        "--metrics-port", "0", "--secure-serving=false", "--health-checking=true", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = ""
        while "ext_proc on" not in line:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, "kvroute epp exited before it was ready"
            line = raw.decode()
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _stream(c: httpx.AsyncClient, url: str, i: int, started: asyncio.Event) -> str:
    body = {"model": "base", "prompt": f"s{i}", "max_tokens": TOKENS, "stream": True}
    got = b""
    try:
        async with c.stream("POST", url, json=body) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_bytes():
                got += chunk
                started.set()
    except httpx.HTTPError:
        return "cut after " + str(got.count(b"data: "))
    return got.decode()


@pytest.mark.parametrize(
    ("mode", "processing", "release", "survive"),
    [
        (FailureMode.FAIL_OPEN, "tap", True, True),
        (FailureMode.FAIL_CLOSE, "tap", True, True),
        (FailureMode.FAIL_OPEN, "tap", False, False),  # the finding, as it was
        (FailureMode.FAIL_OPEN, "full", False, False),  # the EPP carries the body: cannot be
    ],
    ids=["FailOpen-tap", "FailClose-tap", "FailOpen-tap-unreleased", "FailOpen-full"],
)
async def test_finding3_running_streams_outlive_a_sigkilled_epp(
    tmp_path: Path, mode: FailureMode, processing: str, release: bool, survive: bool
) -> None:
    server = MiniModelServer("s", token_delay_s=0.05)
    flags = [f"--response-processing={processing}", f"--release-routed-streams={release}".lower()]
    async with mini_pool([server]), _epp_process(server, *flags) as (epp, port):
        opts = BootstrapOptions(
            port=0,
            epp_port=port,
            epp_tls=False,
            endpoints=[("127.0.0.1", server.port)],
            failure_mode=mode,
            response_processing=processing,
        )
        async with (
            EnvoyProcess(build_bootstrap(opts), log_dir=tmp_path) as envoy,
            httpx.AsyncClient(timeout=60) as c,
        ):
            assert await envoy.wait_cluster_healthy("kvroute_epp", timeout_s=30)
            url = f"http://127.0.0.1:{envoy.port}/v1/completions"
            started = [asyncio.Event() for _ in range(3)]
            tasks = [asyncio.create_task(_stream(c, url, i, e)) for i, e in enumerate(started)]
            for e in started:  # every stream has its first token: routed, response running
                await asyncio.wait_for(e.wait(), 30)
            epp.kill()
            await epp.wait()
            texts = await asyncio.gather(*tasks)
            if survive:
                for text in texts:
                    assert text.count("data: ") == TOKENS + 1, text
                    assert text.rstrip().endswith("data: [DONE]")
            else:
                assert all(t.startswith("cut after") for t in texts), texts
            # New requests with the EPP gone: FailOpen routes round robin, FailClose is 503.
            want = 200 if mode is FailureMode.FAIL_OPEN else 503
            status = 0
            for _ in range(100):
                r = await c.post(url, json={"model": "base", "prompt": "after", "max_tokens": 1})
                status = r.status_code
                if status == want:
                    break
                await asyncio.sleep(0.1)
            assert status == want


async def test_finding3_failopen_keeps_model_rewrites_with_the_epp_down(tmp_path: Path) -> None:
    """FailOpen forgot model rewrites (404 for ``chat``). The EPP's rewrite table is in the
    generated config; Envoy applies it to requests the EPP did not route."""
    resources = tmp_path / "pool.yaml"
    resources.write_text(POOL_YAML)
    server = MiniModelServer("s", adapters=("chat-v1", "chat-v2"))
    settings = EppSettings(resources=(resources,), endpoints=(("127.0.0.1", 1),))
    rewrites = rewrites_from_settings(settings)
    assert rewrites.exact == {"chat": (("chat-v1", 100),)}
    async with mini_pool([server]):
        opts = BootstrapOptions(
            port=0,
            epp_port=_free_port(),  # nothing listens: the EPP is down
            epp_tls=False,
            endpoints=[("127.0.0.1", server.port)],
            failure_mode=FailureMode.FAIL_OPEN,
            failopen_rewrites=rewrites,
        )
        async with (
            EnvoyProcess(build_bootstrap(opts), log_dir=tmp_path) as envoy,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{envoy.port}", timeout=30) as c,
        ):
            for path, body in [
                ("/v1/completions", {"model": "chat", "prompt": "x"}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                          "model" : "chat"}),
                ("/v1/completions", {"model": "base", "prompt": "x"}),
            ]:  # fmt: skip
                r = await c.post(path, json=body)
                assert r.status_code == 200, r.text
                assert r.headers["x-sim-server"] == "s"
    assert server.seen_models == ["chat-v1", "chat-v1", "base"]
    assert server.seen_headers[0][REWRITE_HEADER] == "chat -> chat-v1"
    assert REWRITE_HEADER not in server.seen_headers[2]


async def test_released_streams_still_complete_through_the_tap_report(tmp_path: Path) -> None:
    """``serve`` under FailOpen releases every routed stream; the EPP's in-flight counts and
    completions must not suffer: Envoy's tap report completes each exchange."""
    from kvroute.gateway.gateway import Gateway

    server = MiniModelServer("s", token_delay_s=0.01)
    async with mini_pool([server]):
        settings = EppSettings(
            grpc_port=0, grpc_health_port=0, metrics_port=0, bind_host="127.0.0.1",
            endpoints=(("127.0.0.1", server.port),), health_checking=True,
            secure_serving=False, response_processing=ResponseProcessing.TAP,
        )  # fmt: skip
        gw = Gateway(
            settings=settings, failure_mode=FailureMode.FAIL_OPEN, log_dir=tmp_path,
            transport="ext_proc",  # released ext_proc streams: the lua transport has none
        )  # fmt: skip
        assert gw.settings.release_routed_streams
        async with gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            for stream in (True, False, True):
                body = {"model": "base", "prompt": "x", "max_tokens": 5, "stream": stream}
                r = await c.post("/v1/completions", json=body)
                assert r.status_code == 200
            assert gw.epp.processor.released_streams == 3
            for _ in range(500):
                if sum(e.load.inflight for e in gw.epp.datastore.endpoints()) == 0:
                    break
                await asyncio.sleep(0.01)
            assert sum(e.load.inflight for e in gw.epp.datastore.endpoints()) == 0
            assert gw.epp.processor.late_tap_reports == 0


def _replica_pids(serve_pid: int) -> list[int]:
    """``kvroute serve --epp-replicas``'s EPP children (its other child is Envoy)."""
    out = []
    for task in Path(f"/proc/{serve_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"epp" in cmdline:
                out.append(int(child))
    return out


@pytest.mark.slow  # two EPP replica processes start: ~25 s on a loaded 2-core box
async def test_finding3_serve_failopen_outlives_its_epp_replicas(tmp_path: Path) -> None:
    """``kvroute serve --failure-mode FailOpen --epp-replicas 2`` as the user runs it: the EPPs
    are child processes, the one case of ``serve`` where they can die alone. Both SIGKILLed
    while 3 streams run: the streams end with ``[DONE]`` (serve released them), and a
    ``model: chat`` request then still gets its rewrite (the table in Envoy's config)."""
    resources = tmp_path / "pool.yaml"
    resources.write_text(POOL_YAML)
    server = MiniModelServer("s", adapters=("chat-v1",), token_delay_s=0.05)
    async with mini_pool([server]):
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvroute.cli", "serve", "--endpoint", server.url,
            "--port", str(port), "--metrics-port", "0", "--log-dir", str(tmp_path),
            "--failure-mode", "FailOpen", "--epp-replicas", "2", "--resources", str(resources),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = ""
            while "gateway ready" not in line:
                raw = await asyncio.wait_for(proc.stdout.readline(), 90)
                assert raw, "serve exited before it was ready"
                line = raw.decode()
            url = f"http://127.0.0.1:{port}/v1/completions"
            async with httpx.AsyncClient(timeout=60) as c:
                for _ in range(200):  # Envoy's health checks have seen a replica
                    r = await c.post(url, json={"model": "chat", "prompt": "w", "max_tokens": 1})
                    if r.status_code == 200 and REWRITE_HEADER not in server.seen_headers[-1]:
                        break
                    await asyncio.sleep(0.1)
                started = [asyncio.Event() for _ in range(3)]
                tasks = [asyncio.create_task(_stream(c, url, i, e)) for i, e in enumerate(started)]
                for e in started:
                    await asyncio.wait_for(e.wait(), 30)
                pids = _replica_pids(proc.pid)
                assert len(pids) == 2
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                for text in await asyncio.gather(*tasks):
                    assert text.count("data: ") == TOKENS + 1, text
                    assert text.rstrip().endswith("data: [DONE]")
                for _ in range(100):  # a 503 until Envoy's health check saw both die
                    r = await c.post(url, json={"model": "chat", "prompt": "after"})
                    if r.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert r.status_code == 200, r.text
            assert server.seen_models[-1] == "chat-v1"
            assert server.seen_headers[-1][REWRITE_HEADER] == "chat -> chat-v1"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
