"""Re-exports the request-lifecycle hooks from :mod:`kvroute.framework.hooks`, where they live."""

from kvroute.framework.hooks import PrepareData, PreRequest, RequestHooks, ResponseComplete
from kvroute.framework.request import Usage

__all__ = ["PreRequest", "PrepareData", "RequestHooks", "ResponseComplete", "Usage"]
