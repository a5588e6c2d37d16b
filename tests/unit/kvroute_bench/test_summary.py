"""``kvroute bench summary``: per-preset cells over stages and the gap closed to the oracle."""

from __future__ import annotations

from typing import Any

from kvroute_bench.summary import summary


def _stage(rr: float, pol: float, orc: float) -> dict[str, Any]:
    def m(t: float) -> dict[str, float]:
        return {"ttft_p90": t, "e2e_p90": 10 * t, "ntpot_p90": t / 100, "output_tok_s": 1000.0}

    return {"policies": {"round-robin": m(rr), "kvroute": m(pol), "oracle": m(orc)}}


def test_cells_list_every_stage_and_gaps_skip_no_difference_stages() -> None:
    res = {
        "meta": {"policies": ["round-robin", "kvroute", "oracle"], "saturation_qps": 12.5},
        "stages": [_stage(0.100, 0.100, 0.099), _stage(0.400, 0.150, 0.100)],
    }
    text = summary([("demo", res)], metrics=["ttft_p90"])
    assert "| demo | 12.5 | 100 / 400 | 100 / 150 | 99 / 100 |" in text
    # stage 1: oracle within 3% of RR -> "-"; stage 2: (400 - 150) / (400 - 100) = 0.83
    assert text.count("| demo | - / 0.83 |") == 2  # TTFT and e2e gaps
    assert "p90 e2e (s)" not in text.split("Gap closed")[0]  # only the asked-for metric
