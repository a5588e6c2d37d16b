"""CPU cost of multimodal request bodies (issue 14): parsing a 20 MB data-URL image.

Run::

    PYTHONPATH=src .venv/bin/pytest -q -m bench --benchmark-enable \\
        tests/bench/test_multimodal_bench.py --benchmark-columns=min,mean,rounds

Group ``mm-parse-20MB`` (a chat body with one 20 MiB image as a ``data:`` URL, 26.7 MB of
JSON): ``split`` is kvroute's path (base64 kept out of the dict, decoded once from the raw
body, hashed, header read); ``whole`` forces the ordinary ``json.loads`` of the whole body
first (what the parser falls back to), still decoding the image once; ``text`` is a text
prompt body of the same size, for scale. Divide by 26.7 for CPU per MB. Group
``image-size`` compares the header parser with ``PIL.Image.open(...).size`` on a 4000x3000
JPEG (why kvroute does not depend on Pillow at run time).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from kvroute.protocol import media_spans
from kvroute.protocol.media_headers import image_size
from kvroute.protocol.openai import parse_request

pytestmark = pytest.mark.bench

CHAT = "/v1/chat/completions"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 60, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _image_body() -> bytes:
    payload = _jpeg()
    payload += bytes(range(256)) * ((20 * 1024 * 1024 - len(payload)) // 256)
    url = "data:image/jpeg;base64," + base64.b64encode(payload).decode()
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()


BODY = _image_body()


@pytest.mark.benchmark(group="mm-parse-20MB")
def test_parse_20mb_image_split(benchmark) -> None:  # type: ignore[no-untyped-def]
    parsed = benchmark(parse_request, BODY, CHAT)
    assert parsed.split
    assert parsed.media[0].width == 4000


@pytest.mark.benchmark(group="mm-parse-20MB")
def test_parse_20mb_image_whole(benchmark, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(media_spans, "MIN_SPAN", 1 << 40)
    parsed = benchmark(parse_request, BODY, CHAT)
    assert not parsed.split
    assert parsed.media[0].width == 4000


@pytest.mark.benchmark(group="mm-parse-20MB")
def test_parse_20mb_text(benchmark) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"model": "m", "prompt": "x" * len(BODY)}).encode()
    parsed = benchmark(parse_request, body, "/v1/completions")
    assert parsed.media == ()


JPEG = _jpeg()


@pytest.mark.benchmark(group="image-size")
def test_image_size_header_parser(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(image_size, JPEG[:262144]) == (4000, 3000)


@pytest.mark.benchmark(group="image-size")
def test_image_size_pillow(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(lambda: Image.open(io.BytesIO(JPEG)).size) == (4000, 3000)
