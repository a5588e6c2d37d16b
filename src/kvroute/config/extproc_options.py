"""Settings of the ext_proc stream the EPP serves, below both the settings and ``extproc``.

:class:`~kvroute.settings.EppSettings` declares them (``--response-processing``,
``--max-request-body-bytes``); :mod:`kvroute.extproc.stream` acts on them.
"""

from __future__ import annotations

import enum

__all__ = ["DEFAULT_MAX_REQUEST_BODY_BYTES", "ResponseProcessing"]

DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024
# Request-body bytes all ext_proc streams together may hold (issue 20 finding 8).
DEFAULT_MAX_BUFFERED_BODY_BYTES = 256 * 1024 * 1024


class ResponseProcessing(enum.StrEnum):
    """``full``: upstream behaviour, every response chunk through the EPP. ``light``: the
    response body skips the EPP (no model-name restore, no usage). ``tap``: the body skips the
    EPP, Envoy's Lua filter restores the model name and reports usage once per response (needs
    the gateway kvroute generates; see ``kvroute.extproc.tap``)."""

    FULL = "full"
    LIGHT = "light"
    TAP = "tap"
