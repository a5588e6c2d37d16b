"""Finding 9 probe (issue 20): N closed-loop streaming clients, through the gateway or spread
client-side round-robin over the servers; prints completed requests and TTFT p50/p90/p99.

    python tests/bench/closed_loop_streams.py MODE CLIENTS SECONDS URL[,URL...]

(docs/security.md, "Finding 9", has the setup and the figures.)
"""

import asyncio
import json
import random
import sys
import time

import httpx


async def client(urls, k, stop, ttfts, fails):
    rng = random.Random(k)
    async with httpx.AsyncClient(timeout=120) as c:
        i = 0
        while time.monotonic() < stop:
            url = urls[(k + i) % len(urls)]
            i += 1
            body = {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "prompt": "hello " * rng.randint(50, 400),
                "max_tokens": rng.randint(32, 256),
                "stream": True,
                "ignore_eos": True,
            }
            t0 = time.monotonic()
            first = None
            try:
                async with c.stream("POST", url + "/v1/completions", json=body) as r:
                    async for chunk in r.aiter_bytes():
                        if first is None and b"data:" in chunk:
                            first = time.monotonic() - t0
                    if r.status_code != 200:
                        fails.append(r.status_code)
            except Exception as e:
                fails.append(type(e).__name__)
                continue
            if first is not None:
                ttfts.append(first)


async def main():
    mode, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    urls = sys.argv[4].split(",")
    stop = time.monotonic() + secs
    ttfts, fails = [], []
    await asyncio.gather(*(client(urls, k, stop, ttfts, fails) for k in range(n)))
    ttfts.sort()

    def q(p: float) -> float:
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))]

    print(
        json.dumps(
            {
                "mode": mode,
                "clients": n,
                "done": len(ttfts),
                "fails": len(fails),
                "ttft_p50": round(q(0.5), 2),
                "ttft_p90": round(q(0.9), 2),
                "ttft_p99": round(q(0.99), 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
