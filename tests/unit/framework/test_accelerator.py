"""Accelerator class and cost from pod labels; bad values fall back to defaults, logged once."""

from __future__ import annotations

import logging

import pytest

from kvroute.framework.accelerator import (
    ACCELERATOR_CLASSES,
    ACCELERATOR_LABEL,
    COST_LABEL,
    DEFAULT_CLASS,
    LLMD_ACCELERATOR_LABEL,
    endpoint_hardware,
)


def test_no_labels_is_the_default_class_at_its_default_cost() -> None:
    hw = endpoint_hardware({})
    assert hw.name == DEFAULT_CLASS
    assert hw.cost_per_hour == ACCELERATOR_CLASSES[DEFAULT_CLASS].cost_per_hour


def test_class_and_cost_from_labels() -> None:
    hw = endpoint_hardware({ACCELERATOR_LABEL: "L4", COST_LABEL: "0.55"})
    assert hw.name == "l4"
    assert hw.cost_per_hour == 0.55
    assert hw.accelerator.relative_speed < 0.1  # 0.3 TB/s against the H100's 3.35


def test_llmd_label_is_read_when_ours_is_absent() -> None:
    assert endpoint_hardware({LLMD_ACCELERATOR_LABEL: "a100"}).name == "a100"
    both = {LLMD_ACCELERATOR_LABEL: "a100", ACCELERATOR_LABEL: "h200"}
    assert endpoint_hardware(both).name == "h200"


def test_speeds_follow_the_simulator_bandwidths() -> None:
    speeds = {n: c.relative_speed for n, c in ACCELERATOR_CLASSES.items()}
    assert speeds["h100"] == 1.0
    assert speeds["l4"] < speeds["a100"] < speeds["h100"] < speeds["h200"] < speeds["mi300x"]


@pytest.mark.parametrize("cost", ["abc", "-1", "nan", "inf", ""])
def test_malformed_cost_reads_as_the_class_default(cost: str) -> None:
    hw = endpoint_hardware({ACCELERATOR_LABEL: "a100", COST_LABEL: cost})
    assert hw.name == "a100"
    assert hw.cost_per_hour == ACCELERATOR_CLASSES["a100"].cost_per_hour


def test_unknown_class_is_the_default_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvroute.framework.accelerator")
    for _ in range(3):
        assert endpoint_hardware({ACCELERATOR_LABEL: "tpu-v9-unknown"}).name == DEFAULT_CLASS
    hits = [r for r in caplog.records if "tpu-v9-unknown" in r.getMessage()]
    assert len(hits) == 1


def test_malformed_cost_is_logged_once_per_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvroute.framework.accelerator")
    for _ in range(3):
        hw = endpoint_hardware({ACCELERATOR_LABEL: "l4", COST_LABEL: "twelve-dollars"})
        assert hw.cost_per_hour == ACCELERATOR_CLASSES["l4"].cost_per_hour
    hits = [r for r in caplog.records if "twelve-dollars" in r.getMessage()]
    assert len(hits) == 1
    assert hits[0].levelname == "WARNING"
