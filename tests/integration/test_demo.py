"""The demo's two phases end to end on a handful of short requests: `kvroute sim` in a child
process, real Envoy + EPP for the kvroute phase, client round-robin for the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.scheduling.request import Criticality
from kvroute_bench.demo.run import plot, run_phase
from kvroute_bench.demo.scenario import for_round_robin
from kvroute_bench.workload import BenchRequest

pytestmark = pytest.mark.integration


def _requests() -> list[BenchRequest]:
    return [
        BenchRequest("a", 0.0, tuple(range(1000, 1040)), 4, "assistant", Criticality.CRITICAL),
        BenchRequest("b", 0.1, tuple(range(2000, 2030)), 4, "review", Criticality.STANDARD),
        BenchRequest(
            "c", 0.2, tuple(range(3000, 3050)), 4, "batch-translate", Criticality.SHEDDABLE
        ),
    ]


async def test_both_phases_complete_every_request(tmp_path: Path) -> None:
    reqs = _requests()
    kv = await run_phase("kvroute", reqs, 2, tmp_path, request_timeout=30)
    rr = await run_phase("rr", for_round_robin(reqs, seed=0), 2, tmp_path, request_timeout=30)
    for result in (kv, rr):
        total = result.by_class["all"]
        assert (total.sent, total.ok, total.shed, total.failed) == (3, 3, 0, 0)
        assert set(result.by_class) == {"all", "Critical", "Standard", "Sheddable"}
        assert 0 < total.ttft_p50 <= total.e2e_p90
    png = tmp_path / "demo.png"
    plot([kv, rr], png)
    assert png.stat().st_size > 1000
