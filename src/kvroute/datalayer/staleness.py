"""When an endpoint's metrics are too old to trust.

A snapshot's ``updated_at`` is set on every successful scrape and never on a failed one, so a
server that stops answering (or answers garbage) ages out on its own. Consumers decide what
"too old" means; upstream has two thresholds:

- ``--metrics-staleness-threshold`` (:data:`DEFAULT_STALENESS_THRESHOLD`, 2 s): the data layer's
  notion of a dead scrape.
- the ``utilization-detector``'s ``metricsStalenessThreshold``
  (:data:`SATURATION_STALENESS_THRESHOLD`, 200 ms): **a stale endpoint counts as saturated**
  (utilisation 1.0 in the pool mean, and it is filtered out by the saturation filter), so
  the picker never prefers a server merely because its numbers stopped moving. The saturation
  detector applies that rule; it reads ``updated_at`` through :func:`is_stale`.
"""

from __future__ import annotations

import math

from kvroute.datastore.endpoint import Endpoint

DEFAULT_STALENESS_THRESHOLD = 2.0
SATURATION_STALENESS_THRESHOLD = 0.2


def metrics_age(endpoint: Endpoint, now: float) -> float:
    """Seconds since the last successful scrape; ``inf`` if it was never scraped."""
    updated = endpoint.metrics.updated_at
    return math.inf if updated == 0.0 else now - updated


def is_stale(endpoint: Endpoint, now: float, threshold: float) -> bool:
    """True if never scraped or last scraped more than ``threshold`` seconds before ``now``."""
    return metrics_age(endpoint, now) > threshold
