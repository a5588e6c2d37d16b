"""A real Prometheus server for tests (Debian's ``prometheus`` package).

:func:`prometheus_binary` finds it, installing it with ``apt-get`` when missing and running as
root; the calling test skips with the printed reason only when that is impossible.
:class:`PrometheusServer` runs it on loopback with a scrape config written by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml


def prometheus_binary() -> tuple[str | None, str]:
    """(path, "") or (None, why it is unavailable)."""
    found = shutil.which("prometheus")
    if found:
        return found, ""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None, "prometheus is not installed and apt-get (as root) is not available"
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "prometheus"]):
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"installing prometheus failed: {' '.join(cmd)}: {exc}"
    found = shutil.which("prometheus")
    return (found, "") if found else (None, "apt-get installed prometheus but it is not on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """``async with PrometheusServer(binary, tmp, jobs) as prom: await prom.query(q)``.

    ``jobs``: job name -> ``host:port`` targets, scraped every ``interval_s``.
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        jobs: dict[str, Sequence[str]],
        interval_s: float = 1.0,
    ) -> None:
        self._binary = binary
        self._dir = workdir
        self._jobs = jobs
        self._interval = interval_s
        self.port = _free_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._log: Any = None
        self._client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10.0)

    async def __aenter__(self) -> PrometheusServer:
        interval = f"{int(self._interval * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self._jobs.items()
            ],
        }
        cfg = self._dir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self._log = log = (self._dir / "prometheus.log").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            stdout=log,
            stderr=log,
        )
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await self._client.get("/-/ready")).status_code == 200:
                    return self
            if self._proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        await self.__aexit__(None, None, None)
        raise AssertionError(f"prometheus did not start; see {self._dir / 'prometheus.log'}")

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._log is not None:
            self._log.close()

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, now or at Unix time ``at`` (as a dashboard panel evaluates a past
        point of its time range)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        r = await self._client.get("/api/v1/query", params=params)
        doc = r.json()
        assert doc.get("status") == "success", (expr, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    async def targets_up(self) -> int:
        r = await self.query("sum(up)")
        return int(float(r[0]["value"][1])) if r else 0
