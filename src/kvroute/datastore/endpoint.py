"""Re-exports from :mod:`kvroute.framework.endpoint`, where these types live."""

from kvroute.framework.endpoint import (
    EMPTY_METRICS,
    ENGINE_TYPE_LABEL,
    Endpoint,
    EndpointLoad,
    EndpointMetrics,
)

__all__ = [
    "EMPTY_METRICS",
    "ENGINE_TYPE_LABEL",
    "Endpoint",
    "EndpointLoad",
    "EndpointMetrics",
]
