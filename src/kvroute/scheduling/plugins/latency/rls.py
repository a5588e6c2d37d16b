"""Recursive least squares with exponential forgetting: an online linear regression.

For features ``x`` and target ``y`` it keeps ``theta`` minimising
``sum_i lam^(n-i) (y_i - theta . x_i)^2`` (plus a ridge prior of weight ``1/delta``), updated in
O(d^2) per observation with no stored history::

    Px    = P x
    k     = Px / (lam + x . Px)
    theta = theta + k (y - theta . x)
    P     = (P - k Px^T) / lam

``lam`` < 1 forgets: with 0.995 the effective memory is ~200 observations, so a model tracks a
server whose speed or load pattern changes. ``d`` is 4-5 here, so an update is ~50
multiply-adds in pure Python (a few microseconds) and a prediction is ``d`` of them.
"""

from __future__ import annotations

from collections.abc import Sequence


class Rls:
    __slots__ = ("dim", "lam", "n", "p", "theta")

    def __init__(
        self,
        dim: int,
        *,
        lam: float = 0.995,
        delta: float = 1e3,
        theta: Sequence[float] | None = None,
    ) -> None:
        self.dim = dim
        self.lam = lam
        self.theta = list(theta) if theta is not None else [0.0] * dim
        self.p = [[delta if i == j else 0.0 for j in range(dim)] for i in range(dim)]
        self.n = 0

    def predict(self, x: Sequence[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def update(self, x: Sequence[float], y: float) -> None:
        p = self.p
        px = [sum(pi[j] * x[j] for j in range(self.dim)) for pi in p]
        denom = self.lam + sum(x[i] * px[i] for i in range(self.dim))
        if not denom > 1e-12:
            return
        k = [v / denom for v in px]
        err = y - self.predict(x)
        theta = self.theta
        for i in range(self.dim):
            theta[i] += k[i] * err
        inv = 1.0 / self.lam
        for i in range(self.dim):
            row = p[i]
            ki = k[i]
            for j in range(self.dim):
                row[j] = (row[j] - ki * px[j]) * inv
        self.n += 1
