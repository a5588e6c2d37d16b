"""``kvroute serve`` and ``kvroute epp`` as a user runs them: processes, signals, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(t) for t in (task / "children").read_text().split())
    return out


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kvroute.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_serve_prints_url_routes_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = MiniModelServer("cli")
    async with mini_pool([server]):
        port = _free_port()
        proc = await _start(
            "serve", "--endpoint", server.url, "--port", str(port), "--metrics-port", "0",
            "--log-dir", str(tmp_path),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert f"gateway ready at http://127.0.0.1:{port}" in line
            detail = (await proc.stdout.readline()).decode()
            assert "Envoy log:" in detail
            (envoy_pid,) = _children(proc.pid)
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.post(
                    f"http://127.0.0.1:{port}/v1/completions", json={"model": "m", "prompt": "x"}
                )
            assert r.status_code == 200
            assert r.headers["x-sim-server"] == "cli"
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0
        rest = (await proc.stdout.read()).decode()
        assert "stopped" in rest
        assert _gone(envoy_pid)
        assert _envoy_logs(tmp_path)  # Envoy logged to the file, not the terminal


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its (exited) parent's parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _envoy_logs(directory: Path) -> list[Path]:
    return list(directory.glob("envoy-*.log"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve"], "no endpoints"),
        (["epp", "--endpoint", "http://nowhere"], "expected http://HOST:PORT"),
        (
            ["serve", "--endpoint", "http://127.0.0.1:9", "--expose-path-prefix", "v1"],
            "--expose-path-prefix 'v1': a path prefix starts with /",
        ),
    ],
    ids=["serve-without-endpoints", "epp-bad-endpoint", "serve-bad-path-prefix"],
)
async def test_configuration_errors_exit_2_with_a_message(args: list[str], message: str) -> None:
    proc = await _start(*args)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert message in out.decode()


async def test_epp_serves_health_and_stops_on_sigint() -> None:
    server = MiniModelServer("epp")
    async with mini_pool([server]):
        grpc_port, health_port, metrics_port = _free_port(), _free_port(), _free_port()
        proc = await _start(
            "epp", "--endpoint", server.url, "--bind", "127.0.0.1",
            "--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port),
            "--metrics-port", str(metrics_port),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert f"ext_proc on 127.0.0.1:{grpc_port} (TLS)" in line
            async with httpx.AsyncClient() as c:
                text = (await c.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert "inference_pool_ready_pods" in text
        finally:
            os.kill(proc.pid, signal.SIGINT)
            rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``. A connect to a free
    port in the ephemeral range can be given that same port as its source and connect to itself
    (TCP simultaneous open): that is not a listener."""
    import socket

    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
        return bool(s.getsockname() != s.getpeername())


async def test_finding2_envoy_dies_with_a_sigkilled_serve(tmp_path: Path) -> None:
    """Issue 20 finding 2: SIGKILL of ``kvroute serve`` left its Envoy running, holding the port
    (and serving 503s next to a second ``serve``). Envoy now gets SIGKILL from the kernel when
    its parent dies, and the port can be bound again."""

    port = _free_port()
    proc = await _start(
        "serve", "--endpoint", "http://127.0.0.1:9", "--port", str(port), "--metrics-port", "0",
        "--log-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.stdout is not None
    line = ""
    while "gateway ready" not in line:  # a WARNING about the dead endpoint may come first
        raw = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert raw, "serve exited before it was ready"
        line = raw.decode()
    (envoy_pid,) = _children(proc.pid)
    proc.kill()
    await proc.wait()
    for _ in range(200):
        if _gone(envoy_pid):
            break
        await asyncio.sleep(0.05)
    assert _gone(envoy_pid)
    # Nothing listens there any more (a connect, not a bind: under load another connection may
    # hold the same local port number as its ephemeral source port).
    assert not _listening(port)


async def test_finding2_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    """A second ``serve`` on a port in use used to print "ready" (both bound it)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await _start(
            "serve", "--endpoint", "http://127.0.0.1:9", "--port", str(port),
            "--metrics-port", "0", "--log-dir", str(tmp_path),
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out
    text = out.decode()
    assert f"gateway port 127.0.0.1:{port} is already in use" in text
    assert "gateway ready" not in text


async def test_finding3_sigterm_drains_20_running_streams(tmp_path: Path) -> None:
    """Issue 20 finding 3: SIGTERM of ``kvroute serve`` with 20 streams in flight cut all 20
    after their 200 (no ``[DONE]``). ``serve`` as the user runs it: SIGTERM once every stream
    has its first token; new connections are refused at once, the 20 run to ``[DONE]``, and
    the drain ends within ``--drain-timeout`` (serve logs a WARNING when it has to cut)."""
    tokens = 80  # 8 s streams: they outlast a slow listener close on a loaded box
    server = MiniModelServer("drain", token_delay_s=0.1)
    async with mini_pool([server]):
        port = _free_port()
        proc = await _start(
            "serve", "--endpoint", server.url, "--port", str(port), "--metrics-port", "0",
            "--log-dir", str(tmp_path), "--drain-timeout", "120s",
        )  # fmt: skip
        assert proc.stdout is not None
        line = ""
        while "gateway ready" not in line:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, "serve exited before it was ready"
            line = raw.decode()
        url = f"http://127.0.0.1:{port}/v1/completions"
        started = [asyncio.Event() for _ in range(20)]

        async def stream(i: int) -> str:
            body = {"model": "m", "prompt": f"d{i}", "max_tokens": tokens, "stream": True}
            got = b""
            async with (
                httpx.AsyncClient(timeout=120) as c,  # one connection per stream
                c.stream("POST", url, json=body) as r,
            ):
                assert r.status_code == 200
                async for chunk in r.aiter_bytes():
                    got += chunk
                    started[i].set()
            return got.decode()

        try:
            tasks = [asyncio.create_task(stream(i)) for i in range(20)]
            for e in started:
                await asyncio.wait_for(e.wait(), 60)
            proc.send_signal(signal.SIGTERM)
            refused = False
            # The listener closes while the streams still run. Probed with bare TCP connects: a
            # request sent before the close would be held by flow control (one saturated server)
            # and tell nothing about the listener.
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    refused = True
                    break
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.05)
            assert refused
            assert not all(t.done() for t in tasks)  # refused while streams were in flight
            texts = await asyncio.gather(*tasks)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 150)
        for text in texts:
            assert text.count("data: ") == tokens + 1
            assert text.rstrip().endswith("data: [DONE]")
        assert rc == 0
        rest = (await proc.stdout.read()).decode()
        assert "stopped" in rest
        assert "drain timed out" not in rest
