"""N EPP replicas as child processes (``kvroute epp``), syncing over CurveZMQ on loopback.

What ``kvroute serve --epp-replicas N`` runs behind its one Envoy: each replica is a separate
process (so one can die alone), binds its ext_proc/health/metrics/sync ports on loopback, and
lists every other replica as a ``--peer``. A fresh pool key is written to ``log_dir`` (mode
0600). Replica ``i`` is ``epp-i``; its output goes to ``log_dir/epp-i.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from kvroute.errors import ConfigError

READY_PREFIX = "kvroute epp: ext_proc on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Replica:
    name: str
    grpc_port: int
    health_port: int
    metrics_port: int
    sync_port: int
    process: asyncio.subprocess.Process | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class EppReplicaSet:
    """``async with EppReplicaSet(3, epp_args, log_dir) as rs: rs.endpoints`` (ext_proc)."""

    def __init__(
        self, count: int, epp_args: Sequence[str], log_dir: Path, *, ready_timeout_s: float = 30
    ) -> None:
        if count < 1:
            raise ConfigError(f"--epp-replicas must be at least 1, got {count}")
        self.log_dir = log_dir
        self.epp_args = list(epp_args)
        self.ready_timeout_s = ready_timeout_s
        self.replicas = [
            Replica(f"epp-{i}", free_port(), free_port(), free_port(), free_port())
            for i in range(count)
        ]

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", r.grpc_port) for r in self.replicas]

    def _key(self) -> Path:
        keys = self.log_dir / "sync-keys"
        keys.mkdir(parents=True, exist_ok=True)
        _, secret = zmq.auth.create_certificates(keys, "pool")
        os.chmod(secret, 0o600)
        return Path(secret)

    def argv(self, r: Replica, key: Path) -> list[str]:
        peers = [f"--peer=tcp://127.0.0.1:{o.sync_port}" for o in self.replicas if o is not r]
        return [
            sys.executable, "-m", "kvroute.cli", "epp", *self.epp_args,
            "--bind", "127.0.0.1",
            f"--grpc-port={r.grpc_port}", f"--grpc-health-port={r.health_port}",
            f"--metrics-port={r.metrics_port}", "--secure-serving=false",
            "--health-checking=true", f"--sync-port={r.sync_port}", *peers,
            f"--sync-key-file={key}", f"--replica-id={r.name}",
        ]  # fmt: skip

    async def __aenter__(self) -> EppReplicaSet:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        key = self._key()
        try:
            for r in self.replicas:
                log = (self.log_dir / f"{r.name}.log").open("wb")
                r.process = await asyncio.create_subprocess_exec(
                    *self.argv(r, key),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                log.close()
            async with asyncio.timeout(self.ready_timeout_s):
                for r in self.replicas:
                    await self._ready(r)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _ready(self, r: Replica) -> None:
        assert r.process is not None
        assert r.process.stdout is not None
        while True:
            line = (await r.process.stdout.readline()).decode()
            if not line:
                raise ConfigError(f"EPP replica {r.name} exited; see {self.log_dir}/{r.name}.log")
            if line.startswith(READY_PREFIX):
                return

    def kill(self, index: int) -> None:
        """SIGKILL one replica (tests: a replica dying mid-load)."""
        p = self.replicas[index].process
        if p is not None and p.returncode is None:
            p.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        for r in self.replicas:
            if r.alive and r.process is not None:
                r.process.send_signal(signal.SIGTERM)
        for r in self.replicas:
            if r.process is None:
                continue
            try:
                async with asyncio.timeout(40):
                    await r.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    r.process.kill()
                await r.process.wait()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
