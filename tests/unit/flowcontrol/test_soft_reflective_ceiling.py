"""``soft-reflective-ceiling-policy``: the per-band ceilings, the shared open/closed tick, the
config's bands, and dispatch through the real FlowQueues."""

from __future__ import annotations

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import PluginValidationError
from kvroute.flowcontrol.build import build_flow_control
from kvroute.flowcontrol.item import QueueItem
from kvroute.flowcontrol.queues import FlowControlSettings, FlowQueues
from kvroute.flowcontrol.soft_reflective_ceiling import SoftReflectiveCeiling
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling

REGISTRY = default_registry(include_entry_points=False)


def _policy(*priorities: int) -> SoftReflectiveCeiling:
    p = SoftReflectiveCeiling()
    p.note_priorities(priorities)
    return p


def test_single_band_is_never_gated_below_full_saturation() -> None:
    p = _policy(0)
    assert [p.ceiling(0, s) for s in (0.0, 0.6, 0.99, 1.0)] == [1.0, 1.0, 1.0, 1.0]


def test_reflective_ceilings_open_bands_below_them() -> None:
    p = _policy(10, 0, -1)  # ranks 0, 1, 2; N = 3
    # saturation 0.4: band 1 ceiling 1 - 0.4/2 = 0.8, band 2 ceiling 1 - 0.4 = 0.6: both open
    assert [p.ceiling(q, 0.4) for q in (10, 0, -1)] == [1.0, 1.0, 1.0]
    # saturation 0.45 < 0.55 (alternating regime starts at 0.5): band 2 ceiling 0.55: open
    assert p.ceiling(-1, 0.45) == 1.0


def test_full_saturation_holds_every_lower_band() -> None:
    p = _policy(10, 0, -1)
    assert [p.ceiling(q, 1.0) for q in (10, 0, -1)] == [1.0, 0.0, 0.0]


def test_past_its_ceiling_a_band_opens_one_call_in_the_period() -> None:
    p = _policy(1, 0)  # band 1 (priority 0): ceiling 1 - sat; at 0.75 it is gated
    # period = round(0.75 / 0.25) = 3: open on every third call
    seen = [p.ceiling(0, 0.75) for _ in range(9)]
    assert seen == [0.0, 0.0, 1.0] * 3
    # the top band never gates (and its calls advance the same tick)
    assert p.ceiling(1, 0.75) == 1.0


def test_the_tick_is_shared_by_all_gated_bands() -> None:
    p = _policy(2, 1, 0)  # at 0.8: band 1 ceiling 0.6, band 2 ceiling 0.2: both gated
    # period = round(0.8 / 0.2) = 4; alternate the two bands' calls
    seen = [p.ceiling(1 if i % 2 else 0, 0.8) for i in range(8)]
    assert seen == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_unknown_priorities_are_learnt_from_the_calls() -> None:
    p = SoftReflectiveCeiling()
    assert p.ceiling(-1, 0.9) == 1.0  # the only band so far: top rank
    assert p.ceiling(5, 0.9) == 1.0
    assert p.priorities == (5, -1)
    assert p.ceiling(-1, 1.0) == 0.0  # now the lower of two


def test_takes_no_parameters() -> None:
    REGISTRY.create("soft-reflective-ceiling-policy", "s", {}, PluginContext())
    with pytest.raises(PluginValidationError, match="threshold"):
        REGISTRY.create("soft-reflective-ceiling-policy", "s", {"threshold": 1}, PluginContext())


def _item(rid: str, priority: int) -> QueueItem:
    return QueueItem(
        request_id=rid, priority=priority, fairness_id="f", size_bytes=10, enqueued_at=0.0
    )


def test_dispatch_through_flow_queues_holds_the_lower_band_back() -> None:
    policy = _policy(1, 0)
    q = FlowQueues(FlowControlSettings(usage_limit=policy))
    for i in range(3):
        q.enqueue(_item(f"low{i}", 0))
    # saturation 0.75 vs band 1 ceiling 0.25: gated; period round(0.75 / 0.25) = 3
    out = [q.next_dispatch(0.75, 1.0) for _ in range(6)]
    assert [o.request_id if o else None for o in out] == [None, None, "low0", None, None, "low1"]
    q.enqueue(_item("high", 1))
    got = q.next_dispatch(0.75, 1.0)
    assert got is not None
    assert got.request_id == "high"  # the top band is not gated


def test_the_upstream_sample_wires_it_with_the_configs_bands() -> None:
    config = parse_epp_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: soft-reflective-ceiling-policy}]\n"
        "flowControl:\n"
        "  usageLimitPolicyPluginRef: soft-reflective-ceiling-policy\n"
        "  priorityBands: [{priority: 5}, {priority: -3}]\n",
        "epp.yaml",
    )
    setup = build_scheduling(config, REGISTRY, source="epp.yaml")
    fc = build_flow_control(config.flow_control, setup.plugins, REGISTRY, "epp.yaml")
    assert fc is not None
    limit = fc.settings.usage_limit
    assert isinstance(limit, SoftReflectiveCeiling)
    assert limit.priorities == (5, -3)
