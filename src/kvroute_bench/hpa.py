"""The Kubernetes HorizontalPodAutoscaler's replica calculation, sans-IO, for virtual time.

What ``pkg/controller/podautoscaler`` does each sync period (default 15 s) for one metric with a
``Value`` target (what the chart's HPAs use, ``docs/autoscaling.md``):

1. ``ratio = metric / target``; within the tolerance (``|ratio - 1| <= 0.1``) the replica
   count is kept, otherwise ``raw = ceil(current * ratio)``, clamped to ``[min, max]``;
2. stabilisation: every raw recommendation is remembered; scaling up goes to the *lowest*
   recommendation of the scale-up window (default 0 s: the latest), scaling down to the
   *highest* of the scale-down window (default 300 s), and in between the count stays;
3. rate limits (``behavior`` policies): scale-up is limited to the larger of +100 % and +4 pods
   per 15 s, scale-down to -100 % per 15 s (the defaults), counted from the replica count at
   the start of the policy period.

Replica counts here are the Deployment's ``spec.replicas``, starting pods included, as in
Kubernetes; the metric comes from the ready pods only (the EPP sees ready endpoints only).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HpaSpec:
    target: float
    min_replicas: int = 1
    max_replicas: int = 64
    tolerance: float = 0.1
    sync_period: float = 15.0
    scale_up_window: float = 0.0
    scale_down_window: float = 300.0
    scale_up_percent: float = 100.0  # per scale_up_period
    scale_up_pods: int = 4  # per scale_up_period
    scale_up_period: float = 15.0
    scale_down_percent: float = 100.0  # per scale_down_period
    scale_down_period: float = 15.0

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError(f"HPA target must be > 0, got {self.target}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("HPA needs 0 <= min_replicas <= max_replicas")


class Hpa:
    """One HPA's state: its recommendation history and its recent scale events."""

    def __init__(self, spec: HpaSpec) -> None:
        self.spec = spec
        self._recs: deque[tuple[float, int]] = deque()  # (time, raw recommendation)
        self._events: deque[tuple[float, int]] = deque()  # (time, replica change)

    def raw_recommendation(self, current: int, metric: float | None) -> int:
        """Step 1. ``metric`` None (no ready pod reported it): keep ``current``."""
        s = self.spec
        if metric is None or current == 0:
            raw = max(current, s.min_replicas)
        else:
            ratio = metric / s.target
            raw = current if abs(ratio - 1.0) <= s.tolerance else math.ceil(current * ratio)
        return min(max(raw, s.min_replicas), s.max_replicas)

    def _stabilised(self, now: float, current: int, raw: int) -> int:
        s = self.spec
        self._recs.append((now, raw))
        horizon = max(s.scale_up_window, s.scale_down_window)
        while self._recs and self._recs[0][0] < now - horizon:
            self._recs.popleft()
        up = min(r for t, r in self._recs if t >= now - s.scale_up_window)
        down = max(r for t, r in self._recs if t >= now - s.scale_down_window)
        if current < up:
            return up
        if current > down:
            return down
        return current

    def _change_in(self, now: float, period: float, sign: int) -> int:
        return sum(d for t, d in self._events if t > now - period and d * sign > 0)

    def _limited(self, now: float, current: int, desired: int) -> int:
        s = self.spec
        if desired > current:
            start = current - self._change_in(now, s.scale_up_period, +1)
            limit = max(math.ceil(start * (1 + s.scale_up_percent / 100)), start + s.scale_up_pods)
            return min(desired, max(limit, current))
        if desired < current:
            start = current - self._change_in(now, s.scale_down_period, -1)
            limit = math.ceil(start * (1 - s.scale_down_percent / 100))
            return max(desired, min(limit, current))
        return current

    def decide(self, now: float, current: int, metric: float | None) -> int:
        """The replica count the HPA sets at this sync (steps 1-3)."""
        raw = self.raw_recommendation(current, metric)
        desired = self._limited(now, current, self._stabilised(now, current, raw))
        if desired != current:
            self._events.append((now, desired - current))
        period = max(self.spec.scale_up_period, self.spec.scale_down_period)
        while self._events and self._events[0][0] <= now - period:
            self._events.popleft()
        return desired
