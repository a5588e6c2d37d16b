"""Memory a routed request leaves behind after its tap report (issue 19, fifth round).

Run::

    PYTHONPATH=src .venv/bin/python -m tests.bench.tap_hold_memory [prompt_bytes]

The ``--transport lua`` path in process: ``LuaRouteShell.decide`` with the default profile over
8 endpoints, then the report through ``ExternalProcessor.handle_tap_report``; tracemalloc's
traced size after 2,000 such requests, minus before, per request, with the bounded buffers
(plugin timings, decision log) already filled by a warm-up.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc

from kvroute.app import build_director_backend
from kvroute.config.epp_config import default_config_text
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.extproc.lua_route import LuaRouteShell
from kvroute.extproc.server import ExternalProcessor
from kvroute.extproc.stream import StreamOptions
from kvroute.observability.metrics import EppMetrics
from kvroute.plugins.registry import default_registry
from kvroute.settings import EppSettings

REQUESTS = 2000


async def retained_per_request(prompt_bytes: int) -> tuple[float, int]:
    store = Datastore()
    for i in range(8):
        store.upsert_endpoint(f"ep{i}", f"10.0.0.{i}", 8000)
        store.update_metrics(f"ep{i}", EndpointMetrics(updated_at=time.time()))
    config = default_config_text(default_registry())
    settings = EppSettings(
        endpoints=(("10.0.0.1", 8000),), secure_serving=False, config_text=config
    )
    built = await build_director_backend(settings, store, EppMetrics("bench"))
    options = StreamOptions(ResponseProcessing.TAP)
    processor = ExternalProcessor(built.backend, options)
    shell = LuaRouteShell(built.backend, options, processor.hold_for_report)
    body = json.dumps({"model": "base", "prompt": "x" * prompt_bytes, "max_tokens": 16})
    call = b"B\n:method:POST\n:path:/v1/completions\nx-request-id:r\n\n" + body.encode()
    usage = {"prompt_tokens": 40, "completion_tokens": 16}
    resp = json.dumps({"model": "base", "choices": [{"text": "hi"}], "usage": usage}).encode()

    async def one() -> None:
        await shell.decide(call)
        tap_id = next(reversed(processor._tapped))
        head = [tap_id, "whole", str(len(resp)), "12.5", "200", "0", "", str(len(resp))]
        processor.handle_tap_report("\n".join(head).encode() + b"\n" + resp)

    for _ in range(12000):  # fills the bounded buffers (timings, decision log)
        await one()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(REQUESTS):
        await one()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    return (after - before) / REQUESTS, len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]


def main() -> None:
    prompt = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    per_request, timers = asyncio.run(retained_per_request(prompt))
    print(f"prompt {prompt} B: {per_request:.0f} bytes retained per request; loop timers {timers}")


if __name__ == "__main__":
    main()
