"""Go ``time.ParseDuration`` syntax, the one duration parser of kvroute.

Upstream writes every duration the Go way, in flags (``--refresh-metrics-interval=50ms``) and
in YAML (``metricsStalenessThreshold: 200ms``, ``defaultRequestTTL: 1m30s``).
:func:`parse_go_duration` reads that syntax into seconds: a sequence of decimal numbers each
with a unit (``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``), e.g. ``300ms``, ``1.5h``,
``1m30s``; ``0`` alone needs no unit.
Negative durations are rejected (no kvroute setting means anything by them).

Two kvroute extensions, both kept from earlier releases: a YAML number (``2``, ``0.5``) is
seconds, and with ``bare_seconds=True`` (the CLI flags) so is a unit-less string (``"1.5"``).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["GoDuration", "parse_go_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign, as Go accepts
    "μs": 1e-6,  # U+03BC Greek mu, as Go accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_BARE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_EXAMPLES = "expected e.g. '200ms', '1.5s', '1m30s'"


def parse_go_duration(value: object, *, bare_seconds: bool = False) -> float:
    """Seconds from a Go duration string (``"200ms"``, ``"1m30s"``) or a number of seconds.

    Raises :class:`ValueError` (what pydantic validators and argparse types expect) whose
    message starts ``invalid duration '<text>'`` for a string that is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '200ms' or '1m30s', got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, bare_seconds=bare_seconds)
    else:
        raise ValueError(
            f"expected a duration such as '200ms' or '1m30s', got {type(value).__name__}"
        )
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def _parse_text(value: str, *, bare_seconds: bool) -> float:
    text = value.strip()
    if text == "0" or (bare_seconds and _BARE.fullmatch(text)):
        return float(text)
    pos, seconds = 0, 0.0
    for m in _TERM.finditer(text):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r} ({_EXAMPLES})")
    return seconds


GoDuration = Annotated[float, BeforeValidator(parse_go_duration)]
"""A pydantic field type: a Go duration string or a number of seconds, stored as seconds."""
