"""``soft-reflective-ceiling-policy``: a usage-limit policy that tightens the dispatch ceiling of
lower priority bands as pool saturation rises (upstream ``flowcontrol/usagelimits/
softreflectiveceiling``, Alpha there; kvroute has no experimental-plugin gate, so it loads as
any other plugin).

Bands are ranked highest priority first (rank ``i`` of ``N`` known bands); the top band's
ceiling is always 1. For a lower band::

    reflective = 1 - i * saturation / (N - 1)
    saturation <  reflective  -> 1.0 (open)
    saturation >= 1           -> 0.0 (held)
    otherwise                 -> open on one call in round(saturation / (1 - saturation)),
                                 closed on the others

The open/closed alternation uses one policy-wide tick, advanced on every call made while
``1 - saturation <= saturation < 1`` (upstream advances it once per dispatch cycle; kvroute's
flow control asks once per dispatch attempt, for the first non-empty band), so on one call
every gated band is open or every one is closed. With a single band the ceiling is 1.

Which bands count: upstream passes every registered priority band. kvroute's policy interface
is per band (``ceiling(priority, saturation)``), so the policy keeps the priorities it has
been told of: the config's ``priorityBands`` (:meth:`note_priorities`, called when flow control
is built) and every priority it is asked about. A priority that has never been asked about
(its requests always queued behind a higher non-empty band) is not yet counted in ``N``.

Takes no parameters; any parameter is rejected by name.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.plugins.params import PluginParams, parse_params

TYPE = "soft-reflective-ceiling-policy"


class SoftReflectiveCeiling:
    def __init__(self, name: str = TYPE) -> None:
        self.typed_name = TypedName(TYPE, name)
        self._ascending: list[int] = []  # known priorities, lowest first
        self._tick = 0

    @property
    def priorities(self) -> tuple[int, ...]:
        """The known priorities, highest first (band rank order)."""
        return tuple(reversed(self._ascending))

    def note_priorities(self, priorities: Iterable[int]) -> None:
        for p in priorities:
            self._note(p)

    def _note(self, priority: int) -> None:
        at = bisect.bisect_left(self._ascending, priority)
        if at == len(self._ascending) or self._ascending[at] != priority:
            self._ascending.insert(at, priority)

    def ceiling(self, priority: int, saturation: float) -> float:
        self._note(priority)
        n = len(self._ascending)
        open_now = False
        if 1.0 - saturation <= saturation < 1.0:
            # half away from zero, as Go's math.Round (Python's round() goes to even)
            period = max(1, math.floor(saturation / (1.0 - saturation + 1e-9) + 0.5))
            self._tick += 1
            open_now = self._tick % period == 0
        rank = n - 1 - bisect.bisect_left(self._ascending, priority)  # 0 = highest
        if rank == 0:
            return 1.0
        if saturation < 1.0 - rank * saturation / (n - 1):
            return 1.0
        if saturation >= 1.0:
            return 0.0
        return 1.0 if open_now else 0.0


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    parse_params(PluginParams, name, TYPE, parameters)  # takes none: rejects every key
    return SoftReflectiveCeiling(name)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}
