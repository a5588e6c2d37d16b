"""The step-time formula (vllm-performance-model.md §2.3) term by term."""

from __future__ import annotations

import pytest

from kvroute_sim.config import EngineConfig, engine_profile
from kvroute_sim.steptime import StepTimeModel

_BARE = {"t_fix": 0.0, "c_seq": 0.0, "c_kv": 0.0, "c_att": 0.0, "eager_overhead": 0.0}


def _model(**kw: object) -> StepTimeModel:
    cfg = EngineConfig(linear_table=((1, 1.0), (101, 2.0), (201, 4.0)), **{**_BARE, **kw})
    return StepTimeModel(cfg)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 1.0), (1, 1.0), (51, 1.5), (101, 2.0), (151, 3.0), (301, 6.0)],
    ids=["below-table", "first-point", "interpolated", "knot", "second-segment", "extrapolated"],
)
def test_linear_term_interpolates_the_table(n: int, expected: float) -> None:
    assert _model().linear(n) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kw", "args", "expected"),
    [
        ({"t_fix": 0.5}, (1, 1, 0, 0.0, 0, 0.0), 1.5),
        ({"c_seq": 0.1}, (1, 4, 0, 0.0, 0, 0.0), 1.4),
        ({"c_kv": 0.001}, (1, 1, 300, 0.0, 0, 0.0), 1.3),
        ({"c_att": 0.01}, (1, 1, 0, 20.0, 0, 0.0), 1.2),
        ({"lora_step_overhead": 0.1}, (1, 1, 0, 0.0, 2, 0.0), 1.2),
        ({}, (1, 1, 0, 0.0, 0, 0.25), 1.25),
        ({"eager_overhead": 0.5, "cudagraph_max_tokens": 100}, (101, 1, 0, 0.0, 0, 0.0), 2.5),
        ({"time_scale": 10.0}, (1, 1, 0, 0.0, 0, 0.0), 10.0),
    ],
    ids=["t_fix", "c_seq", "c_kv", "c_att", "lora-factor", "lora-load", "eager", "time-scale"],
)
def test_each_term(kw: dict[str, float], args: tuple[int, int, int, float, int, float],
                   expected: float) -> None:  # fmt: skip
    assert _model(**kw).duration(*args) == pytest.approx(expected)


def test_default_profile_single_stream_itl_is_about_7ms() -> None:
    model = StepTimeModel(engine_profile("h100-llama3-8b"))
    itl = model.duration(1, 1, 250, 0.0, 0, 0.0)
    assert itl == pytest.approx(7.1e-3, rel=0.05)
