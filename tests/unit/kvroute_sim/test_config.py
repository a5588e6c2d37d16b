"""Profiles and YAML configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kvroute_sim.config import PROFILE_NAMES, engine_profile, load_server_config


def test_named_profiles_exist_and_slow_scales_time() -> None:
    assert {"h100-llama3-8b", "tiny", "slow"} <= set(PROFILE_NAMES)
    assert engine_profile("slow").time_scale == 10.0
    assert engine_profile("tiny").num_gpu_blocks < engine_profile("h100-llama3-8b").num_gpu_blocks


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        engine_profile("nope")


def test_yaml_file_overrides_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "profile: tiny\nmodel: my-model\nloras: [a, b]\nmetrics_flavour: sglang\n"
        "engine:\n  max_num_seqs: 3\nfaults:\n  error_rate: 0.5\n"
    )
    cfg = load_server_config(path)
    assert cfg.model == "my-model"
    assert cfg.loras == ("a", "b")
    assert cfg.metrics_flavour == "sglang"
    assert cfg.engine.max_num_seqs == 3
    assert cfg.engine.num_gpu_blocks == engine_profile("tiny").num_gpu_blocks
    assert cfg.faults.error_rate == 0.5


@pytest.mark.parametrize(
    "overrides",
    [
        {"chunked_prefill": False, "max_num_batched_tokens": 100, "max_model_len": 512},
        {"num_gpu_blocks": 2, "max_model_len": 512},
        {"linear_table": ((10, 1.0), (5, 2.0))},
        {"no_such_knob": 1},
    ],
    ids=["budget-below-model-len", "kv-below-model-len", "unsorted-table", "unknown-field"],
)
def test_inconsistent_engine_configs_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        engine_profile("tiny", **overrides)
