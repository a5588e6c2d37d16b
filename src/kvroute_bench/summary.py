"""One Markdown summary over several sweep results (``kvroute bench summary FILE.json ...``).

For the scheduler-v2 tables in ``docs/benchmarks.md``: one row per results file (a preset), one
column per policy, each cell the metric at every stage (``a / b / c`` for the stages in load
order), then the gap closed to the oracle per policy at every stage. A gap is ``-`` where the
oracle is within 3% of round-robin (no policy can differ much) or no better.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvroute_bench.metrics import gap_closed

# (title, metric key, scale, digits)
METRICS: tuple[tuple[str, str, float, int], ...] = (
    ("p90 TTFT (ms)", "ttft_p90", 1000.0, 0),
    ("p90 e2e (s)", "e2e_p90", 1.0, 2),
    ("p90 NTPOT (ms)", "ntpot_p90", 1000.0, 1),
    ("output tokens/s", "output_tok_s", 1.0, 0),
)
GAP_METRICS = (("p90 TTFT", "ttft_p90"), ("p90 e2e", "e2e_p90"))
NO_DIFFERENCE = 0.03  # oracle within 3% of round-robin: the gap is not reported


def _cell(values: Sequence[Any], scale: float, digits: int) -> str:
    out = []
    for v in values:
        out.append(f"{v * scale:.{digits}f}" if isinstance(v, int | float) else "-")
    return " / ".join(out)


def _gap(rr: Any, pol: Any, orc: Any) -> str:
    if not all(isinstance(x, int | float) for x in (rr, pol, orc)):
        return "-"
    if rr <= 0 or (rr - orc) / rr < NO_DIFFERENCE:
        return "-"
    g = gap_closed(float(rr), float(pol), float(orc))
    return f"{g:.2f}"


def load(paths: Sequence[Path]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(p.stem, json.loads(p.read_text())) for p in paths]


def summary(
    results: Sequence[tuple[str, Mapping[str, Any]]],
    policies: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """The Markdown tables (see the module docstring)."""
    if not results:
        return ""
    pols = list(policies or results[0][1]["meta"]["policies"])
    wanted = [m for m in METRICS if metrics is None or m[1] in metrics]
    lines: list[str] = []
    fractions = results[0][1]["meta"].get("load_fractions")
    for title, key, scale, digits in wanted:
        lines += [f"**{title}**, per stage" + (f" ({fractions})" if fractions else ""), ""]
        lines.append("| preset | sat. QPS | " + " | ".join(pols) + " |")
        lines.append("|---" * (len(pols) + 2) + "|")
        for name, res in results:
            sat = res["meta"].get("saturation_qps")
            cells = []
            for p in pols:
                vals = [s["policies"].get(p, {}).get(key) for s in res["stages"]]
                cells.append(_cell(vals, scale, digits))
            sat_s = f"{sat:.1f}" if isinstance(sat, int | float) else "-"
            lines.append(f"| {name} | {sat_s} | " + " | ".join(cells) + " |")
        lines.append("")
    gap_pols = [p for p in pols if p not in ("round-robin", "oracle", "pooled")]
    for title, key in GAP_METRICS:
        lines += [f"**Gap closed to the oracle, {title}**, per stage", ""]
        lines.append("| preset | " + " | ".join(gap_pols) + " |")
        lines.append("|---" * (len(gap_pols) + 1) + "|")
        for name, res in results:
            cells = []
            for p in gap_pols:
                gaps = []
                for s in res["stages"]:
                    pol = s["policies"]
                    if not {"round-robin", "oracle", p} <= set(pol):
                        gaps.append("-")
                        continue
                    gaps.append(_gap(pol["round-robin"][key], pol[p][key], pol["oracle"][key]))
                cells.append(" / ".join(gaps))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
