"""Render a :class:`CycleTrace` as the JSON a person reads to answer "why did it go there?".

Shape, per profile::

    {"plugins": [
        {"plugin": "queue-scorer", "type": "queue-scorer", "kind": "scorer", "weight": 2.0,
         "scores": {"vllm-0": {"raw": 0.5, "clamped": 0.5, "weighted": 1.0}, ...}},
        {"plugin": "decision-tree-filter", "kind": "filter", "input": 4,
         "survivors": ["vllm-1"], "removed": ["vllm-0", ...], "notes": ["..."]},
        {"plugin": "max-score-picker", "kind": "picker", "picked": ["vllm-1"]}],
     "totals": {"vllm-1": 3.2, ...},          # weighted sums, highest first
     "picked": ["vllm-1"]}

Floats are rounded to 6 decimals: enough to see why one endpoint beat another, short enough to
read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kvroute.scheduling.interfaces import CycleTrace, PluginTrace


def _r(value: float) -> float | str:
    """Rounded; NaN and infinities (a broken scorer's raw output) as strings, valid JSON."""
    if not math.isfinite(value):
        return str(value)
    return round(value, 6)


def render_trace(trace: CycleTrace, candidates: Sequence[str]) -> dict[str, Any]:
    """``candidates``: endpoint names the first filter of each profile saw, in order."""
    profiles: dict[str, Any] = {}
    for name, plugins in trace.profiles.items():
        entries: list[dict[str, Any]] = []
        survivors: list[str] = list(candidates)
        picked: list[str] | None = None
        for pt in plugins:
            entries.append(_render_plugin(pt, survivors))
            if pt.kind == "filter" and pt.survivors is not None:
                survivors = pt.survivors
            if pt.kind == "picker":
                picked = pt.picked
        totals = trace.totals.get(name, {})
        profiles[name] = {
            "plugins": entries,
            "totals": {k: _r(v) for k, v in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))},
            "picked": picked,
        }
    return {"notes": list(trace.notes), "profiles": profiles}


def _render_plugin(pt: PluginTrace, before: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"plugin": pt.plugin, "type": pt.plugin_type, "kind": pt.kind}
    if pt.kind == "filter":
        kept = pt.survivors or []
        kept_set = set(kept)
        out["input"] = len(before)
        out["survivors"] = kept
        out["removed"] = [n for n in before if n not in kept_set]
    elif pt.kind == "scorer":
        w = pt.weight if pt.weight is not None else 1.0
        raw = pt.raw_scores or {}
        clamped = pt.scores or {}
        out["weight"] = w
        out["scores"] = {
            k: {"raw": _r(raw.get(k, c)), "clamped": _r(c), "weighted": _r(c * w)}
            for k, c in clamped.items()
        }
    else:
        out["picked"] = pt.picked or []
    if pt.notes:
        out["notes"] = pt.notes
    out["duration_us"] = round(pt.duration_us, 1)
    return out
