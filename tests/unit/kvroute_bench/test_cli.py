"""``kvroute bench`` through the real entry point: a tiny sweep writes JSON, Markdown and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute.cli import main


def test_cluster_sweep_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "bench", "cluster", "--workload", "sharegpt",
            "--param", "input_mean=40", "--param", "output_mean=8",
            "--param", "max_input=200", "--param", "max_output=30",
            "--profile", "tiny", "--replicas", "2", "--qps-sweep", "30,60",
            "--duration", "1.5", "--drain", "5", "--seed", "2",
            "--policies", "round-robin,p2c,kvroute,oracle,pooled", "--quiet", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert [s["offered_qps"] for s in results["stages"]] == [30.0, 60.0]
    assert set(results["stages"][0]["policies"]) == {
        "round-robin", "p2c", "kvroute", "oracle", "pooled"
    }  # fmt: skip
    assert results["meta"]["seed"] == 2
    assert "kvroute bench cluster" in results["meta"]["command"]
    assert out.with_suffix(".md").read_text().startswith("### ")
    assert out.with_suffix(".png").stat().st_size > 10_000
    # and the plot subcommand re-renders from the JSON alone
    assert (
        main(["bench", "plot", str(out.with_suffix(".json")), "--out", str(tmp_path / "re")]) == 0
    )
    assert (tmp_path / "re.png").exists()


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        main(["bench", "cluster", "--profile", "tiny", "--qps-sweep", "1", "--duration", "0.5",
              "--replicas", "1", "--policies", "nope", "--quiet"])  # fmt: skip
