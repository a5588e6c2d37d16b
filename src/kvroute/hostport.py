"""``host:port`` text with IPv6 brackets, the one parser and formatter of kvroute.

An IPv6 address is written in brackets when a port follows (``[fd00::1]:8000``, RFC 3986), the
form Envoy expects in ``x-gateway-destination-endpoint`` and ZMQ/HTTP URLs need. Parsing
accepts every form the EPP meets in headers and flags: ``10.0.0.1:8000``, ``[fd00::1]:8000``,
``host``, ``[fd00::1]`` and a bare ``fd00::1`` (several colons and no brackets: all address).

No kvroute imports: the settings, the datastore, the scrapers, scheduling plugins, the director
and the servers all use it, so it sits below every layer (as :mod:`kvroute.errors` does).
"""

from __future__ import annotations

__all__ = ["format_hostport", "host_of", "split_hostport"]


def format_hostport(host: str, port: int) -> str:
    """``("fd00::1", 8000)`` -> ``[fd00::1]:8000``; ``("10.0.0.1", 8000)`` -> ``10.0.0.1:8000``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _split(text: str) -> tuple[str, str | None]:
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return text[1:], None  # "[fd00::1": lenient, the address is all there is
        rest = text[close + 1 :]
        return text[1:close], rest[1:] if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":", 1)
        return host, port
    return text, None  # a name, IPv4, or an unbracketed IPv6 address


def host_of(text: str) -> str:
    """The host part of ``text``, brackets removed; any port is ignored, never validated."""
    return _split(text)[0]


def split_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"[fd00::1]:8000"`` -> ``("fd00::1", 8000)``; without a port, ``default_port``.

    Raises :class:`ValueError` for an empty host, a port that is not 1..65535, or a missing
    port with no default.
    """
    host, raw = _split(text)
    if not host:
        raise ValueError(f"{text!r}: no host")
    if raw is None:
        if default_port is None:
            raise ValueError(f"{text!r}: no port (expected HOST:PORT or [IPv6]:PORT)")
        return host, default_port
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{text!r}: port must be 1..65535, got {raw!r}")
    return host, int(raw)
