"""Flow control's sans-IO core for programs that drive it themselves (the virtual-time bench).

The queues (:class:`FlowQueues` over :class:`FlowControlSettings` and :class:`BandSettings`),
the items they hold, a fairness policy and the concurrency saturation detector: what a
discrete-event harness needs to hold requests and release them against its own clock, without
the EPP's async runtime (:mod:`kvroute.flowcontrol.runtime`).
"""

from __future__ import annotations

from kvroute.flowcontrol.concurrency import ConcurrencyDetector, ConcurrencyParams
from kvroute.flowcontrol.item import QueueItem
from kvroute.flowcontrol.policies import (
    ProgramAwareFairness,
    ProgramAwareParams,
    RoundRobinFairness,
    default_fairness,
)
from kvroute.flowcontrol.queues import BandSettings, FlowControlSettings, FlowQueues

__all__ = [
    "BandSettings",
    "ConcurrencyDetector",
    "ConcurrencyParams",
    "FlowControlSettings",
    "FlowQueues",
    "ProgramAwareFairness",
    "ProgramAwareParams",
    "QueueItem",
    "RoundRobinFairness",
    "default_fairness",
]
