"""render_trace: the JSON shape of a dry-run explanation."""

from __future__ import annotations

import json
import math

from kvroute.scheduling.explain import render_trace
from kvroute.scheduling.interfaces import CycleTrace, PluginTrace


def test_render_trace_shape() -> None:
    trace = CycleTrace(
        profiles={
            "p": [
                PluginTrace(
                    plugin="f", plugin_type="t-filter", kind="filter", survivors=["b", "c"]
                ),
                PluginTrace(
                    plugin="s",
                    plugin_type="t-scorer",
                    kind="scorer",
                    weight=2.0,
                    raw_scores={"b": 1.5, "c": math.nan},
                    scores={"b": 1.0, "c": 0.0},
                    notes=["why"],
                ),
                PluginTrace(plugin="k", plugin_type="t-picker", kind="picker", picked=["b"]),
            ]
        },
        totals={"p": {"c": 0.0, "b": 2.0}},
        notes=["candidates: 3"],
    )
    out = render_trace(trace, ["a", "b", "c"])
    json.dumps(out, allow_nan=False)  # valid JSON: NaN is rendered as a string
    f, s, k = out["profiles"]["p"]["plugins"]
    assert f["input"] == 3
    assert f["removed"] == ["a"]
    assert s["scores"]["b"] == {"raw": 1.5, "clamped": 1.0, "weighted": 2.0}
    assert s["scores"]["c"]["raw"] == "nan"
    assert s["notes"] == ["why"]
    assert k["picked"] == ["b"]
    assert list(out["profiles"]["p"]["totals"]) == ["b", "c"]
    assert out["profiles"]["p"]["picked"] == ["b"]
    assert out["notes"] == ["candidates: 3"]
