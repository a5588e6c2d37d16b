"""An in-process fake Kubernetes API server for tests; see :mod:`tests.k8s_apiserver.server`."""

from tests.k8s_apiserver.server import FakeApiServer
from tests.k8s_apiserver.wire import merge_patch, status_body

__all__ = ["FakeApiServer", "merge_patch", "status_body"]
