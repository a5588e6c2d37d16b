"""Live measurement: EPP peak RSS per 20 MB data-URL image request in flight (issue 14).

Run (figures go to ``docs/benchmarks.md``, "Multimodal (issue 14)")::

    PYTHONPATH=src .venv/bin/python -m tests.bench.mm_rss --image-mb 20 --concurrent 1 4

``kvroute serve`` runs as a child process (the EPP is that process, Envoy a grandchild, not
counted) in front of one ``MiniModelServer`` in this process. For each concurrency a fresh EPP
is started, warmed with one small request (``--warm-large``: then one request like those
measured, so one-time allocator growth is not counted), then sent that many requests at once, each
with a distinct ``--image-mb`` data-URL image (distinct bytes, so nothing is shared). Reported:
the body size, RSS before, ``VmHWM`` after, and the growth per request as a multiple of the
body. A text prompt of the same body size is measured the same way for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys

import httpx

from tests.bench.body_budget_rss import _status_mb
from tests.integration.conftest import MiniModelServer, mini_pool


def _image_body(mb: int, seed: int) -> bytes:
    raw = bytes([seed]) + os.urandom(16) + b"\x89PNG" * ((mb << 20) // 4)
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return json.dumps(
        {"model": "base", "max_tokens": 1, "messages": [{"role": "user", "content": content}]}
    ).encode()


def _text_body(size: int, seed: int) -> bytes:
    prompt = f"{seed} " + "x" * size
    return json.dumps({"model": "base", "max_tokens": 1, "prompt": prompt}).encode()


async def measure(kind: str, image_mb: int, concurrent: int, warm_large: bool) -> str:
    server = MiniModelServer("s")
    async with mini_pool([server]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvroute.cli", "serve", "--endpoint", server.url,
            "--port", str(port), "--metrics-port", "0", "--log-dir", ".kvroute",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        await proc.stdout.readline()  # "gateway ready"
        bodies = [_image_body(image_mb, i) for i in range(concurrent)]
        if kind == "text":
            bodies = [_text_body(len(bodies[0]), i) for i in range(concurrent)]
        path = "/v1/chat/completions" if kind == "image" else "/v1/completions"
        try:
            async with httpx.AsyncClient(timeout=300) as c:
                url = f"http://127.0.0.1:{port}{path}"
                warm = {"model": "base", "prompt": "warm", "max_tokens": 1}
                await c.post(f"http://127.0.0.1:{port}/v1/completions", json=warm)
                if warm_large:  # one request of the same kind first: steady state, not cold
                    await c.post(
                        url,
                        content=_image_body(image_mb, 255)
                        if kind == "image"
                        else _text_body(len(bodies[0]), 255),
                    )
                before = _status_mb(proc.pid, "VmRSS")
                results = await asyncio.gather(
                    *(c.post(url, content=b) for b in bodies), return_exceptions=True
                )
                peak = _status_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            await proc.wait()
    codes = " ".join(sorted(str(getattr(r, "status_code", type(r).__name__)) for r in results))
    body_mb = len(bodies[0]) / (1 << 20)
    per = (peak - before) / concurrent
    return (
        f"{kind:5} x{concurrent} ({'warm' if warm_large else 'cold'}): body {body_mb:.1f} MB, "
        f"EPP RSS before {before:.0f} MB, "
        f"peak {peak:.0f} MB, growth per request {per:.0f} MB = {per / body_mb:.2f}x body, "
        f"statuses {codes}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-mb", type=int, default=20)
    p.add_argument("--concurrent", type=int, nargs="+", default=[1, 4])
    p.add_argument("--kinds", nargs="+", default=["image", "text"])
    p.add_argument(
        "--warm-large", action="store_true", help="send one body of the same size before measuring"
    )
    args = p.parse_args()
    for n in args.concurrent:
        for kind in args.kinds:
            print(asyncio.run(measure(kind, args.image_mb, n, args.warm_large)), flush=True)


if __name__ == "__main__":
    main()
