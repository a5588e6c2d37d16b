"""Results as data (JSON), as a Markdown summary and as PNG plots (matplotlib, Agg backend).

The JSON layout is ``{"meta": {...}, "stages": [{"offered_qps": q, "policies": {name:
StageMetrics}}], "gap_closed": {policy: {metric: [per stage]}}}``; Markdown and plots are
rendered from that same dict, so a saved JSON can be re-plotted without re-running anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvroute_bench.metrics import StageMetrics, gap_closed

GAP_METRICS = ("ntpot_p90", "ttft_p90", "e2e_p90")
BASELINE_NAMES = frozenset({"random", "round-robin", "least-requests", "p2c", "oracle", "pooled"})


def build_results(
    meta: Mapping[str, Any],
    stages: Sequence[tuple[float, Mapping[str, StageMetrics]]],
    cache_bounds: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any]:
    out_stages: list[dict[str, Any]] = [
        {"offered_qps": q, "policies": {name: m.to_json() for name, m in by_policy.items()}}
        for q, by_policy in stages
    ]
    for stage, bound in zip(out_stages, cache_bounds, strict=False):
        stage["cache_bound"] = dict(bound)
    results: dict[str, Any] = {"meta": dict(meta), "stages": out_stages}
    results["gap_closed"] = compute_gaps(results)
    return results


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else math.nan


def compute_gaps(results: Mapping[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """Gap closed per non-baseline policy, per metric, per stage (None where undefined)."""
    gaps: dict[str, dict[str, list[float | None]]] = {}
    for stage in results["stages"]:
        pol = stage["policies"]
        if "round-robin" not in pol or "oracle" not in pol:
            continue
        rr, orc = pol["round-robin"], pol["oracle"]
        for name, m in pol.items():
            if name in BASELINE_NAMES:
                continue
            for metric in GAP_METRICS:
                g = gap_closed(_num(rr[metric]), _num(m[metric]), _num(orc[metric]))
                gaps.setdefault(name, {}).setdefault(metric, []).append(
                    None if math.isnan(g) else round(g, 3)
                )
    return gaps


def write_json(results: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v) * scale:.{digits}f}"


TABLE_COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    # header, key, scale, digits
    ("ach. QPS", "achieved_qps", 1.0, 1),
    ("out tok/s", "output_tok_s", 1.0, 0),
    ("TTFT p50 ms", "ttft_p50", 1e3, 0),
    ("TTFT p90 ms", "ttft_p90", 1e3, 0),
    ("TTFT p99 ms", "ttft_p99", 1e3, 0),
    ("TPOT p90 ms", "tpot_p90", 1e3, 1),
    ("NTPOT p50 ms", "ntpot_p50", 1e3, 1),
    ("NTPOT p90 ms", "ntpot_p90", 1e3, 1),
    ("e2e p90 s", "e2e_p90", 1.0, 2),
    ("goodput rps", "goodput_rps", 1.0, 1),
    ("hit %", "prefix_hit_rate", 100.0, 1),
    ("preempt", "preemptions", 1.0, 0),
    ("loads/1k", "adapter_loads_per_1k", 1.0, 1),
    ("shed", "shed", 1.0, 0),
    ("dec µs p50", "decision_us_p50", 1.0, 0),
)


# The subset shown live in the terminal (the Markdown has every column).
TERMINAL_KEYS = frozenset(
    {
        "achieved_qps",
        "output_tok_s",
        "ttft_p90",
        "ntpot_p90",
        "e2e_p90",
        "goodput_rps",
        "prefix_hit_rate",
        "adapter_loads_per_1k",
        "shed",
        "decision_us_p50",
    }
)


def stage_rows(
    stage: Mapping[str, Any], columns: Sequence[tuple[str, str, float, int]] = TABLE_COLUMNS
) -> list[list[str]]:
    rows = []
    for name, m in stage["policies"].items():
        rows.append([name] + [_fmt(m.get(k), s, d) for _h, k, s, d in columns])
    return rows


def markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"### {meta.get('title', meta.get('workload', 'run'))}", ""]
    if "command" in meta:
        lines += ["```", str(meta["command"]), "```", ""]
    headers = ["policy"] + [h for h, *_ in TABLE_COLUMNS]
    for stage in results["stages"]:
        lines.append(f"**Offered {stage['offered_qps']:g} QPS**")
        bound = stage.get("cache_bound") or {}
        if bound.get("unbounded_cache"):
            lines.append("")
            lines.append(
                f"Prefix hit-rate ceilings: pooled cache {100 * bound['pooled_cache']:.1f} %, "
                f"unbounded cache {100 * bound['unbounded_cache']:.1f} %."
            )
        lines.append("")
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        for row in stage_rows(stage):
            lines.append("| " + " | ".join(row) + " |")
        crit_lines = _criticality_lines(stage)
        if crit_lines:
            lines += ["", *crit_lines]
        cost = cost_lines(stage)
        if cost:
            lines += ["", *cost]
        lines.append("")
    gaps = results.get("gap_closed") or {}
    if gaps:
        qps = [s["offered_qps"] for s in results["stages"]]
        lines.append("**Gap closed** = (RR - policy)/(RR - oracle), per offered QPS")
        lines.append("")
        lines.append("| policy | metric | " + " | ".join(f"{q:g}" for q in qps) + " |")
        lines.append("|---|---|" + "---|" * len(qps))
        for name, per_metric in gaps.items():
            for metric, vals in per_metric.items():
                cells = ["-" if v is None else f"{v:.2f}" for v in vals]
                lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def cost_lines(stage: Mapping[str, Any]) -> list[str]:
    """The cost table (:mod:`kvroute_bench.cost`) of a stage whose runs carry cost figures."""
    rows = []
    for name, m in stage["policies"].items():
        extra = m.get("extra") or {}
        c, att = extra.get("cost"), extra.get("ttft_slo_attainment") or {}
        if not c:
            continue
        share = " / ".join(f"{a} {100 * v:.0f} %" for a, v in c["token_share"].items())
        rows.append(
            f"| {name} | {_fmt(att.get('overall'), 100, 2)} % | "
            f"{_fmt(att.get('Critical'), 100, 2)} % | {_fmt(m.get('ttft_p90'), 1e3, 0)} | "
            f"{_fmt(m.get('tpot_p90'), 1e3, 0)} | {c['output_tokens']} | {share} | "
            f"{_fmt(c['cost_per_m_work'], 1, 3)} | {_fmt(c['cost_per_m_busy'], 1, 3)} | "
            f"{_fmt(c['cost_per_m_provisioned'], 1, 3)} |"
        )
    if not rows:
        return []
    return [
        "| policy | TTFT-SLO met | critical met | TTFT p90 ms | TPOT p90 ms | output tokens | "
        "tokens by class | $/M work | $/M busy | $/M provisioned |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _criticality_lines(stage: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, m in stage["policies"].items():
        for crit, c in (m.get("by_criticality") or {}).items():
            rows.append(
                f"| {name} | {crit} | {c['arrived']} | {_fmt(c['success_rate'], 100)} % | "
                f"{_fmt(c['shed_rate'], 100)} % | {_fmt(c['ttft_p90'], 1e3, 0)} | "
                f"{_fmt(c['slo_ttft'], 1e3, 0)} | {_fmt(c['slo_met_rate'], 100)} % |"
            )
    if len({r.split("|")[2] for r in rows}) <= 1:
        return []  # one class only: nothing to add
    return [
        "| policy | criticality | arrived | success | shed | TTFT p90 ms | SLO ms | SLO met |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


PLOT_PANELS: tuple[tuple[str, str, float], ...] = (
    ("ttft_p90", "TTFT p90 (s)", 1.0),
    ("ntpot_p90", "NTPOT p90 (ms)", 1e3),
    ("e2e_p90", "e2e p90 (s)", 1.0),
    ("output_tok_s", "output tokens/s", 1.0),
)


def plot(results: Mapping[str, Any], path: Path, *, title: str | None = None) -> None:
    """Latency and throughput against offered load, one line per policy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    stages = results["stages"]
    qps = [s["offered_qps"] for s in stages]
    policies: list[str] = []
    for s in stages:
        policies += [p for p in s["policies"] if p not in policies]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, label, scale) in zip(axes.flat, PLOT_PANELS, strict=True):
        for name in policies:
            ys = []
            for s in stages:
                v = s["policies"].get(name, {}).get(key)
                ys.append(math.nan if v is None else float(v) * scale)
            style = "--" if name in ("oracle", "pooled") else "-"
            ax.plot(qps, ys, style, marker="o", markersize=3, label=name)
        ax.set_xlabel("offered QPS")
        ax.set_ylabel(label)
        if key != "output_tok_s":
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            lo, hi = ax.get_ylim()
            # Label minor ticks only when the axis spans less than a decade (else they collide).
            ax.yaxis.set_minor_formatter(plain if hi / max(lo, 1e-12) < 10 else NullFormatter())
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title or str(results["meta"].get("title", "")))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
