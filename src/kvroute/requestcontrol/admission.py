"""Admission before scheduling: shed sheddable requests while the pool is saturated.

Upstream's ``LegacyAdmissionController`` (the default without the ``flowControl`` feature gate):
a request with ``priority < 0`` is rejected with 429 ``system saturated, sheddable request
dropped`` when the saturation detector reports ``>= 1.0`` for the candidate endpoints. Every
other request is admitted: without flow control there is no EPP queue, and priority only decides
whether a request may be shed. Requests that are not sheddable skip the detector entirely, so
the common case costs one comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PoolExhaustedError
from kvroute.scheduling.interfaces import SaturationDetector
from kvroute.scheduling.request import InferenceRequest

SHED_MESSAGE = "system saturated, sheddable request dropped"


@dataclass(frozen=True, slots=True)
class AdmissionController:
    """Legacy admission over a :class:`SaturationDetector`."""

    detector: SaturationDetector

    def admit(self, request: InferenceRequest, candidates: Sequence[Endpoint], now: float) -> None:
        """Raise :class:`PoolExhaustedError` (429) to shed ``request``; return to admit it."""
        if request.priority < 0 and self.detector.saturation(candidates, now) >= 1.0:
            raise PoolExhaustedError(SHED_MESSAGE)
