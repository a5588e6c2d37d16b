"""Header-only image sizes and WAV durations, checked against Pillow and the wave module."""

from __future__ import annotations

import io
import struct
import wave

import pytest
from PIL import Image

from kvroute.protocol.media_headers import image_size, wav_duration_s

SIZES = [(1, 1), (640, 480), (333, 1025), (4000, 3000)]
FORMATS = [
    ("PNG", {}),
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("GIF", {}),
    ("BMP", {}),
    ("WEBP", {"lossless": True}),
    ("WEBP", {"quality": 50}),
]


def _encode(fmt: str, size: tuple[int, int], **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("fmt", "kw"), FORMATS, ids=[f"{f}{sorted(k)}" for f, k in FORMATS])
def test_image_size_agrees_with_pillow(
    fmt: str, kw: dict[str, object], size: tuple[int, int]
) -> None:
    data = _encode(fmt, size, **kw)
    assert image_size(data[:4096]) == Image.open(io.BytesIO(data)).size == size


def test_webp_extended_header_with_alpha() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (300, 77), (1, 2, 3, 4)).save(buf, "WEBP", quality=80)
    data = buf.getvalue()
    assert data[12:16] in (b"VP8X", b"VP8L", b"VP8 ")
    assert image_size(data) == (300, 77)


def test_jpeg_frame_behind_a_large_app_segment() -> None:
    data = _encode("JPEG", (123, 45))
    app = b"\xff\xe1" + struct.pack(">H", 60002) + b"\0" * 60000  # a 60 kB EXIF-like segment
    assert image_size(data[:2] + app + data[2:]) == (123, 45)


@pytest.mark.parametrize(
    "head", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a\x01", b"not an image", b"RIFF"]
)
def test_unknown_or_cut_short_is_none(head: bytes) -> None:
    assert image_size(head) is None


def test_wav_duration_from_header() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 16000 * 3)
    data = buf.getvalue()
    assert wav_duration_s(data[:1024], len(data)) == pytest.approx(3.0)
    assert wav_duration_s(b"ID3...", 100) is None
