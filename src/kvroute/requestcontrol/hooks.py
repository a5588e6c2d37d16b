"""Re-exports the request-lifecycle hooks from :mod:`kvroute.framework.hooks`, where they live."""

from kvroute.framework.hooks import (
    Admitter,
    Prefetch,
    PrepareData,
    PreRequest,
    RequestHeaderProcessor,
    RequestHooks,
    ResponseComplete,
    Screener,
)
from kvroute.framework.request import Usage

__all__ = [
    "Admitter",
    "PreRequest",
    "Prefetch",
    "PrepareData",
    "RequestHeaderProcessor",
    "RequestHooks",
    "ResponseComplete",
    "Screener",
    "Usage",
]
