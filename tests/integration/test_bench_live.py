"""The live load generator against real simulated model servers on loopback."""

from __future__ import annotations

import pytest

from kvroute_bench.live import LiveOptions, run_live, summarize_live
from kvroute_bench.metrics import Slo
from kvroute_bench.workload import generate, resolve_spec
from kvroute_sim.config import load_server_config
from kvroute_sim.server.app import SimServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_generator_drives_two_sim_servers_client_side_round_robin() -> None:
    servers = [SimServer(load_server_config(profile="tiny"), name=f"sim-{i}") for i in range(2)]
    for s in servers:
        await s.start()
    try:
        spec = resolve_spec(
            "sharegpt",
            {"input_mean": "40", "output_mean": "10", "max_input": "200", "max_output": "30"},
        )
        requests = generate(spec, rate=20, duration=2.0, seed=1)
        options = LiveOptions(urls=tuple(s.url for s in servers), duration=2.0, timeout=20)
        records, end = await run_live(requests, options)
    finally:
        for s in servers:
            await s.stop()
    assert len(records) == len(requests) > 20
    for r in records:
        assert r.finish is not None, r
        assert r.output_tokens == r.request.output_len  # ignore_eos + server-reported usage
        assert r.first_token is not None
        assert 0 < r.ttft(end) < 1.0
    # client-side round-robin: both servers did half the work
    done = [s.engine.num_finished for s in servers]
    assert abs(done[0] - done[1]) <= 1
    m = summarize_live(records, qps=20, end=end, window=end, slo=Slo())
    assert m.completed == len(records)
    assert m.failed == 0
