"""Per-family media token rules and their selection by model name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kvroute.protocol.media_tokens import (
    DEFAULT_RULES,
    ImageRule,
    ModelMediaTokens,
    rules_for_model,
)


def test_qwen_patch_rule_matches_smart_resize() -> None:
    # 640x480 -> 644x476 (multiples of 28) -> 23*17 patches + vision start/end.
    assert DEFAULT_RULES.image_tokens((640, 480)) == 23 * 17 + 2
    # Over max_pixels (12,845,056): scaled down to fit, about 16,384 patches.
    big = DEFAULT_RULES.image_tokens((8000, 8000))
    assert 15000 < big <= 16384 + 2
    # Tiny images are scaled up to min_pixels (56x56 = 4 patches).
    assert DEFAULT_RULES.image_tokens((10, 10)) == 4 + 2


@pytest.mark.parametrize(
    ("model", "size", "tokens"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", (640, 480), 393),
        ("Qwen/Qwen3-VL-8B-Instruct", (640, 480), 20 * 15 + 2),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", (1120, 560), 2 * 1601),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", (4000, 4000), 4 * 1601),
        ("google/gemma-3-27b-it", (4000, 3000), 256),
        ("llava-hf/llava-1.5-7b-hf", (100, 100), 576),
        ("gpt-4o", (1024, 1024), 85 + 170 * 4),
        ("some-unknown-model", (640, 480), 393),
    ],
)
def test_builtin_families(model: str, size: tuple[int, int], tokens: int) -> None:
    assert rules_for_model(model).image_tokens(size) == tokens


def test_configured_entry_wins_and_unknown_size_uses_the_assumed_one() -> None:
    entry = ModelMediaTokens.model_validate(
        {
            "modelPattern": "^my-vlm",
            "image": {"rule": "fixed", "tokens": 100},
            "audioTokensPerSecond": 10,
            "assumedImageSize": [512, 512],
        }
    )
    rules = rules_for_model("my-vlm-2", [entry])
    assert rules.image_tokens(None) == 100
    assert rules.audio_tokens(2.5) == 25
    assert rules_for_model("Qwen2.5-VL", [entry]) is not rules
    assert DEFAULT_RULES.image_tokens(None) == DEFAULT_RULES.image_tokens((1024, 1024))


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"modelPattern": "("}, "modelPattern"),
        ({"modelPattern": "x", "imgae": {}}, "imgae"),
        ({"modelPattern": "x", "image": {"rule": "bogus"}}, "rule"),
        ({"modelPattern": "x", "image": {"patchPixels": 0}}, "patchPixels"),
    ],
)
def test_bad_rules_are_rejected_naming_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        ModelMediaTokens.model_validate(raw)


def test_tiles_rule_custom_tokens() -> None:
    assert ImageRule(rule="tiles", tokens_per_tile=10, max_tiles=2).estimate(2000, 2000) == 20
