"""Re-exports the request-lifecycle hooks from :mod:`kvroute.framework.hooks`, where they live."""

from kvroute.framework.hooks import (
    Prefetch,
    PrepareData,
    PreRequest,
    RequestHooks,
    ResponseComplete,
)
from kvroute.framework.request import Usage

__all__ = ["PreRequest", "Prefetch", "PrepareData", "RequestHooks", "ResponseComplete", "Usage"]
