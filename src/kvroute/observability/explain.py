"""A scheduling decision in plain data: from the director's decision and its cycle trace.

The same summary feeds the ``kvroute.schedule`` span's attributes and the live pool page's
"recent decisions" list. Everything is JSON-ready (strings, numbers, lists, dicts).
"""

from __future__ import annotations

import re
from typing import Any

from kvroute.scheduling.interfaces import CycleTrace


def _fmt_scores(scores: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.3f}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1]))


def summarize(decision: Any, trace: CycleTrace) -> dict[str, Any]:
    """``decision``: the director's RoutingDecision (target, fallbacks, request, result)."""
    req = decision.request
    primary = decision.result.primary_profile
    pick = decision.target.name
    totals = trace.totals.get(primary, {})
    profiles: dict[str, list[dict[str, Any]]] = {}
    for profile, plugins in trace.profiles.items():
        steps = []
        for p in plugins:
            step: dict[str, Any] = {"plugin": p.plugin, "kind": p.kind}
            if p.weight is not None:
                step["weight"] = p.weight
            if p.survivors is not None:
                step["survivors"] = list(p.survivors)
            if p.scores is not None:
                step["scores"] = {k: round(v, 4) for k, v in p.scores.items()}
            if p.picked is not None:
                step["picked"] = list(p.picked)
            if p.notes:
                step["notes"] = list(p.notes)
            steps.append(step)
        profiles[profile] = steps
    return {
        "request_id": req.request_id,
        "model": req.incoming_model,
        "target_model": req.target_model,
        "priority": req.priority,
        "fairness_id": req.fairness_id,
        "pick": pick,
        "fallbacks": [e.name for e in decision.fallbacks],
        "winning_score": round(totals[pick], 4) if pick in totals else None,
        "totals": {k: round(v, 4) for k, v in totals.items()},
        "primary_profile": primary,
        "profiles": profiles,
        "notes": list(trace.notes),
    }


EXPLAIN_REQUEST_HEADER = "x-kvroute-explain"
DECISION_RESPONSE_HEADER = "x-kvroute-decision"
_UNSAFE = re.compile(r"[^\x21-\x7e ]")


def decision_header(summary: dict[str, Any]) -> str:
    """A compact, single-line, ASCII summary for the ``x-kvroute-decision`` response header:
    ``pick=P; score=S; profile=N; fallbacks=A,B; <plugin>=<score of P>; ...``."""
    pick = summary["pick"]
    parts = [f"pick={pick}"]
    if summary["winning_score"] is not None:
        parts.append(f"score={summary['winning_score']:.3f}")
    parts.append(f"profile={summary['primary_profile']}")
    if summary["fallbacks"]:
        parts.append("fallbacks=" + ",".join(summary["fallbacks"]))
    for step in summary["profiles"].get(summary["primary_profile"], []):
        if "scores" in step and pick in step["scores"]:
            parts.append(f"{step['plugin']}={step['scores'][pick]:.3f}")
        elif "survivors" in step:
            parts.append(f"{step['plugin']}:kept={len(step['survivors'])}")
    return _UNSAFE.sub("?", "; ".join(parts))[:1024]


def span_attributes(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat OpenTelemetry attributes (primitive values and lists of strings) for a summary."""
    attrs: dict[str, Any] = {
        "kvroute.model": summary["model"],
        "kvroute.target_model": summary["target_model"],
        "kvroute.priority": summary["priority"],
        "kvroute.fairness_id": summary["fairness_id"],
        "kvroute.pick": summary["pick"],
        "kvroute.fallbacks": summary["fallbacks"],
        "kvroute.profile": summary["primary_profile"],
        "kvroute.totals": _fmt_scores(summary["totals"]),
        "kvroute.notes": summary["notes"],
    }
    if summary["winning_score"] is not None:
        attrs["kvroute.winning_score"] = summary["winning_score"]
    for profile, steps in summary["profiles"].items():
        for step in steps:
            key = f"kvroute.{profile}.{step['plugin']}"
            if "survivors" in step:
                attrs[f"{key}.survivors"] = step["survivors"]
            if "scores" in step:
                attrs[f"{key}.scores"] = _fmt_scores(step["scores"])
            if "picked" in step:
                attrs[f"{key}.picked"] = step["picked"]
    return attrs
