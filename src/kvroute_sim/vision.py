"""The vision-language profile's encoder: time per image and a per-server encoder cache (LRU).

An approximation of a VLM server (Qwen2.5-VL-7B class on vLLM), with its sources:

* **Image tokens.** An image becomes ``tokens`` prompt tokens in place, as vLLM inserts the
  processor's placeholder tokens (Qwen2.5-VL: one per 28x28 px after the 2x2 patch merge, plus
  vision start/end; kvroute's estimate uses the same rule). The simulator's token ids for an
  image are derived from the image's hash (:func:`image_token_ids`), so the prefix cache's block
  hashes over them include the image, as vLLM's block hashes carry the multimodal hash as an
  extra key, and the KV events publish those blocks like any other.
* **Encoder time.** ``encoder_s_per_token`` seconds per image token (default 15 us), added to
  the step that first schedules the request (vLLM runs the encoder for the items of the tokens
  it schedules, in that step, before the language model's forward). Derivation: the ViT of
  Qwen2.5-VL is ~0.67 B parameters, so ~2 x 0.67 = 1.34 GFLOP per 14 px patch, 4 patches per
  merged token = 5.4 GFLOP per image token; at ~360 TFLOP/s achieved on an H100 (BF16, ~45 %
  of peak), 15 us per token (a 1024x1024 image, 1,370 tokens: ~20 ms). Not calibrated on
  hardware.
* **Encoder cache.** Each server keeps the encoder outputs of its last ``encoder_cache_items``
  items (LRU by item hash; default 2048, llm-d's 4 GiB at 2 MiB per entry). A request whose
  item is in the cache skips that item's encoder time; so does one whose prefix-cache hit
  already covers all of the item's tokens (nothing of the item is computed). Hits and queries
  are counted per server (``vllm:encoder_cache_{hits,queries}`` in the sim's metrics).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

IMAGE_TOKEN_BASE = 3 << 30  # image token ids live above text ids (which stay below 2**30)
IMAGE_TOKEN_SPAN = 1 << 29


@dataclass(frozen=True, slots=True)
class MediaSpan:
    """One media item of a prompt: its key, first token offset and token count."""

    key: str
    offset: int
    tokens: int


def image_token_ids(key: str, n: int) -> list[int]:
    """``n`` token ids standing for the image ``key``: distinct per image, stable everywhere."""
    base = IMAGE_TOKEN_BASE + xxhash.xxh32_intdigest(key.encode()) % IMAGE_TOKEN_SPAN
    return [base + (i % 4096) for i in range(n)]


class EncoderCache:
    """An LRU of item keys with hit/query counters."""

    __slots__ = ("_lru", "capacity", "hits", "queries")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.queries = 0
        self._lru: OrderedDict[str, None] = OrderedDict()

    def encode_time(self, items: Sequence[MediaSpan], computed: int, s_per_token: float) -> float:
        """Seconds of encoder work for the items not already covered by ``computed`` tokens."""
        total = 0.0
        lru = self._lru
        for item in items:
            if item.offset + item.tokens <= computed:
                continue  # all of its tokens came from the prefix cache
            self.queries += 1
            if item.key in lru:
                self.hits += 1
                lru.move_to_end(item.key)
                continue
            total += item.tokens * s_per_token
            lru[item.key] = None
            if len(lru) > self.capacity:
                lru.popitem(last=False)
        return total

    def __contains__(self, key: object) -> bool:
        return key in self._lru


# --- request side: chat content parts to token ids ---------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n"
DEFAULT_IMAGE_SIZE = (1024, 1024)  # when the size is unknown (a URL, a non-PNG payload)
_MEDIA_PARTS = {"image_url": "image", "video_url": "video", "input_audio": "audio"}


def image_tokens(width: int, height: int, patch: int = 28, max_tokens: int = 16384) -> int:
    """Qwen2.5-VL's count: 28 px merged patches (sides rounded), capped, + start/end."""
    n = max(1, round(width / patch)) * max(1, round(height / patch))
    return min(n, max_tokens) + 2


def _item(part: Mapping[str, Any]) -> tuple[str, int] | None:
    kind = part.get("type")
    value = part.get(kind) if isinstance(kind, str) else None
    if kind not in _MEDIA_PARTS or not isinstance(value, Mapping):
        return None
    url = value.get("url", value.get("data"))
    if not isinstance(url, str) or not url:
        return None
    size = DEFAULT_IMAGE_SIZE
    key = xxhash.xxh3_64_hexdigest(url.encode())
    if url.startswith("data:") and "," in url:
        try:
            raw = base64.b64decode(url.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            return None
        key = xxhash.xxh3_64_hexdigest(raw)
        if raw.startswith(_PNG) and raw[12:16] == b"IHDR":
            size = struct.unpack_from(">II", raw, 16)
    return key, image_tokens(*size)


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, Mapping) and p.get("type") in _MEDIA_PARTS for p in m["content"])
        for m in messages
    )


def render_chat_media(
    messages: Sequence[Mapping[str, Any]], encode: Callable[[str], list[int]]
) -> tuple[list[int], tuple[MediaSpan, ...]]:
    """Token ids of a chat with media parts in place, and the media items (the sim's template:
    ``<|role|>`` line, text parts, each item's token ids where the part sits)."""
    ids: list[int] = []
    spans: list[MediaSpan] = []
    for msg in messages:
        ids += encode(f"<|{msg.get('role', 'user')}|>\n")
        content = msg.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            item = _item(part)
            if item is not None:
                spans.append(MediaSpan(item[0], len(ids), item[1]))
                ids += image_token_ids(item[0], item[1])
            elif part.get("text") is not None:
                ids += encode(str(part.get("text")))
    ids += encode("<|assistant|>\n")
    return ids, tuple(spans)
