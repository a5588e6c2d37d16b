"""How :class:`kvroute.settings.EppSettings` declares its flags, and the flag-text parsers.

Each settings field carries ``metadata=flag(...)`` (a :class:`Flag`: name, help, parser, the
``kvroute serve`` default); the parsers turn flag text into values (Go durations, Go bools,
endpoint URLs) and raise ``argparse.ArgumentTypeError`` or :class:`kvroute.errors.ConfigError`
naming the flag. Split from ``settings.py`` to keep that file to the option table itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvroute.config.duration import parse_go_duration
from kvroute.errors import ConfigError
from kvroute.hostport import split_hostport

__all__ = [
    "FLAG_KEY",
    "UNSET",
    "Flag",
    "duration",
    "endpoint_ports",
    "flag",
    "from_env",
    "parse_bool",
    "parse_endpoint_url",
]

FLAG_KEY = "kvroute.flag"  # the field metadata key
UNSET: Any = object()  # "no separate default"


def duration(text: str) -> float:
    """A flag duration: Go syntax (``50ms``, ``1m30s``) or bare seconds (``1.5``)."""
    try:
        return parse_go_duration(text, bare_seconds=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool`` spellings, as upstream's bool flags take them."""
    low = text.strip().lower()
    if low in ("1", "true", "t", "yes", "y"):
        return True
    if low in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_endpoint_url(url: str) -> tuple[str, int]:
    """``http://10.0.0.1:8000``, ``10.0.0.1:8000`` or ``http://[::1]:8000`` -> (host, port)."""
    _, sep, rest = url.strip().partition("://")
    hostport = (rest if sep else url.strip()).split("/", 1)[0].rpartition("@")[2]
    try:
        return split_hostport(hostport)
    except ValueError:
        raise ConfigError(f"--endpoint {url!r}: expected http://HOST:PORT") from None


def endpoint_ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"--endpoint-target-ports: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """How one :class:`EppSettings` field appears on the command line."""

    name: str
    help: str | None = None
    parse: Callable[[str], Any] | None = None  # argparse ``type``
    convert: Callable[[Any], Any] | None = None  # parsed flag value -> field value
    flag_default: Any = UNSET  # the flag's default when it differs from the field's
    gateway_default: Any = UNSET  # ``kvroute serve``'s default
    metavar: str | None = None
    choices: Sequence[str] | None = None
    repeat: bool = False  # ``action="append"``
    optional_value: bool = False  # ``--flag`` alone means True (``nargs="?"``)
    exclusive: str | None = None  # name of a mutually exclusive group
    gateway_aliases: tuple[str, ...] = ()


def flag(name: str, **options: Any) -> dict[str, Flag]:
    """``metadata=`` for an :class:`EppSettings` field that is also the flag ``name``."""
    return {FLAG_KEY: Flag(name=name, **options)}


def from_env(variable: str, fallback: str) -> Callable[[], str]:
    """A ``default_factory``: the environment variable ``variable``, else ``fallback``."""
    return lambda: os.environ.get(variable, fallback)
