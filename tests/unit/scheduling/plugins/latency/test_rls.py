"""Recursive least squares recovers a linear law and tracks a change of it."""

from __future__ import annotations

import random

import pytest

from kvroute.scheduling.plugins.latency.rls import Rls


def test_recovers_coefficients() -> None:
    rng = random.Random(3)
    model = Rls(3, lam=1.0)
    for _ in range(200):
        x = (1.0, rng.random() * 10, rng.random())
        model.update(x, 0.5 + 2.0 * x[1] - 1.0 * x[2])
    assert model.theta == pytest.approx([0.5, 2.0, -1.0], abs=1e-3)


def test_forgetting_tracks_a_new_law() -> None:
    rng = random.Random(4)
    model = Rls(2, lam=0.98)
    for _ in range(300):
        x = (1.0, rng.random())
        model.update(x, 1.0 + x[1])
    for _ in range(300):
        x = (1.0, rng.random())
        model.update(x, 3.0 + 4.0 * x[1])
    assert model.theta == pytest.approx([3.0, 4.0], abs=0.05)
