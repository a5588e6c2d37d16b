"""A bound on metric labels whose values come from requests (model names, fairness IDs).

``model_name`` comes from the request body and ``fairness_id`` from a client header
(``x-llm-d-inference-fairness-id``), and a Prometheus client never forgets a label combination:
without a bound, a client sending distinct values grows the EPP's memory and every scrape
without end (a metrics-cardinality DoS). As upstream (llm-d-router #1909 for model names,
#2119 and ``--fairness-id-metric-label-limit`` for fairness IDs): the first ``limit`` distinct
values keep their own label, later ones read :data:`OVERFLOW`; admission is sticky (a value
admitted once always keeps its label, so paired gauge updates stay balanced); pinned values
(the EPP's own defaults: ``default-flow``) never take a slot. ``limit`` 0 folds
every unpinned value into :data:`OVERFLOW`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["DEFAULT_LABEL_LIMIT", "OVERFLOW", "LabelLimit", "fairness_limit"]

log = logging.getLogger(__name__)

OVERFLOW = "other"
DEFAULT_LABEL_LIMIT = 1000
DEFAULT_FLOW = "default-flow"  # the fairness ID of a request without one (never folded)


class LabelLimit:
    def __init__(self, what: str, limit: int = DEFAULT_LABEL_LIMIT, pinned: Iterable[str] = ()):
        if limit < 0:
            raise ValueError(f"{what} label limit must be >= 0, got {limit}")
        self.what = what
        self.limit = limit
        self._admitted: set[str] = {OVERFLOW, ""}
        self._pinned = 2  # OVERFLOW and "" take no slot
        self.folded = 0  # values read as OVERFLOW (counted, logged once)
        self.pin(pinned)

    def pin(self, values: Iterable[str]) -> None:
        """Always label these values as themselves, without taking a slot."""
        for value in values:
            if value not in self._admitted:
                self._admitted.add(value)
                self._pinned += 1

    def __call__(self, value: str) -> str:
        admitted = self._admitted
        if value in admitted:
            return value
        if len(admitted) - self._pinned < self.limit:
            admitted.add(value)
            return value
        self.folded += 1
        if self.folded == 1:
            log.warning(
                "more than %d distinct %s values seen: further ones are labelled %r in metrics",
                self.limit,
                self.what,
                OVERFLOW,
            )
        return OVERFLOW

    @property
    def distinct(self) -> int:
        """Values admitted under their own label (pinned ones not counted)."""
        return len(self._admitted) - self._pinned


def fairness_limit(limit: int = DEFAULT_LABEL_LIMIT) -> LabelLimit:
    """The fairness-ID bound: ``limit`` client IDs, ``default-flow`` pinned."""
    return LabelLimit("fairness ID", limit, pinned=(DEFAULT_FLOW,))
