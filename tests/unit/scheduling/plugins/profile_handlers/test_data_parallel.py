"""data-parallel-profile-handler: per-rank picks, primary-port destination, the DP header."""

from __future__ import annotations

import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import CycleState
from tests.fakes import NOW, make_endpoint, make_request

REGISTRY = default_registry(include_entry_points=False)
CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: data-parallel-profile-handler
  parameters: {primaryPort: 8000}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""


def test_the_least_queued_rank_is_picked_and_sent_through_the_primary_port() -> None:
    setup = build_scheduling(parse_epp_config(CONFIG), REGISTRY, rng=random.Random(0))
    ranks = [
        make_endpoint("pod-rank-0", address="10.0.0.7", port=8000, waiting=5),
        make_endpoint("pod-rank-1", address="10.0.0.7", port=8001, waiting=0),
        make_endpoint("pod-rank-2", address="10.0.0.7", port=8002, waiting=3),
    ]
    state = CycleState(NOW)
    request = make_request()
    result = setup.scheduler.schedule(request, ranks, state=state)
    (target,) = result.primary.targets
    assert (target.name, target.hostport) == ("pod-rank-1", "10.0.0.7:8000")
    assert target.load is ranks[1].load  # in-flight counts stay on the rank
    setup.scheduler.handler.pre_request(state, request, result)
    assert state.get(UPSTREAM_HEADERS, {}) == {"x-data-parallel-host-port": "10.0.0.7:8001"}


def test_primary_port_is_validated() -> None:
    with pytest.raises(PluginValidationError, match="primaryPort"):
        REGISTRY.create("data-parallel-profile-handler", "dp", {"primaryPort": 0}, PluginContext())
