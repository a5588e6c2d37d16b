"""An endpoint's accelerator class and cost, read from its pod labels.

Two pod labels (documented in ``docs/autoscaling.md``) describe the hardware behind an endpoint:

- ``kvroute.dev/accelerator``: the class name (``h100``, ``h200``, ``a100``, ``l4``, ``mi300x``;
  case-insensitive). ``llm-d.ai/accelerator`` is read when ours is absent.
- ``kvroute.dev/cost-per-hour``: what one replica costs per hour, a decimal number (for example
  ``"4.0"``; a label value may hold digits and one dot). Absent: the class's default.

Bad input never drops an endpoint: an unknown class or a malformed cost reads as the default
class (or the class's default cost) and is logged once per distinct bad value.

The relative speeds are copied from the simulator's accelerator profiles
(``src/kvroute_sim/accelerators.py``, spec-sheet HBM bandwidth relative to the H100 SXM5's
3.35 TB/s: decode is bandwidth-bound), not imported: kvroute does not depend on the simulator.
The default costs are illustrative on-demand list prices per GPU-hour, to be overridden by the
label; they are not measurements.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

ACCELERATOR_LABEL = "kvroute.dev/accelerator"
LLMD_ACCELERATOR_LABEL = "llm-d.ai/accelerator"
COST_LABEL = "kvroute.dev/cost-per-hour"
DEFAULT_CLASS = "h100"

_log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class AcceleratorClass:
    """One class: relative decode speed (H100 = 1.0) and default cost per replica-hour."""

    name: str
    relative_speed: float
    cost_per_hour: float
    hbm_bandwidth_tbs: float


# Bandwidths from kvroute_sim.accelerators.ACCELERATORS (datasheets); speed = bw / 3.35.
ACCELERATOR_CLASSES: Mapping[str, AcceleratorClass] = {
    c.name: c
    for c in (
        AcceleratorClass("h100", 3.35 / 3.35, 4.00, 3.35),
        AcceleratorClass("h200", 4.8 / 3.35, 5.00, 4.8),
        AcceleratorClass("a100", 2.039 / 3.35, 2.50, 2.039),
        AcceleratorClass("l4", 0.3 / 3.35, 0.80, 0.3),
        AcceleratorClass("mi300x", 5.3 / 3.35, 4.00, 5.3),
    )
}


@dataclass(frozen=True, slots=True)
class EndpointHardware:
    """What an endpoint's labels say about its hardware, after defaults."""

    accelerator: AcceleratorClass
    cost_per_hour: float

    @property
    def name(self) -> str:
        return self.accelerator.name


def _warn_once(kind: str, value: str, message: str) -> None:
    if (kind, value) in _warned:
        return
    _warned.add((kind, value))
    _log.warning(message)


def accelerator_class(labels: Mapping[str, str]) -> AcceleratorClass:
    """The class named by ``labels`` (the default class when absent or unknown)."""
    raw = labels.get(ACCELERATOR_LABEL) or labels.get(LLMD_ACCELERATOR_LABEL)
    if raw is None:
        return ACCELERATOR_CLASSES[DEFAULT_CLASS]
    found = ACCELERATOR_CLASSES.get(raw.strip().lower())
    if found is None:
        _warn_once(
            "class",
            raw,
            f"unknown accelerator class {raw!r} in label {ACCELERATOR_LABEL}; using "
            f"{DEFAULT_CLASS!r} (known: {', '.join(ACCELERATOR_CLASSES)})",
        )
        return ACCELERATOR_CLASSES[DEFAULT_CLASS]
    return found


def endpoint_hardware(labels: Mapping[str, str]) -> EndpointHardware:
    """Class and cost per hour from an endpoint's labels."""
    cls = accelerator_class(labels)
    raw = labels.get(COST_LABEL)
    if raw is None:
        return EndpointHardware(cls, cls.cost_per_hour)
    try:
        cost = float(raw)
    except ValueError:
        cost = math.nan
    if not math.isfinite(cost) or cost < 0:
        _warn_once(
            "cost",
            raw,
            f"malformed {COST_LABEL} label {raw!r} (want a non-negative number); using the "
            f"{cls.name!r} default {cls.cost_per_hour}",
        )
        return EndpointHardware(cls, cls.cost_per_hour)
    return EndpointHardware(cls, cost)
