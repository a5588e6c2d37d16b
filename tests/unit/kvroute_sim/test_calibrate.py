"""Calibration guard: the default profile stays within ±15% of vLLM's measured curve (§2.4).

Short virtual-time runs of the calibration workload (the full table is in docs/simulator.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvroute_sim.calibrate import chunked_config, no_chunk_config, run_point, shared_prefix_requests
from kvroute_sim.config import EngineConfig


@pytest.mark.parametrize(
    ("config", "qps", "achieved", "itl_ms"),
    [
        (no_chunk_config, 31.0, 31.2, 8.1),
        (no_chunk_config, 153.0, 102.0, 19.5),
        (chunked_config, 128.0, 126.5, 10.0),
        (chunked_config, 254.0, 171.5, 11.7),
    ],
    ids=["no-chunk-light", "no-chunk-saturated", "chunked-light", "chunked-saturated"],
)
def test_throughput_and_itl_within_15_percent(
    config: Callable[[], EngineConfig], qps: float, achieved: float, itl_ms: float
) -> None:
    point = run_point(config(), qps, duration=25.0, warmup=5.0)
    assert point.achieved_qps == pytest.approx(achieved, rel=0.15)
    assert point.itl * 1e3 == pytest.approx(itl_ms, rel=0.15)


def test_light_load_ttft_is_about_30ms_and_prefix_hits_match_the_workload() -> None:
    point = run_point(chunked_config(), 20.0, duration=20.0, warmup=5.0)
    assert point.ttft_p50 * 1e3 == pytest.approx(31.0, rel=0.15)
    assert point.hit_rate == pytest.approx(128 / 204, abs=0.02)


def test_workload_shape() -> None:
    reqs = shared_prefix_requests(50.0, 10.0, seed=3)
    assert 350 < len(reqs) < 650
    assert {r.num_prompt_tokens or len(r.prompt_token_ids or ()) for r in reqs} == {204}
    assert len({tuple((r.prompt_token_ids or ())[:128]) for r in reqs}) == 10
