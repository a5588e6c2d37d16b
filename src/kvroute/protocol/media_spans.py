"""Large base64 payloads kept out of the parsed JSON (sans-IO): the EPP holds them once.

``json.loads`` of a 27 MB body makes two more copies of every byte (the decoded text, then the
string values in the dict), and the dict lives as long as the request. Before parsing,
:func:`split_media` finds the big base64 strings in the raw bytes, the payload of a
``"data:<mime>;base64,...`` string and the value of a ``"data"`` key (``input_audio``), and
replaces each with a short marker; the media parser then decodes the payload straight from the
raw bytes (a ``memoryview``, no copy). Only the raw body, which is forwarded anyway, holds the
media; the dict holds ``data:image/png;base64,`` followed by the marker.

A span is taken only where it is certain to be one JSON string: an unescaped ``"`` opening it,
no backslash up to the next ``"`` (so no escape sequence inside), at least :data:`MIN_SPAN`
bytes. The media parser validates every byte it consumes (strict base64); a span that no media
part consumes (a big ``"data"`` string elsewhere) makes the parser re-parse the whole body the
ordinary way, so splitting never changes what is accepted. A skeleton that is not valid JSON
is re-parsed whole too, for an error message with the body's own positions.

Consumers of ``ParsedRequest.body`` see the markers (``ParsedRequest.split`` is true); the
rewrite fallback re-parses the raw body instead of serializing the dict.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

__all__ = ["MIN_SPAN", "MediaSpans", "split_media"]

MIN_SPAN = 64 * 1024
_DATA_URL = re.compile(rb'"data:[^",\\]{0,200};base64,', re.IGNORECASE)
_DATA_KEY = re.compile(rb'"(?:data|file_data)"\s*:\s*"')


@dataclass(slots=True)
class MediaSpans:
    """Marker string -> the ``(start, end)`` byte span of its payload in the raw body."""

    raw: bytes
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def marker(self, index: int) -> str:
        return f"\x00kvroute-media:{self.nonce}:{index}"

    def payload(self, value: str) -> memoryview | None:
        """The raw bytes a marker stands for, or None when ``value`` is not a marker."""
        span = self.spans.get(value)
        if span is None:
            return None
        return memoryview(self.raw)[span[0] : span[1]]


def split_media(raw: bytes) -> tuple[bytes, MediaSpans | None]:
    """``(skeleton, spans)``: ``raw`` with big base64 strings replaced by markers; ``(raw,
    None)`` when there is nothing worth splitting (no copy)."""
    if len(raw) < MIN_SPAN:
        return raw, None
    found: list[tuple[int, int]] = []
    pos, n = 0, len(raw)
    while True:
        # bytes.find is C speed, and the second search stops where the first hit: the bytes
        # inside a span are never scanned for a needle; the regexes only confirm a candidate.
        hit = raw.find(b'"data', pos)
        other = raw.find(b'"file_data', pos, hit if hit >= 0 else n)
        at = other if other >= 0 else hit
        if at < 0:
            break
        pos = at + 1
        m = _DATA_URL.match(raw, at)
        if m is None:
            m = _DATA_KEY.match(raw, at)
            if m is not None:  # a key whose value may itself be a data URL
                m = _DATA_URL.match(raw, m.end() - 1) or m
        if m is None or _escaped(raw, at):
            continue
        start = m.end()
        end = raw.find(b'"', start)
        if end - start >= MIN_SPAN and raw.find(b"\\", start, end) < 0:
            found.append((start, end))
            pos = end + 1
    if not found:
        return raw, None
    spans = MediaSpans(raw)
    pieces: list[bytes] = []
    at = 0
    for i, (start, end) in enumerate(found):
        marker = spans.marker(i)
        spans.spans[marker] = (start, end)
        pieces.append(raw[at:start])
        pieces.append(b"\\u0000" + marker[1:].encode())
        at = end
    pieces.append(raw[at:])
    return b"".join(pieces), spans


def _escaped(raw: bytes, quote: int) -> bool:
    """True if the ``"`` at ``quote`` is escaped (an odd run of backslashes before it)."""
    k = quote - 1
    while k >= 0 and raw[k] == 0x5C:
        k -= 1
    return (quote - 1 - k) % 2 == 1
