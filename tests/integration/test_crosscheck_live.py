"""The cross-check's live phase: real simulated servers (child process), real Envoy, in-process EPP.

One short LoRA run through the gateway with ``latency-scorer`` and full response processing:
every adapter request is served (the servers were given the workload's adapters), and the
EPP's TTFT predictor, read in-process through :class:`PredictorProbe`, learned from the
responses' first chunks. Not load-sensitive: it asserts completion and counts, no latencies.
"""

from __future__ import annotations

import pytest

from kvroute_bench.crosscheck import live_phase, make_setup
from kvroute_bench.live import LiveOptions
from kvroute_bench.predictor_error import latency_scorer_config
from kvroute_bench.workload import generate, resolve_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_lora_run_through_gateway_reports_predictor_error() -> None:
    spec = resolve_spec(
        "multi-lora",
        {
            "num_adapters": "3",
            "input_mean": "40",
            "output_mean": "8",
            "max_input": "200",
            "max_output": "20",
        },
    )
    requests = generate(spec, rate=15, duration=3.0, seed=2)
    setup = make_setup(
        "tiny",
        2,
        requests=requests,
        config_text=latency_scorer_config(),
        response_processing="full",
    )
    assert setup.loras  # the workload names adapters; the servers must serve them
    options = LiveOptions(urls=(), duration=3.0, timeout=30.0, max_requests=10**6)
    phase = await live_phase("kvroute", requests, setup, options, predictor_after=1.0)
    m = phase.metrics
    assert m.failed == 0
    assert m.completed == len(requests) > 20
    report = phase.predictor
    assert report is not None
    # Predictions exist once the predictor is warm; every observed first chunk was recorded.
    assert report["observations"] > 0
    assert report["median_abs_ttft_error"] is not None
    assert report["observations_after_mark"] is not None
    assert report["observations_after_mark"] <= report["observations"]
