"""Results JSON, Markdown and plots, from a real (tiny) sweep."""

from __future__ import annotations

import json
from pathlib import Path

from kvroute_bench.cluster import RunConfig
from kvroute_bench.report import build_results, markdown, plot, write_json
from kvroute_bench.sim_replica import replica_config
from kvroute_bench.sweep import SweepSpec, meta_for, run_sweep
from kvroute_bench.workload import resolve_spec


def test_results_markdown_and_plot(tmp_path: Path) -> None:
    spec = SweepSpec(
        workload=resolve_spec(
            "sharegpt",
            {"input_mean": "40", "output_mean": "8", "max_input": "200", "max_output": "30"},
        ),
        engine=replica_config("tiny"),
        replicas=2,
        policies=("round-robin", "kvroute", "oracle"),
        qps=(40.0, 120.0),
        duration=1.5,
        run=RunConfig(warmup=0.3),
    )
    stages = run_sweep(spec)
    results = build_results(
        meta_for(spec, title="tiny", command="kvroute bench cluster ..."),
        [(s.offered_qps, s.by_policy) for s in stages],
    )
    # gap closed is reported for kvroute (not for the baselines), one value per stage
    assert list(results["gap_closed"]) == ["kvroute"]
    assert all(len(v) == 2 for v in results["gap_closed"]["kvroute"].values())
    path = tmp_path / "r.json"
    write_json(results, path)
    loaded = json.loads(path.read_text())
    assert loaded["stages"][1]["policies"]["oracle"]["arrived"] > 0
    md = markdown(loaded)
    assert "**Offered 120 QPS**" in md
    assert "| kvroute | ntpot_p90 |" in md
    plot(loaded, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
