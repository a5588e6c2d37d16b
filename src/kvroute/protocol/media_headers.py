"""Media facts from header bytes only (sans-IO): image dimensions and WAV duration.

The EPP reads what its token estimates need from the first bytes of an item, never decoding
pixels or samples. :func:`image_size` knows PNG, JPEG (baseline and progressive SOF markers),
GIF, WebP (VP8, VP8L, VP8X) and BMP; it returns the stored width and height as Pillow's
``Image.size`` does (the EXIF orientation is not applied, as Pillow does not). Anything else,
or a header cut short, is ``None``: the estimate then uses the model's assumed image size.
``tests/unit/protocol/test_media_headers.py`` checks the parser against Pillow.
"""

from __future__ import annotations

import struct

__all__ = ["HEAD_BYTES", "image_size", "wav_duration_s"]

# How much of an item the parsers look at. JPEG can put its frame header behind large EXIF/ICC
# segments; 256 KiB covers what cameras and phones write.
HEAD_BYTES = 256 * 1024

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def image_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from an image's header bytes, or None when unknown."""
    try:
        if head.startswith(_PNG) and head[12:16] == b"IHDR":
            w, h = struct.unpack_from(">II", head, 16)
            return _valid(w, h)
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack_from("<HH", head, 6)
            return _valid(w, h)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"BM":
            w, h = struct.unpack_from("<ii", head, 18)
            return _valid(w, abs(h))
    except struct.error:  # cut short
        return None
    return None


def _valid(w: int, h: int) -> tuple[int, int] | None:
    return (w, h) if w > 0 and h > 0 else None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(head)
    while i + 4 <= n:
        if head[i] != 0xFF:
            return None  # lost sync: not a well-formed marker sequence
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xD9:  # end of image before any frame
            return None
        (length,) = struct.unpack_from(">H", head, i + 2)
        if marker in _SOF:
            h, w = struct.unpack_from(">HH", head, i + 5)
            return _valid(w, h)
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", head, 26)
        return _valid(w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        b0, b1, b2, b3 = head[21:25]
        w = 1 + (b0 | ((b1 & 0x3F) << 8))
        h = 1 + ((b1 >> 6) | (b2 << 2) | ((b3 & 0x0F) << 10))
        return _valid(w, h)
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(head[24:27], "little")
        h = 1 + int.from_bytes(head[27:30], "little")
        return _valid(w, h)
    return None


def wav_duration_s(head: bytes, total_bytes: int) -> float | None:
    """Seconds of a RIFF/WAVE clip: its ``data`` size over the ``fmt`` byte rate.

    ``total_bytes`` (the decoded size) bounds a ``data`` chunk whose size field is a streaming
    placeholder (0 or 0xFFFFFFFF). None when the header is not WAVE or is cut short.
    """
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    i = 12
    byte_rate = 0
    try:
        while i + 8 <= len(head):
            cid = head[i : i + 4]
            (size,) = struct.unpack_from("<I", head, i + 4)
            if cid == b"fmt ":
                (byte_rate,) = struct.unpack_from("<I", head, i + 16)
            elif cid == b"data":
                if byte_rate <= 0:
                    return None
                available = max(0, total_bytes - (i + 8))
                if size in (0, 0xFFFFFFFF) or size > available:
                    size = available
                return float(size) / float(byte_rate)
            i += 8 + size + (size & 1)
    except struct.error:
        return None
    return None
