"""Prompt-token estimates for media items, per model family (sans-IO).

A vision-language model turns an image into a number of prompt tokens fixed by its processor;
the EPP counts them so load-aware scoring and flow control see a multimodal prompt's real size.
Rules (``image.rule``), with the families that document them:

* ``patch`` (Qwen2-VL / Qwen2.5-VL, ``patchPixels`` 28 = 14 px patches merged 2x2; Qwen3-VL 32):
  the image is resized so each side is a multiple of ``patchPixels`` and the area lies within
  ``[minPixels, maxPixels]`` (Qwen's ``smart_resize``; 3136 and 12,845,056 by default), then
  ``(h / patch) * (w / patch) + extraTokens`` (2: vision start and end). Pixtral (16 px
  patches, 1024 px max side) is the same rule with ``patchPixels`` 16.
* ``tiles`` (Llama 3.2 Vision): ``ceil(h / tilePixels) * ceil(w / tilePixels)`` tiles of 560 px,
  at most ``maxTiles`` (4), ``tokensPerTile`` (1601 = 40x40 patches + CLS) each: the encoder
  tokens whose cross-attention KV the server holds.
* ``openai-tiles`` (GPT-4o class): fit in 2048 px, scale the short side to 768 px, then
  ``baseTokens`` (85) + ``tokensPerTile`` (170) per 512 px tile.
* ``fixed``: ``tokens`` per image whatever its size (Gemma 3: 256 SigLIP soft tokens;
  LLaVA-1.5: 576 = 24x24 patches of a 336 px image).

Audio is ``audioTokensPerSecond`` (25: Whisper's 50 frames/s pooled 2x, as Qwen2-Audio and
Qwen2.5-Omni; Gemma 3n 6.25), the clip length read from a WAV header or, for other formats,
estimated from the size at 128 kbit/s. Videos and files whose content the EPP does not parse
count ``videoTokens`` / ``fileTokens``. An image whose size is unknown (a URL, an unknown
format) is estimated at ``assumedImageSize``.

The rule set for a model is the first ``mediaTokens`` entry (``openai-parser`` parameter) whose
``modelPattern`` (a regular expression, searched case-insensitively) matches the request's
model, else the first built-in family pattern that matches, else :data:`DEFAULT_RULES`
(Qwen2.5-VL's, the most common open VLM family served by vLLM).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "DEFAULT_RULES",
    "ImageRule",
    "MediaTokenRules",
    "ModelMediaTokens",
    "rules_for_model",
]

# Where an estimate stops: a placeholder's padding is bounded by this many tokens per item.
MAX_ITEM_TOKENS = 65536


class ImageRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    rule: Literal["patch", "tiles", "openai-tiles", "fixed"] = "patch"
    patch_pixels: int = Field(default=28, gt=0, alias="patchPixels")
    min_pixels: int = Field(default=3136, ge=0, alias="minPixels")
    max_pixels: int = Field(default=12_845_056, gt=0, alias="maxPixels")
    extra_tokens: int = Field(default=2, ge=0, alias="extraTokens")
    tile_pixels: int = Field(default=560, gt=0, alias="tilePixels")
    max_tiles: int = Field(default=4, gt=0, alias="maxTiles")
    # None: the rule's own (1601 for ``tiles``, 170 for ``openai-tiles``).
    tokens_per_tile: int | None = Field(default=None, ge=0, alias="tokensPerTile")
    base_tokens: int = Field(default=85, ge=0, alias="baseTokens")
    tokens: int = Field(default=256, ge=0)

    def estimate(self, width: int, height: int) -> int:
        if self.rule == "fixed":
            return self.tokens
        if self.rule == "tiles":
            tiles = math.ceil(width / self.tile_pixels) * math.ceil(height / self.tile_pixels)
            per_tile = 1601 if self.tokens_per_tile is None else self.tokens_per_tile
            return min(tiles, self.max_tiles) * per_tile
        if self.rule == "openai-tiles":
            scale = min(1.0, 2048 / max(width, height))
            w, h = width * scale, height * scale
            scale = min(1.0, 768 / min(w, h))
            w, h = w * scale, h * scale
            tiles = math.ceil(w / 512) * math.ceil(h / 512)
            per_tile = 170 if self.tokens_per_tile is None else self.tokens_per_tile
            return self.base_tokens + per_tile * tiles
        return self._patch(width, height)

    def _patch(self, width: int, height: int) -> int:
        p = self.patch_pixels
        h = max(p, round(height / p) * p)
        w = max(p, round(width / p) * p)
        if h * w > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h = max(p, math.floor(height / beta / p) * p)
            w = max(p, math.floor(width / beta / p) * p)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h = math.ceil(height * beta / p) * p
            w = math.ceil(width * beta / p) * p
        return (h // p) * (w // p) + self.extra_tokens


class MediaTokenRules(BaseModel):
    """One model family's rules; every key optional (defaults: Qwen2.5-VL's)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    image: ImageRule = ImageRule()
    audio_tokens_per_second: float = Field(default=25.0, ge=0.0, alias="audioTokensPerSecond")
    video_tokens: int = Field(default=4096, ge=0, alias="videoTokens")
    file_tokens: int = Field(default=1024, ge=0, alias="fileTokens")
    assumed_image_size: tuple[int, int] = Field(default=(1024, 1024), alias="assumedImageSize")

    def image_tokens(self, size: tuple[int, int] | None) -> int:
        w, h = size if size is not None else self.assumed_image_size
        return min(MAX_ITEM_TOKENS, self.image.estimate(max(1, w), max(1, h)))

    def audio_tokens(self, seconds: float) -> int:
        return min(MAX_ITEM_TOKENS, math.ceil(seconds * self.audio_tokens_per_second))


class ModelMediaTokens(MediaTokenRules):
    """A ``mediaTokens`` entry: rules for the models whose name matches ``modelPattern``."""

    model_pattern: str = Field(alias="modelPattern")

    @field_validator("model_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


DEFAULT_RULES = MediaTokenRules()


@dataclass(frozen=True, slots=True)
class _Family:
    pattern: re.Pattern[str]
    rules: MediaTokenRules


_BUILTIN: tuple[_Family, ...] = tuple(
    _Family(re.compile(p, re.IGNORECASE), r)
    for p, r in (
        (r"qwen3[-_.]?vl", MediaTokenRules(image=ImageRule(patch_pixels=32))),
        (r"qwen2(\.5)?[-_.]?(vl|omni)|qvq", DEFAULT_RULES),
        (
            r"llama[-_.]?3\.2.*vision|mllama",
            MediaTokenRules(image=ImageRule(rule="tiles")),
        ),
        (
            r"gemma[-_.]?3n",
            MediaTokenRules(
                image=ImageRule(rule="fixed", tokens=256), audio_tokens_per_second=6.25
            ),
        ),
        (r"gemma[-_.]?3", MediaTokenRules(image=ImageRule(rule="fixed", tokens=256))),
        (r"llava", MediaTokenRules(image=ImageRule(rule="fixed", tokens=576))),
        (
            r"pixtral|mistral[-_.]?small[-_.]?3",
            MediaTokenRules(image=ImageRule(patch_pixels=16, max_pixels=1024 * 1024)),
        ),
        (
            r"gpt-4o|gpt-4\.1|gpt-5",
            MediaTokenRules(image=ImageRule(rule="openai-tiles")),
        ),
    )
)


def rules_for_model(model: str, configured: Sequence[ModelMediaTokens] = ()) -> MediaTokenRules:
    """The rules for ``model``: configured entries first, then the built-in families."""
    for entry in configured:
        if re.search(entry.model_pattern, model, re.IGNORECASE):
            return entry
    for family in _BUILTIN:
        if family.pattern.search(model):
            return family.rules
    return DEFAULT_RULES
