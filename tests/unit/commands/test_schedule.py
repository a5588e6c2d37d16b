"""``kvroute schedule`` end to end through ``kvroute.cli.main``, reading the example files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvroute import cli
from kvroute.commands.schedule import InputError, parse_state
from kvroute.config.epp_config import default_config_text
from kvroute.plugins.registry import default_registry

DATA = Path(__file__).parents[2] / "testdata"
SCHED = DATA / "schedule"
CONFIGS = DATA / "configs"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = cli.main(["schedule", *args])
    captured = capsys.readouterr()
    out = json.loads(captured.out) if code == 0 else {}
    return code, out, captured.err


def _state(name: str = "pool-state.yaml") -> list[str]:
    return ["--endpoints", str(SCHED / name)]


def _req(name: str) -> list[str]:
    return ["--request", str(SCHED / name)]


def test_default_profile_explains_the_choice(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *_state(), *_req("completion-request.json"), "--seed", "1")
    assert code == 0
    assert out["status"] == 200
    assert out["target"] == "vllm-3"
    assert out["fallbacks"] == []
    assert out["endpoint_header"] == "10.0.0.13:8000"
    assert out["request"]["criticality"] == "Standard"
    profile = out["trace"]["profiles"]["default"]
    totals = profile["totals"]
    assert next(iter(totals)) == "vllm-3"
    assert totals["vllm-3"] == max(totals.values())
    queue = next(p for p in profile["plugins"] if p["plugin"] == "queue-scorer")
    assert queue["weight"] == 1.0
    assert queue["scores"]["vllm-2"] == {"raw": 0.0, "clamped": 0.0, "weighted": 0.0}
    assert queue["scores"]["vllm-0"]["weighted"] == 1.0
    assert profile["picked"] == ["vllm-3"]
    # a scorer with no preference (no session, a base model for lora-affinity) scores nobody
    weighted = sum(
        p["scores"].get("vllm-3", {"weighted": 0.0})["weighted"]
        for p in profile["plugins"]
        if p["kind"] == "scorer"
    )
    assert weighted == pytest.approx(totals["vllm-3"])
    assert any(n.startswith("flow control: band 0") for n in out["trace"]["notes"])
    assert out["flow_control"] == {
        "band": 0,
        "flow": "default-flow",
        "queue_wait_ms": 0.0,
        "would_wait": False,
    }


def test_decision_tree_profile_shows_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, *_state(), *_req("lora-critical-request.json"), "--profile", "decision-tree"
    )
    assert code == 0
    assert out["target"] == "vllm-0"
    assert out["request"]["criticality"] == "Critical"
    (tree, picker) = out["trace"]["profiles"]["decision-tree"]["plugins"]
    assert tree["survivors"] == ["vllm-0"]
    assert tree["removed"] == ["vllm-1", "vllm-2", "vllm-3"]
    assert tree["notes"][:3] == [
        "Critical request: critical branch",
        "queue < 128: 4 -> 4",
        "LoRA soft affinity: 4 -> 2",
    ]
    assert picker["picked"] == ["vllm-0"]


def test_sheddable_on_saturated_pool_waits_in_flow_control(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Flow control is on by default: a saturated pool holds the request instead of a 429."""
    code, out, _ = _run(capsys, *_state("saturated-state.json"), *_req("sheddable-request.json"))
    assert code == 0
    assert out["status"] == 200
    assert out["flow_control"]["band"] == -1
    assert out["flow_control"]["would_wait"] is True
    assert any("would wait in its queue" in n for n in out["trace"]["notes"])


def test_sheddable_on_saturated_pool_is_429_without_flow_control(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    legacy = tmp_path / "legacy.yaml"
    text = default_config_text(default_registry()) + "flowControl: {enabled: false}\n"
    legacy.write_text(text)
    code, out, _ = _run(
        capsys,
        *_state("saturated-state.json"),
        *_req("sheddable-request.json"),
        "--config",
        str(legacy),
    )
    assert code == 0
    assert out["status"] == 429
    assert out["target"] is None
    assert (
        out["error"]
        == "inference error: ResourceExhausted - system saturated, sheddable request dropped"
    )
    assert out["request"]["priority"] == -1
    assert out["trace"]["profiles"] == {}


def test_decision_tree_drop_is_429_with_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The legacy tree (treatStandardAsCritical: false) drops a Standard request the admission
    # step lets through (priority 0 is never shed there).
    legacy = (
        (CONFIGS / "decision-tree.yaml")
        .read_text()
        .replace("treatStandardAsCritical: true", "treatStandardAsCritical: false")
    )
    assert "treatStandardAsCritical: false" in legacy
    config = tmp_path / "legacy-tree.yaml"
    config.write_text(legacy)
    code, out, _ = _run(
        capsys,
        *_state("saturated-state.json"),
        "--request",
        '{"model": "m", "prompt": "p", "criticality": "Standard"}',
        "--config",
        str(config),
    )
    assert code == 0
    assert out["status"] == 429
    assert "dropping request due to limited backend resources" in out["error"]


def test_decision_tree_places_standard_on_saturated_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(
        capsys,
        *_state("saturated-state.json"),
        "--request",
        '{"model": "m", "prompt": "p", "criticality": "Standard"}',
        "--profile",
        "decision-tree",
    )
    assert code == 0
    assert out["status"] == 200
    assert out["target"] == "vllm-1"
    tree = out["trace"]["profiles"]["decision-tree"]["plugins"][0]
    assert tree["notes"][0] == "Standard request: critical branch"


def test_resources_resolve_model_and_criticality(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        *_state(),
        *_req("food-review-request.json"),
        "--resources",
        str(SCHED / "food-review-resources.yaml"),
    )
    assert code == 0
    assert out["status"] == 200
    assert out["request"]["incoming_model"] == "food-review"
    assert out["request"]["target_model"] == "food-review-1"
    assert out["request"]["criticality"] == "Critical"


def test_config_with_fallbacks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        *_state(),
        *_req("lora-critical-request.json"),
        "--config",
        str(CONFIGS / "lora-fallbacks.yaml"),
    )
    assert code == 0
    assert out["config"].endswith("lora-fallbacks.yaml")
    assert len(out["fallbacks"]) == 2
    assert out["endpoint_header"].count(",") == 2
    plugins = out["trace"]["profiles"]["lora"]["plugins"]
    assert plugins[0]["plugin"] == "saturation"
    assert plugins[0]["kind"] == "filter"


def test_inline_json_and_subset_hint(capsys: pytest.CaptureFixture[str]) -> None:
    state = json.dumps(
        [
            {"name": "a", "address": "10.1.0.1", "metrics": {"waiting_queue_size": 0}},
            {"name": "b", "address": "10.1.0.2", "metrics": {"waiting_queue_size": 9}},
        ]
    )
    code, out, _ = _run(
        capsys,
        "--endpoints",
        state,
        "--request",
        '{"model": "m", "prompt": "x", "subset": ["10.1.0.2:8000"]}',
    )
    assert code == 0
    assert out["target"] == "b"
    code, out, _ = _run(
        capsys, "--endpoints", state, "--request", '{"model": "m", "prompt": "x", "subset": []}'
    )
    assert out["status"] == 503
    assert out["target"] is None


def test_request_without_model_is_400(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *_state(), "--request", '{"prompt": "x"}')
    assert code == 0
    assert out["status"] == 400
    assert out["error"] == "inference error: BadRequest - model not found in request body"


def test_seed_makes_ties_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    state = json.dumps([{"name": f"e{i}"} for i in range(8)])
    req = '{"model": "m", "prompt": "x"}'
    picks = []
    for _ in range(2):
        _, out, _ = _run(capsys, "--endpoints", state, "--request", req, "--seed", "7")
        picks.append(out["target"])
    assert picks[0] == picks[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--endpoints", '[{"name": "a", "metrics": {"kv_cache_usage": "lots"}}]'],
            "endpoints[0].metrics.kv_cache_usage",
        ),
        (["--endpoints", '[{"name": "a"}, {"name": "a"}]'], "duplicate endpoint 'a'"),
        (["--endpoints", '[{"name": "a", "cpu": 3}]'], "endpoints[0].cpu: unknown field"),
        (["--endpoints", "/no/such/state.yaml"], "cannot read"),
        (
            ["--endpoints", '[{"name": "a"}]', "--config", str(SCHED / "pool-state.yaml")],
            "pool-state.yaml: expected a mapping",
        ),
        (
            ["--endpoints", '[{"name": "a"}]', "--profile", "fastest"],
            "unknown built-in profile 'fastest'",
        ),
    ],
    ids=[
        "bad metric type",
        "duplicate name",
        "unknown field",
        "missing file",
        "bad config",
        "bad profile",
    ],
)
def test_invalid_inputs_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*args]
    if "--request" not in argv:
        argv += ["--request", '{"model": "m", "prompt": "x"}']
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err


def test_bad_criticality_shortcut(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys, *_state(), "--request", '{"model": "m", "prompt": "x", "criticality": "VIP"}'
    )
    assert code == 2
    assert "criticality: must be one of Critical, Standard, Sheddable" in err


def test_stale_endpoint_is_filtered_by_saturation_filter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = json.dumps(
        [
            {"name": "fresh", "metrics": {"waiting_queue_size": 3}},
            {"name": "stale", "metrics": {"waiting_queue_size": 0, "age_ms": 5000}},
        ]
    )
    code, out, _ = _run(
        capsys,
        "--endpoints",
        state,
        "--request",
        '{"model": "m", "prompt": "x"}',
        "--config",
        str(CONFIGS / "lora-fallbacks.yaml"),
    )
    assert code == 0
    first = out["trace"]["profiles"]["lora"]["plugins"][0]
    assert first["removed"] == ["stale"]
    assert out["target"] == "fresh"


def test_state_file_is_read_with_the_strict_loader() -> None:
    """The STATE file is user-written YAML too: repeated keys fail with file and line."""
    text = "- name: a\n  address: 10.0.0.1\n  address: 10.0.0.2\n  port: 8000\n"
    with pytest.raises(InputError) as exc:
        parse_state(text, "state.yaml")
    assert str(exc.value).startswith(
        "state.yaml: line 3, column 3: YAML error: found duplicate key 'address'"
    )
