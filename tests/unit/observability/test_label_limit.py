"""Request-derived metric labels are bounded (model names, fairness IDs): upstream's
cardinality cap, with the ``--fairness-id-metric-label-limit`` flag."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from kvroute.errors import ConfigError
from kvroute.flowcontrol.item import QueueItem
from kvroute.observability.flowcontrol_metrics import FlowControlMetrics
from kvroute.observability.label_limit import OVERFLOW, LabelLimit
from kvroute.observability.metrics import EppMetrics
from kvroute.settings import EppSettings


def test_first_values_keep_their_label_later_ones_fold_and_admission_is_sticky() -> None:
    limit = LabelLimit("fairness ID", 2, pinned=("default-flow",))
    assert [limit(v) for v in ("a", "default-flow", "b", "c", "a", "d")] == [
        "a",
        "default-flow",  # pinned: takes no slot
        "b",
        OVERFLOW,
        "a",  # admitted once: always itself
        OVERFLOW,
    ]
    assert limit.distinct == 2
    assert limit.folded == 2
    assert limit(OVERFLOW) == OVERFLOW
    assert limit("") == ""


def test_limit_zero_folds_every_unpinned_value_and_negative_is_refused() -> None:
    limit = LabelLimit("fairness ID", 0, pinned=("default-flow",))
    assert [limit("x"), limit("default-flow")] == [OVERFLOW, "default-flow"]
    with pytest.raises(ValueError, match="must be >= 0"):
        LabelLimit("model name", -1)


def _route_and_complete(m: EppMetrics, model: str, fairness: str) -> None:
    m.record_routed(model, model, fairness, 0, 100, None, 0.001)
    m.record_complete(
        model,
        model,
        fairness,
        0,
        elapsed_s=0.1,
        status=200,
        response_bytes=10,
        usage=None,
        ttft_s=None,
        streaming=False,
    )


def test_a_flood_of_distinct_fairness_ids_and_models_stays_bounded_and_balanced() -> None:
    m = EppMetrics("p", fairness_label_limit=3)
    for i in range(50):
        _route_and_complete(m, f"model-{i % 2}", f"tenant-{i}")
    for i in range(1500):  # more distinct model names than the fixed 1000 limit
        _route_and_complete(m, f"junk-{i}", "default-flow")
    text = generate_latest(m.registry).decode()
    fairness = {
        line.split('fairness_id="')[1].split('"')[0]
        for line in text.splitlines()
        if 'fairness_id="' in line
    }
    assert fairness == {"tenant-0", "tenant-1", "tenant-2", "default-flow", OVERFLOW}
    models = {
        line.split('model_name="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("llm_d_epp_request_total{")
    }
    assert len(models) == 1001  # 1000 admitted + "other"
    attempt_targets = {
        line.split('target_model_name="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("llm_d_epp_scheduler_attempts_total{")
    }
    assert len(attempt_targets) == 1001  # the scheduler-attempt series are bounded too
    assert OVERFLOW in models
    running = m.registry.get_sample_value(
        "llm_d_epp_request_running",
        {"model_name": OVERFLOW, "target_model_name": OVERFLOW, "fairness_id": "default-flow",
         "priority": "0"},
    )  # fmt: skip
    assert running == 0  # every folded request's inc met its dec


def test_flow_control_metrics_fold_fairness_ids_past_the_limit() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    fc = FlowControlMetrics(registry, "p", fairness_labels=LabelLimit("fairness ID", 1))
    for fid in ("a", "b", "c"):
        item = QueueItem("r", 0, fid, 10, 0.0, model_name="m", target_model_name="m")
        fc.finished(item, 0.5)
    text = generate_latest(registry).decode()
    assert 'fairness_id="a"' in text
    assert 'fairness_id="b"' not in text
    assert f'fairness_id="{OVERFLOW}"' in text


def test_settings_refuse_a_negative_fairness_label_limit() -> None:
    assert EppSettings(secure_serving=False).fairness_id_metric_label_limit == 1000
    with pytest.raises(ConfigError, match="fairness-id-metric-label-limit"):
        EppSettings(secure_serving=False, fairness_id_metric_label_limit=-1)
