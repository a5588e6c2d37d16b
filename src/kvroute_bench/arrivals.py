"""Open-loop arrival processes: Poisson and gamma-bursty inter-arrival times.

The gamma process is vLLM ``bench serve``'s ``--burstiness``: inter-arrival gaps are
Gamma(shape=k, scale=1/(k*rate)), so the mean rate is ``rate`` for every k, the coefficient of
variation of the gaps is 1/sqrt(k), and k = 1 is exactly Poisson.
"""

from __future__ import annotations

import random


def arrival_times(
    rng: random.Random,
    *,
    rate: float,
    duration: float,
    process: str = "poisson",
    shape: float = 1.0,
) -> list[float]:
    """Arrival instants in ``[0, duration)`` with mean ``rate`` per second."""
    if rate <= 0 or duration <= 0:
        return []
    if process == "poisson":
        k = 1.0
    elif process == "gamma":
        if shape <= 0:
            raise ValueError("gamma burstiness (shape) must be > 0")
        k = shape
    else:
        raise ValueError(f"unknown arrival process {process!r} (poisson, gamma)")
    scale = 1.0 / (k * rate)
    out: list[float] = []
    t = rng.gammavariate(k, scale)
    while t < duration:
        out.append(t)
        t += rng.gammavariate(k, scale)
    return out
