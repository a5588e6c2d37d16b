"""Live measurement: EPP memory with concurrent large request bodies (issue 20, finding 8).

Run (about 30 s per budget; figures go to ``docs/benchmarks.md``)::

    .venv/bin/python -m tests.bench.body_budget_rss --budget 268435456 --bodies 8

``kvroute serve`` runs as a child process (its EPP is that process, its Envoy a grandchild) in
front of one ``MiniModelServer`` in this process; ``--bodies`` requests with a 60 MB prompt are
sent at once. Reported: the EPP's RSS before, its peak (``VmHWM`` of the serve process, which
does not include Envoy), and the statuses (503 = over ``--max-buffered-body-bytes``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys

import httpx

from tests.integration.conftest import MiniModelServer, mini_pool


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def measure(budget: int, bodies: int, prompt_mb: int) -> str:
    server = MiniModelServer("s")
    async with mini_pool([server]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvroute.cli", "serve", "--endpoint", server.url,
            "--port", str(port), "--metrics-port", "0", "--log-dir", ".kvroute",
            "--max-buffered-body-bytes", str(budget), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        await proc.stdout.readline()  # "gateway ready"
        body = json.dumps({"model": "base", "prompt": "x" * (prompt_mb << 20), "max_tokens": 1})
        try:
            async with httpx.AsyncClient(timeout=300) as c:
                url = f"http://127.0.0.1:{port}/v1/completions"
                await c.post(url, json={"model": "base", "prompt": "warm"})
                before = _status_mb(proc.pid, "VmRSS")
                sends = (c.post(url, content=body.encode()) for _ in range(bodies))
                results = await asyncio.gather(*sends, return_exceptions=True)
                peak = _status_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            await proc.wait()
    codes = sorted(str(getattr(r, "status_code", type(r).__name__)) for r in results)
    return (
        f"--max-buffered-body-bytes {budget}: {bodies} x {prompt_mb} MB bodies, EPP RSS before "
        f"{before:.0f} MB, peak {peak:.0f} MB, statuses {' '.join(codes)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=256 << 20)
    p.add_argument("--bodies", type=int, default=8)
    p.add_argument("--prompt-mb", type=int, default=60)
    args = p.parse_args()
    print(asyncio.run(measure(args.budget, args.bodies, args.prompt_mb)))


if __name__ == "__main__":
    main()
