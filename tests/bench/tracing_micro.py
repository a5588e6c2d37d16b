"""In-process cost of one request through the EPP's state machine and real director, with
tracing off, at 1 % and at 100 % sampling (real OTLP/gRPC export to a receiver in a child
process), and with the live page's decision recording on (as while a page is open).

Run (about 1 minute)::

    .venv/bin/python -m tests.bench.tracing_micro

Each configuration runs the same request (1 KB body, 8 endpoints, the default scheduling
profile) followed by a JSON response, ``--n`` times, interleaved over ``--rounds`` rounds; CPU
is this process's ``time.process_time()`` (so the SDK's export thread counts), per request.
The span exporter is flushed inside the timed region.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from kvroute.app import build_director_backend
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.extproc.director_backend import DirectorBackend
from kvroute.extproc.stream import ExtProcStream, ResponseProcessing, StreamOptions
from kvroute.observability.metrics import EppMetrics
from kvroute.observability.tracing import Tracing, TracingConfig
from kvroute.settings import EppSettings
from tests.bench.test_extproc_bench import JSON_MESSAGE, REQ_BODY, REQ_HEADERS, RESP_HEADERS_JSON
from tests.bench.tracing_cost import receiver


def _backend(tracing: Tracing | None) -> tuple[DirectorBackend, EppMetrics]:
    store = Datastore()
    for i in range(8):
        store.upsert_endpoint(f"ep{i}", f"10.0.0.{i}", 8000)
        store.update_metrics(f"ep{i}", EndpointMetrics(waiting_queue_size=i, updated_at=1.0))
    settings = EppSettings(endpoints=(("10.0.0.1", 8000),), secure_serving=False)
    metrics = EppMetrics("bench")
    built = asyncio.run(build_director_backend(settings, store, metrics))
    backend = built.backend
    assert isinstance(backend, DirectorBackend)
    backend._tracing = tracing
    return backend, metrics


def _run(backend: DirectorBackend, n: int) -> None:
    opts = StreamOptions(ResponseProcessing.FULL)
    for _ in range(n):
        s = ExtProcStream(backend, opts)
        s.receive(REQ_HEADERS)
        s.receive(REQ_BODY)
        s.receive(RESP_HEADERS_JSON)
        s.receive(JSON_MESSAGE)
        s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with receiver() as otlp:
        configs: dict[str, Any] = {}
        configs["tracing off"] = (_backend(None), None)
        for label, ratio in (("tracing 1 %", 0.01), ("tracing 100 %", 1.0)):
            t = Tracing(TracingConfig(enabled=True, endpoint=otlp, sampling_ratio=ratio))
            configs[label] = (_backend(t), t)
        (page_backend, page_metrics) = _backend(None)
        page_metrics.recent.watchers = 1
        configs["decisions recorded (page open)"] = ((page_backend, page_metrics), None)
        results: dict[str, list[float]] = {k: [] for k in configs}
        for (backend, _m), _t in configs.values():
            _run(backend, 200)  # warm up
        for _ in range(args.rounds):
            for name, ((backend, _m), tracing) in configs.items():
                c0 = time.process_time()
                _run(backend, args.n)
                if tracing is not None:
                    tracing.flush()
                results[name].append((time.process_time() - c0) / args.n * 1e6)
        for _, tracing in configs.values():
            if tracing is not None:
                tracing.shutdown()
    base = statistics.median(results["tracing off"])
    print(f"{'config':34} {'median us/req':>14} {'min':>8} {'max':>8} {'x off':>6}")
    for name, xs in results.items():
        med = statistics.median(xs)
        print(f"{name:34} {med:14.1f} {min(xs):8.1f} {max(xs):8.1f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
