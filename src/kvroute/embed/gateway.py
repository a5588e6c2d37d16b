"""The real gateway for live runs: Envoy (the ``[gateway]`` extra) in front of an in-process EPP.

``async with Gateway(urls, resources=[...], config_text=...) as gw: gw.url`` starts the EPP and an
Envoy child process configured for it; :class:`ResponseProcessing` chooses how much of each
response the EPP reads (headers only, or the body too, for usage). ``build_director_backend`` is
the production backend factory, for a program that wraps it (``Gateway(backend_factory=...)``) to
keep the decision graph and read a plugin's state while traffic runs.
"""

from __future__ import annotations

from kvroute.app import build_director_backend
from kvroute.config.extproc_options import ResponseProcessing
from kvroute.gateway.gateway import Gateway

__all__ = ["Gateway", "ResponseProcessing", "build_director_backend"]
