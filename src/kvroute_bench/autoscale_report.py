"""``kvroute bench autoscale``: signals x targets on one trace, as JSON, Markdown and a plot.

Every (signal, target) pair runs the same requests through :func:`~kvroute_bench.autoscale.
run_autoscaled`. Per signal the report picks the cheapest setting (fewest replica-hours) that
reaches the attainment goal (99 % of requests within the TTFT SLO), or, when none does, the one
with the highest attainment; the plot shows those picks: replicas (desired) over time and the
p90 TTFT of each 30 s bucket of arrivals, with the offered load behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kvroute_bench.autoscale import AutoscaleResult, TraceSpec


def best_per_signal(results: Sequence[AutoscaleResult], goal: float) -> dict[str, AutoscaleResult]:
    """signal -> its cheapest run meeting ``goal``, else its best-attaining run."""
    out: dict[str, AutoscaleResult] = {}
    for signal in dict.fromkeys(r.signal for r in results):
        runs = [r for r in results if r.signal == signal]
        meeting = [r for r in runs if r.slo_attainment >= goal]
        if meeting:
            out[signal] = min(meeting, key=lambda r: r.replica_hours)
        else:
            out[signal] = max(runs, key=lambda r: (r.slo_attainment, -r.replica_hours))
    return out


def markdown(
    results: Sequence[AutoscaleResult], goal: float, slo_ttft: float, command: str = ""
) -> str:
    best = best_per_signal(results, goal)
    lines = [
        f"TTFT SLO {slo_ttft:g} s; goal: {goal:.0%} of requests within it.",
        "",
        "| signal @ target | SLO attainment | p90 TTFT (s) | p99 TTFT (s) | replica-hours | "
        "peak replicas | pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pick = "**best**" if best.get(r.signal) is r else ""
        lines.append(
            f"| {r.label} | {r.slo_attainment:.2%} | {r.ttft_p90:.2f} | {r.ttft_p99:.2f} | "
            f"{r.replica_hours:.2f} | {r.peak_replicas} | {pick} |"
        )
    if command:
        lines += ["", f"`{command}`"]
    return "\n".join(lines) + "\n"


def write_json(path: Path, results: Sequence[AutoscaleResult], meta: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    doc = {"meta": meta, "results": [clean(asdict(r)) for r in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def plot(
    path: Path, results: Sequence[AutoscaleResult], trace: TraceSpec, goal: float, slo: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_per_signal(results, goal)
    fig, (ax_r, ax_t) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ts = list(range(0, int(trace.duration) + 1, 5))
    load = ax_r.twinx()
    load.fill_between(ts, [trace.rate_at(t) for t in ts], color="0.9", step="mid")
    load.set_ylabel("offered requests/s")
    ax_r.set_zorder(load.get_zorder() + 1)
    ax_r.patch.set_visible(False)
    for signal, r in best.items():
        label = f"{r.label}: {r.slo_attainment:.1%} in SLO, {r.replica_hours:.2f} replica-h"
        ax_r.step([s[0] for s in r.series], [s[1] for s in r.series], where="post", label=label)
        ax_t.plot([p[0] for p in r.ttft_p90_series], [p[1] for p in r.ttft_p90_series],
                  label=signal)  # fmt: skip
    ax_r.set_ylabel("replicas (desired)")
    ax_r.legend(loc="upper left", fontsize=8)
    ax_t.axhline(slo, color="k", linestyle=":", linewidth=1, label="TTFT SLO")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("p90 TTFT of arrivals (s)")
    ax_t.set_xlabel("virtual time (s)")
    ax_t.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"HPA on each signal, {trace.shape} trace (best setting per signal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
