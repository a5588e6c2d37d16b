"""The sixth round's multi-seed table (issue 11) from the result files next to this script.

    python docs/results/sched-v2/seeds/table.py            # the summary table (Markdown)
    python docs/results/sched-v2/seeds/table.py --full     # + every policy, mean and per seed
    python docs/results/sched-v2/seeds/table.py --old      # the same verdicts with the old text

Reads ``<preset>-s<seed>.json`` (the ~4-characters-per-token text, every policy) and
``oldtext/<preset>-s<seed>.json`` (the old ``w<id>`` text: the text-reading policies only).
With ``--old`` the text-reading policies' rows (``sglang-cache-aware``, ``upstream-default``,
``kvroute``) come from ``oldtext/``; the others read token ids, so their rows are the same under
both texts. "Passes" = the default's value at or below every baseline's times 1.03 (the
done-when's "at or below every baseline, within +-3%"), on the mean over seeds and at each seed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
PRESETS = (
    "multi-turn",
    "agent-sessions",
    "shared-prefix-sglang",
    "code-generation",
    "shared-prefix",
    "shared-prefix-low",
    # no shared prefixes (new text only)
    "heterogeneous",
    "sharegpt",
    "heterogeneous-datacenter",
    "sharegpt-heavy",
    "mixed-criticality",
    "bursty",
    "multi-lora",
)
SEEDS = (1, 2, 3)
BASELINES = (
    "round-robin",
    "least-requests",
    "p2c",
    "sglang-cache-aware",
    "llm-d-token-aware",
    "upstream-default",
)
DEFAULT = "kvroute"
TOLERANCE = 1.03
METRICS = (("ttft_p90", 1000.0, "{:.0f}"), ("e2e_p90", 1.0, "{:.2f}"))

Runs = dict[int, dict[float, dict[str, dict[str, float]]]]  # seed -> qps -> policy -> row


def load(preset: str, folder: Path = HERE) -> Runs:
    out: Runs = {}
    for seed in SEEDS:
        path = folder / f"{preset}-s{seed}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        out[seed] = {st["offered_qps"]: st["policies"] for st in doc["stages"]}
    return out


def merged_old(preset: str) -> Runs:
    """Every policy under the old text: the token-reading ones are text-independent."""
    runs = load(preset)
    for seed, stages in load(preset, HERE / "oldtext").items():
        for qps, rows in stages.items():
            runs[seed][qps].update(rows)
    return runs


def values(runs: Runs, qps: float, policy: str, metric: str, scale: float) -> list[float]:
    return [runs[s][qps][policy][metric] * scale for s in sorted(runs) if policy in runs[s][qps]]


def fmt(vals: list[float], spec: str) -> str:
    per = " / ".join(spec.format(v) for v in vals)
    return f"{spec.format(statistics.fmean(vals))} ({per})"


def summary(old_text: bool = False) -> list[str]:
    head = (
        "| preset | offered QPS | seeds | default p90 TTFT ms, mean (s1 / s2 / s3) | best baseline "
        "(mean) | TTFT passes: mean, seeds | default p90 e2e s | best baseline | e2e passes | "
        "default with the old text: TTFT ms / e2e s |"
    )
    lines = [head, "|" + "---|" * 10]
    for preset in PRESETS:
        runs = merged_old(preset) if old_text else load(preset)
        old = load(preset, HERE / "oldtext")
        if not runs or (old_text and not old):
            continue
        seeds = sorted(runs)
        for qps in sorted(runs[seeds[0]]):
            cells = [preset, f"{qps:g}", ",".join(map(str, seeds))]
            for metric, scale, spec in METRICS:
                mine = values(runs, qps, DEFAULT, metric, scale)
                base = {b: values(runs, qps, b, metric, scale) for b in BASELINES}
                best = min(base, key=lambda b: statistics.fmean(base[b]))
                ok_mean = statistics.fmean(mine) <= TOLERANCE * statistics.fmean(base[best])
                ok_seeds = sum(
                    m <= TOLERANCE * min(base[b][i] for b in BASELINES) for i, m in enumerate(mine)
                )
                cells.append(fmt(mine, spec))
                cells.append(f"{fmt(base[best], spec)} {best}")
                cells.append(f"{'**yes**' if ok_mean else 'no'}, {ok_seeds}/{len(mine)}")
            if old and all(qps in old[s] for s in old):
                t = values(old, qps, DEFAULT, "ttft_p90", 1000.0)
                e = values(old, qps, DEFAULT, "e2e_p90", 1.0)
                cells.append(f"{fmt(t, '{:.0f}')} / {fmt(e, '{:.2f}')}")
            else:
                cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def full() -> list[str]:
    lines: list[str] = []
    for preset in PRESETS:
        runs = load(preset)
        old = load(preset, HERE / "oldtext")
        if not runs:
            continue
        seeds = sorted(runs)
        for qps in sorted(runs[seeds[0]]):
            lines += ["", f"#### {preset} at {qps:g} QPS (seeds {','.join(map(str, seeds))})", ""]
            lines += [
                "| policy | p90 TTFT ms, mean (per seed) | p90 e2e s | hit % |",
                "|---|---|---|---|",
            ]
            for policy in (*BASELINES, DEFAULT, "oracle"):
                t = values(runs, qps, policy, "ttft_p90", 1000.0)
                e = values(runs, qps, policy, "e2e_p90", 1.0)
                h = values(runs, qps, policy, "prefix_hit_rate", 100.0)
                lines.append(
                    f"| {policy} | {fmt(t, '{:.0f}')} | {fmt(e, '{:.2f}')} | {fmt(h, '{:.1f}')} |"
                )
            for policy in ("sglang-cache-aware", "upstream-default", DEFAULT):
                if old and all(qps in old[s] and policy in old[s][qps] for s in old):
                    t = values(old, qps, policy, "ttft_p90", 1000.0)
                    e = values(old, qps, policy, "e2e_p90", 1.0)
                    h = values(old, qps, policy, "prefix_hit_rate", 100.0)
                    lines.append(
                        f"| {policy}, old text | {fmt(t, '{:.0f}')} | {fmt(e, '{:.2f}')} | "
                        f"{fmt(h, '{:.1f}')} |"
                    )
    return lines


if __name__ == "__main__":
    out = summary(old_text="--old" in sys.argv[1:])
    if "--full" in sys.argv[1:]:
        out += full()
    print("\n".join(out))
