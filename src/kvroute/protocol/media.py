"""Multimodal content parts: validate, hash and size each media item once (sans-IO).

OpenAI chat content parts handled (``where`` names the part in errors, e.g.
``messages[0].content[1]``):

* ``image_url`` ``{"url": ...}``: an ``http(s)`` (or any non-``data:``) URL is keyed by the URL
  string and **never fetched**; a ``data:<mime>;base64,<data>`` URL is decoded;
* ``input_audio`` ``{"data": <base64>, "format": "wav"|"mp3"|...}``;
* ``video_url`` / ``audio_url`` (vLLM) ``{"url": ...}``: as ``image_url``;
* ``file`` ``{"file_data": <data URL or base64>, "file_id", "filename"}``: the data decoded, else
  keyed by the file id;
* Responses API ``input_image`` (``image_url`` string or ``file_id``), ``input_file``
  (``file_data`` / ``file_url`` / ``file_id``), ``input_audio``.

Each base64 payload is decoded exactly once, in 1 MiB steps straight from the JSON string (no
copy of the whole payload): every step is validated (strict alphabet and padding), fed to an
XXH3-64 hash and dropped; only the first :data:`~kvroute.protocol.media_headers.HEAD_BYTES`
are kept to read the image size or WAV duration. So an item costs at most ~1 MiB of transient
memory whatever its size. The hash of the *decoded* bytes is the item's key, so the same
picture matches whichever part carries it (``image_url`` or ``file``, any mime label).

Errors: invalid base64 (or a ``data:`` URL that is not base64) is a 400 naming the part; an
unsupported part type in a chat message is a 400 listing the supported ones; an item over
``maxMediaItemBytes`` (decoded size, checked from the base64 length before decoding) is a 413
naming the limit and the parameter.

Each item becomes a :class:`~kvroute.framework.request.MediaItem` and a *placeholder* in the
prompt text where it sits: ``<|image:KEY|>`` padded with the key to ``4 * tokens`` characters, so
(1) the prefix-cache chain includes the item's hash at its position, as vLLM's block hashes
include the multimodal hash, (2) every estimate that counts ``len(prompt_text) / 4`` (token
load, flow control, latency, context length) counts the item's tokens, not its base64 size.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import xxhash
from pydantic import BaseModel, ConfigDict, Field

from kvroute.errors import BadRequestError, PayloadTooLargeError
from kvroute.framework.request import MediaItem
from kvroute.protocol.media_headers import HEAD_BYTES, image_size, wav_duration_s
from kvroute.protocol.media_spans import MediaSpans
from kvroute.protocol.media_tokens import MediaTokenRules, ModelMediaTokens, rules_for_model

__all__ = [
    "CHAT_PART_TYPES",
    "DEFAULT_MAX_ITEM_BYTES",
    "MEDIA_PART_TYPES",
    "TEXT_PART_TYPES",
    "MediaCollector",
    "MediaOptions",
    "placeholder",
]

DEFAULT_MAX_ITEM_BYTES = 32 * 1024 * 1024
_STEP = 1024 * 1024  # base64 characters decoded per step (a multiple of 4)
_AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s: the estimate for compressed audio
_MAX_URL_SCAN = 1024  # a data URL's header (mime and parameters) ends within this many chars

TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
CHAT_PART_TYPES = (
    "text",
    "image_url",
    "input_audio",
    "audio_url",
    "video_url",
    "file",
    "refusal",
)


class MediaOptions(BaseModel):
    """``openai-parser`` parameters for multimodal parts (every key optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    max_media_item_bytes: int = Field(
        default=DEFAULT_MAX_ITEM_BYTES, gt=0, alias="maxMediaItemBytes"
    )
    media_tokens: tuple[ModelMediaTokens, ...] = Field(default=(), alias="mediaTokens")


DEFAULT_OPTIONS = MediaOptions()


def placeholder(kind: str, key: str, tokens: int) -> str:
    """The item's stand-in in the prompt text: its tag padded with its key to ``4 * tokens``."""
    tag = f"<|{kind}:{key}|>"
    want = tokens * 4
    if want <= len(tag):
        return tag
    reps = (want - len(tag)) // len(key) + 1
    return (tag + key * reps)[:want]


class MediaCollector:
    """Collects the media items of one request body, in prompt order."""

    __slots__ = ("consumed", "items", "limit", "rules", "spans")

    def __init__(
        self,
        model: str,
        options: MediaOptions = DEFAULT_OPTIONS,
        spans: MediaSpans | None = None,
    ) -> None:
        self.rules: MediaTokenRules = rules_for_model(model, options.media_tokens)
        self.limit = options.max_media_item_bytes
        self.items: list[MediaItem] = []
        self.spans = spans  # payloads kept out of the JSON (kvroute.protocol.media_spans)
        self.consumed = 0  # how many of those a part decoded

    @property
    def tokens(self) -> int:
        return sum(item.tokens for item in self.items)

    def part_text(self, part: Mapping[str, Any], where: str) -> str:
        """The placeholder of one media part (its ``type`` is in :data:`MEDIA_PART_TYPES`)."""
        kind = part.get("type")
        if kind in ("image_url", "audio_url", "video_url"):
            media = {"image_url": "image", "audio_url": "audio", "video_url": "video"}[kind]
            return self._url_part(media, part.get(kind), f"{where}.{kind}")
        if kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:
                return self._url_part("image", {"url": url}, f"{where}.image_url")
            return self._id_part("image", part.get("file_id"), f"{where}.file_id")
        if kind == "input_audio":
            return self._input_audio(part.get("input_audio"), f"{where}.input_audio")
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, Mapping):
                raise BadRequestError(f"invalid request: {where}.file must be an object")
            return self._file(file, f"{where}.file")
        if kind == "input_file":
            return self._file(part, where)
        raise AssertionError(kind)  # the caller routes only the types above here

    def anthropic_block(self, block: Mapping[str, Any], where: str) -> str:
        """The placeholder of an Anthropic ``image`` / ``document`` block (its ``source``:
        ``base64`` with ``data``, ``url``, ``file`` with ``file_id``; ``text`` documents are
        their text)."""
        media = "image" if block.get("type") == "image" else "file"
        source = block.get("source")
        where = f"{where}.source"
        if not isinstance(source, Mapping):
            raise BadRequestError(f"invalid request: {where} must be an object")
        kind = source.get("type")
        if kind == "base64":
            data = source.get("data")
            if not isinstance(data, str) or not data:
                raise BadRequestError(f"invalid request: {where}.data must be a base64 string")
            return self._base64(media, data, f"{where}.data")
        if kind == "url":
            return self._url_part(media, source.get("url"), f"{where}.url")
        if kind == "file":
            return self._id_part(media, source.get("file_id"), f"{where}.file_id")
        if kind == "text" and isinstance(source.get("data"), str):
            return str(source["data"])
        raise BadRequestError(
            f"invalid request: {where}: unsupported source type {kind!r} "
            "(supported: base64, url, file, text)"
        )

    # -- part shapes -------------------------------------------------------------------------

    def _url_part(self, media: str, value: Any, where: str) -> str:
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str) or not url:
            raise BadRequestError(f"invalid request: {where} needs a non-empty 'url' string")
        if url[:5].lower() == "data:":
            return self._data_url(media, url, f"{where}.url")
        key = xxhash.xxh3_64_hexdigest(url.encode("utf-8", "surrogatepass"))
        return self._add(media, key, 0, None, None, where)

    def _id_part(self, media: str, file_id: Any, where: str) -> str:
        if not isinstance(file_id, str) or not file_id:
            raise BadRequestError(f"invalid request: {where} needs an image URL or a file id")
        key = xxhash.xxh3_64_hexdigest(b"file-id\0" + file_id.encode("utf-8", "surrogatepass"))
        return self._add(media, key, 0, None, None, where)

    def _input_audio(self, value: Any, where: str) -> str:
        if not isinstance(value, Mapping):
            raise BadRequestError(f"invalid request: {where} must be an object")
        data = value.get("data")
        if not isinstance(data, str) or not data:
            raise BadRequestError(f"invalid request: {where}.data must be a base64 string")
        return self._base64("audio", data, f"{where}.data")

    def _file(self, file: Mapping[str, Any], where: str) -> str:
        data = file.get("file_data")
        if isinstance(data, str) and data:
            if data[:5].lower() == "data:":
                return self._data_url("file", data, f"{where}.file_data")
            return self._base64("file", data, f"{where}.file_data")
        url = file.get("file_url")
        if isinstance(url, str) and url:
            return self._url_part("file", url, f"{where}.file_url")
        return self._id_part("file", file.get("file_id"), f"{where}.file_id")

    def _data_url(self, media: str, url: str, where: str) -> str:
        comma = url.find(",", 0, _MAX_URL_SCAN)
        if comma < 0:
            raise BadRequestError(f"invalid request: {where}: malformed data URL (no ',')")
        header = url[5:comma]
        params = header.split(";")
        if params[-1].strip().lower() != "base64":
            raise BadRequestError(
                f"invalid request: {where}: only base64 data URLs are supported "
                f"(data:<mime>;base64,<data>)"
            )
        mime = params[0].strip().lower()
        if media == "file" and mime.startswith(("image/", "audio/", "video/")):
            media = mime.split("/", 1)[0]
        payload = self.spans.payload(url[comma + 1 :]) if self.spans is not None else None
        if payload is not None:
            self.consumed += 1
            return self._decoded(media, payload, 0, where)
        return self._decoded(media, url, comma + 1, where)

    def _base64(self, media: str, data: str, where: str) -> str:
        payload = self.spans.payload(data) if self.spans is not None else None
        if payload is not None:
            self.consumed += 1
            return self._decoded(media, payload, 0, where)
        return self._decoded(media, data, 0, where)

    # -- decoding ----------------------------------------------------------------------------

    def _decoded(self, media: str, text: str | memoryview, start: int, where: str) -> str:
        """Decode ``text[start:]`` (base64) once, in steps: hash, size, header."""
        n = len(text) - start
        if n <= 0:
            raise BadRequestError(f"invalid request: {where}: empty base64 data")
        approx = n // 4 * 3
        if approx > self.limit:
            raise PayloadTooLargeError(
                f"{where}: media item of about {approx} bytes exceeds the per-item limit of "
                f"{self.limit} bytes (openai-parser parameter maxMediaItemBytes)"
            )
        hasher = xxhash.xxh3_64()
        head = bytearray()
        size = 0
        for at in range(start, len(text), _STEP):
            try:
                chunk = binascii.a2b_base64(text[at : at + _STEP], strict_mode=True)
            except (binascii.Error, ValueError) as exc:
                raise BadRequestError(
                    f"invalid request: {where}: invalid base64 data ({exc}, "
                    f"near character {at - start})"
                ) from None
            hasher.update(chunk)
            size += len(chunk)
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
        dims: tuple[int, int] | None = None
        tokens: int
        if media == "image":
            dims = image_size(bytes(head))
            tokens = self.rules.image_tokens(dims)
        elif media == "audio":
            seconds = wav_duration_s(bytes(head), size)
            if seconds is None:  # compressed (mp3, ogg, ...): estimated from the size
                seconds = size / _AUDIO_BYTES_PER_SECOND
            tokens = self.rules.audio_tokens(seconds)
        else:
            tokens = self.rules.video_tokens if media == "video" else self.rules.file_tokens
        return self._add(media, hasher.hexdigest(), size, dims, tokens, where)

    def _add(
        self,
        media: str,
        key: str,
        size: int,
        dims: tuple[int, int] | None,
        tokens: int | None,
        where: str,
    ) -> str:
        if tokens is None:  # known by reference only
            if media == "image":
                tokens = self.rules.image_tokens(None)
            elif media == "audio":
                tokens = self.rules.audio_tokens(10.0)
            else:
                tokens = self.rules.video_tokens if media == "video" else self.rules.file_tokens
        self.items.append(
            MediaItem(
                kind=media,
                key=key,
                tokens=tokens,
                size_bytes=size,
                where=where,
                width=dims[0] if dims else None,
                height=dims[1] if dims else None,
            )
        )
        return placeholder(media, key, tokens)


MEDIA_PART_TYPES = frozenset(
    {"image_url", "audio_url", "video_url", "input_image", "input_audio", "file", "input_file"}
)
